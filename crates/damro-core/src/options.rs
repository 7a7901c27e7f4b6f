//! How a model directory is loaded ([`ModelOptions`]): dtype, device,
//! tokenizer behaviour and preprocessing choices.

use damro_nn::LoadOptions;
use damro_vision::preprocess::ProcessorOptions;
use tch::{Device, Kind};

use crate::Result;

/// How a model directory is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelOptions {
    /// Dtype of the weights and activations (f32, f16 or bf16).
    pub kind: Kind,
    /// Device of the weights and activations.
    pub device: Device,
    /// How the LLM tokenizer reads `tokenizer.json`.
    pub tokenizer: damro_llm::TokenizerBehavior,
    /// Image preprocessing choices the model directory does not make
    /// (default: the authors' transformers 4.43 PIL processor).
    pub preprocessing: ProcessorOptions,
}

impl ModelOptions {
    /// f32 on the CPU, tokenizer as written (transformers 4.x, as the
    /// authors ran it).
    pub fn cpu_f32() -> Self {
        Self {
            kind: Kind::Float,
            device: Device::Cpu,
            tokenizer: damro_llm::TokenizerBehavior::AsWritten,
            preprocessing: ProcessorOptions::default(),
        }
    }

    /// f16 on the first GPU when there is one, else f32 on the CPU.
    pub fn auto() -> Self {
        let device = crate::cuda::cuda_if_available();
        Self {
            kind: if device.is_cuda() {
                Kind::Half
            } else {
                Kind::Float
            },
            device,
            ..Self::cpu_f32()
        }
    }

    /// The same options on `device` in `kind`.
    pub fn on(self, device: Device, kind: Kind) -> Self {
        Self {
            device,
            kind,
            ..self
        }
    }

    /// The weight-loading part, after checking that the device is usable
    /// ([`crate::cuda::check_device`]).
    ///
    /// # Errors
    /// A CUDA device without a GPU or CUDA backend.
    pub fn load_options(&self) -> Result<LoadOptions> {
        crate::cuda::check_device(self.device)?;
        Ok(LoadOptions {
            kind: self.kind,
            device: self.device,
        })
    }
}

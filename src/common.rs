//! What both adapters share: load options, the language model built from a
//! `text_config`, image → pixel values, and the forward over left-padded rows.

use std::path::Path;

use damro_llm::{Input, Llama, LlamaConfig, LlamaConfigJson, LlamaTokenizer, LogitsAt};
use damro_nn::{Checkpoint, KeyMap, LoadOptions, Weights};
use damro_outlier::{OutlierOrder, TokenIndexing, gather_tokens, select_outliers};
use damro_vision::preprocess::{ImageInput, ImageProcessor, ProcessorOptions};
use tch::{Device, Kind, Tensor};

use crate::{Error, ImageSource, Result};

/// How a model directory is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        let device = Device::cuda_if_available();
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

    pub(crate) fn load_options(&self) -> LoadOptions {
        LoadOptions {
            kind: self.kind,
            device: self.device,
        }
    }
}

/// The LLaMA of a multimodal checkpoint: `text_config` validated, with the
/// vocabulary size taken from the embedding matrix (some configs state it
/// wrongly), loaded from `language_model.*`.
pub(crate) fn load_language_model(
    root: &Weights,
    text_config: &serde_json::Value,
) -> Result<Llama> {
    let mut json = LlamaConfigJson::from_value(text_config.clone())?;
    if let Some(shape) = root.shape_of("language_model.model.embed_tokens.weight")
        && let [rows, _] = shape[..]
    {
        json.vocab_size = Some(rows);
    }
    let config: LlamaConfig = json.into_config()?;
    Ok(Llama::load(&root.pp("language_model"), &config)?)
}

/// Pixel values `[1, 3, H, W]` of a request's image, on `device` in `kind`.
pub(crate) fn pixel_values(
    processor: &ImageProcessor,
    image: &ImageSource,
    kind: Kind,
    device: Device,
) -> Result<Tensor> {
    let pixels = match image {
        ImageSource::File(path) => processor.preprocess(ImageInput::Path(path))?,
        ImageSource::Image(img) => processor.preprocess(ImageInput::Image(img))?,
        ImageSource::Pixels(t) => {
            let size = t.size();
            if size.len() != 4 || size[0] != 1 || size[1] != 3 {
                return Err(Error::invalid(
                    "pixel values",
                    format!("expected [1, 3, H, W], got {size:?}"),
                ));
            }
            t.shallow_clone()
        }
    };
    Ok(pixels.f_to_device_(device, kind, false, false)?)
}

/// One forward of `llm` over left-padded rows; logits of each row's last
/// position.
pub(crate) fn forward_rows(
    llm: &Llama,
    embeds: &Tensor,
    row_lengths: &[i64],
    cache: &mut damro_llm::KvCache,
) -> Result<Tensor> {
    let padded = row_lengths.iter().any(|&l| l != embeds.size()[1]);
    let input = if padded {
        Input::left_padded(embeds, row_lengths)
    } else {
        Input::new(embeds)
    };
    let logits = llm.forward(input, cache, LogitsAt::Last)?;
    Ok(logits.f_squeeze_dim(1)?)
}

/// Embeddings of new tokens, `[rows]` → `[rows, 1, hidden]`.
pub(crate) fn embed_new_tokens(llm: &Llama, ids: &Tensor) -> Result<Tensor> {
    Ok(llm.embed(&ids.f_unsqueeze(1)?)?)
}

/// Ids as `i64`.
pub(crate) fn to_i64(ids: &[u32]) -> Vec<i64> {
    ids.iter().map(|&i| i64::from(i)).collect()
}

/// Ids as `u32`, rejecting ids outside the vocabulary's range.
pub(crate) fn to_u32(ids: &[i64]) -> Result<Vec<u32>> {
    ids.iter()
        .map(|&i| {
            u32::try_from(i)
                .map_err(|_| Error::invalid("token id", format!("{i} is negative or too large")))
        })
        .collect()
}

/// The [CLS] scores a vision tower returned, or the error saying it was
/// configured without them.
pub(crate) fn require_cls(attention: Option<Tensor>) -> Result<Tensor> {
    attention.ok_or_else(|| Error::invalid("vision config", "no [CLS] attention layer"))
}

/// DAMRO's outlier tokens: the top-`k` patches by [CLS] `attention`
/// `[1, patches]`, gathered from `features` as `indexing` says. Returns the
/// gathered rows `[1, k, dim]` and the patch indices in selection order.
pub(crate) fn outlier_tokens(
    features: &Tensor,
    attention: Option<Tensor>,
    k: usize,
    order: OutlierOrder,
    indexing: TokenIndexing,
) -> Result<(Tensor, Vec<i64>)> {
    let outliers = select_outliers(&require_cls(attention)?, k, order)?;
    let gathered = gather_tokens(features, &outliers, indexing)?;
    let indices = outliers.to_vec()?.into_iter().next().unwrap_or_default();
    Ok((gathered, indices))
}

/// The root of a model directory's checkpoint, after checking it is one.
pub(crate) fn open_weights(
    dir: &Path,
    key_map: &KeyMap,
    options: &ModelOptions,
) -> Result<Weights> {
    check_model_dir(dir)?;
    Ok(Weights::new(
        Checkpoint::open(dir, key_map)?,
        options.load_options(),
    )?)
}

/// What both adapters load besides their vision side: the language model
/// (after which the checkpoint must be fully used), the LLM tokenizer and
/// the image processor.
pub(crate) fn load_language_side(
    dir: &Path,
    root: &Weights,
    text_config: &serde_json::Value,
    options: &ModelOptions,
) -> Result<(Llama, LlamaTokenizer, ImageProcessor)> {
    let llm = load_language_model(root, text_config)?;
    root.finish()?;
    Ok((
        llm,
        LlamaTokenizer::from_dir(dir, options.tokenizer)?,
        ImageProcessor::from_model_dir(dir)?.with_options(options.preprocessing),
    ))
}

/// The directory exists and has a `config.json`.
pub(crate) fn check_model_dir(dir: &Path) -> Result<()> {
    if dir.join("config.json").is_file() {
        Ok(())
    } else {
        Err(Error::invalid(
            "model directory",
            format!(
                "{} has no config.json (expected a HuggingFace model directory)",
                dir.display()
            ),
        ))
    }
}

/// The [`crate::DamroDecoder`] methods that only involve the language model
/// and its tokenizer, for adapters with `llm: Llama` and
/// `tokenizer: LlamaTokenizer` fields.
macro_rules! llama_decoder_methods {
    () => {
        fn embed_tokens(&self, ids: &tch::Tensor) -> $crate::Result<tch::Tensor> {
            $crate::common::embed_new_tokens(&self.llm, ids)
        }

        fn new_cache(&self, rows: i64, capacity: i64) -> $crate::Result<Self::Cache> {
            Ok(self.llm.new_cache(rows, capacity)?)
        }

        fn forward(
            &self,
            embeds: &tch::Tensor,
            row_lengths: &[i64],
            cache: &mut Self::Cache,
        ) -> $crate::Result<tch::Tensor> {
            $crate::common::forward_rows(&self.llm, embeds, row_lengths, cache)
        }

        fn stop_ids(&self) -> Vec<i64> {
            self.tokenizer
                .special_tokens()
                .eos
                .as_ref()
                .map(|t| vec![i64::from(t.id)])
                .unwrap_or_default()
        }
    };
}
pub(crate) use llama_decoder_methods;

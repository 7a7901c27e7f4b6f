//! The projectors from vision features into the language model's embedding
//! space: LLaVA's `multi_modal_projector` (HF `LlavaMultiModalProjector`:
//! `linear_1 → gelu → linear_2`) and InstructBLIP's `language_projection`
//! (one linear layer over the Q-Former's query outputs).

use damro_nn::{Activation, Linear, Module, Weights};
use tch::Tensor;

use crate::Result;

/// Geometry of LLaVA's projector.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaProjectorConfig {
    /// Vision width times the number of feature layers.
    pub in_dim: i64,
    /// The language model's `hidden_size`.
    pub out_dim: i64,
    /// `projector_hidden_act`.
    pub activation: Activation,
    /// `multimodal_projector_bias`.
    pub bias: bool,
}

/// `linear_2(act(linear_1(x)))`.
#[derive(Debug)]
pub struct LlavaProjector {
    /// `linear_1`: `[out_dim, in_dim]`, from the vision features to the
    /// language model's width.
    pub linear_1: Linear,
    /// Between the two layers (`projector_hidden_act`, GELU for LLaVA-1.5).
    pub activation: Activation,
    /// `linear_2`: `[out_dim, out_dim]`.
    pub linear_2: Linear,
}

impl LlavaProjector {
    /// Loads `linear_1` `[out, in]` and `linear_2` `[out, out]` from `w`
    /// (the position of `multi_modal_projector`).
    pub fn load(w: &Weights, cfg: &LlavaProjectorConfig) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(&w.pp("linear_1"), cfg.in_dim, cfg.out_dim, cfg.bias)?,
            activation: cfg.activation,
            linear_2: Linear::load(&w.pp("linear_2"), cfg.out_dim, cfg.out_dim, cfg.bias)?,
        })
    }
}

impl Module for LlavaProjector {
    /// # Shapes
    /// `[.., in_dim]` → `[.., out_dim]`
    fn forward(&self, xs: &Tensor) -> damro_nn::Result<Tensor> {
        let xs = xs.f_to_kind(self.linear_1.weight.kind())?;
        let h = self.activation.forward(&self.linear_1.forward(&xs)?)?;
        self.linear_2.forward(&h)
    }
}

/// InstructBLIP's `language_projection`: `[qformer_hidden] → [text_hidden]`.
#[derive(Debug)]
pub struct LanguageProjection {
    /// `language_projection`: weight `[text_hidden, qformer_hidden]`, bias
    /// `[text_hidden]`.
    pub linear: Linear,
}

impl LanguageProjection {
    /// Loads `weight` `[out, in]` and `bias` `[out]` from `w` (the position
    /// of `language_projection`).
    pub fn load(w: &Weights, in_dim: i64, out_dim: i64) -> Result<Self> {
        Ok(Self {
            linear: Linear::load(w, in_dim, out_dim, true)?,
        })
    }
}

impl Module for LanguageProjection {
    /// # Shapes
    /// `[.., in_dim]` → `[.., out_dim]`
    fn forward(&self, xs: &Tensor) -> damro_nn::Result<Tensor> {
        let xs = xs.f_to_kind(self.linear.weight.kind())?;
        self.linear.forward(&xs)
    }
}

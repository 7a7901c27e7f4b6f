//! # damro
//!
//! DAMRO ("Dive into the Attention Mechanism of LVLM to Reduce Object
//! hallucination", EMNLP 2024) decoding for large vision-language models on
//! libtorch. This facade ties the workspace crates together:
//!
//! - [`nn`]: checkpoint loading and shared layers,
//! - [`vision`]: ViT encoders with [CLS] attention, Q-Former, projectors,
//!   image preprocessing,
//! - [`llm`]: the LLaMA decoder with an external KV cache, tokenizers and
//!   prompt templates,
//! - [`outlier`]: outlier-token selection and the paper's analysis metrics,
//! - [`sampler`]: the contrastive sampler.
//!
//! On top of them: the [`DamroDecoder`] trait (what a model provides), one
//! generation loop over it ([`generate`]), and the adapters
//! [`LlavaDecoder`] (LLaVA-1.5) and [`InstructBlipDecoder`] (InstructBLIP).

pub mod auto;
mod common;
pub mod decoder;
mod error;
pub mod generate;
pub mod instructblip;
pub mod llava;

pub use auto::AutoDecoder;
pub use common::ModelOptions;
pub use decoder::{BranchCache, Branches, DamroDecoder, ImageSource, Request, VisualTokens};
pub use error::{Error, Result};
pub use generate::{
    BranchExecution, DamroSettings, FinishReason, Generation, GenerationConfig, Limit, Mode,
    TokenEvent, generate, generate_streaming,
};
pub use instructblip::{Indexing, InstructBlipDecoder};
pub use llava::LlavaDecoder;

pub use damro_llm as llm;
pub use damro_nn as nn;
pub use damro_outlier as outlier;
pub use damro_sampler as sampler;
pub use damro_vision as vision;

/// Version of this crate.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the libtorch the workspace was built against, as its install
/// reports it (`unknown` when it could not be read at build time).
pub const LIBTORCH_VERSION: &str = env!("DAMRO_LIBTORCH_VERSION");

#[cfg(test)]
mod tests {
    #[test]
    fn libtorch_version_is_the_one_tch_binds() {
        // tch 0.26 binds libtorch 2.13; a different install would fail to
        // link or crash, so the version recorded at build time must match.
        assert!(
            super::LIBTORCH_VERSION.starts_with("2.13."),
            "built against libtorch {}",
            super::LIBTORCH_VERSION
        );
    }
}

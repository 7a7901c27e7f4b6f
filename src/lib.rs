#![doc = include_str!("../README.md")]
//!
//! # The `damro` crate
//!
//! The page above is the repository's README; its Rust examples run as
//! this crate's doctests. This facade only re-exports the workspace
//! crates:
//!
//! - [`core`] (`damro-core`): the [`DamroDecoder`] and [`LanguageModel`]
//!   traits, the contrast views ([`Mode`]), the generation loop
//!   ([`generate()`]), the CUDA backend loader ([`cuda`]);
//! - [`models`] (`damro-models`): the [`LlavaDecoder`] (LLaVA-1.5) and
//!   [`InstructBlipDecoder`] adapters and [`AutoDecoder`], written against
//!   public APIs only;
//! - [`nn`] (`damro-nn`): checkpoint loading and shared layers;
//! - [`vision`] (`damro-vision`): ViT encoders with `[CLS]` attention,
//!   Q-Former, projectors, image preprocessing;
//! - [`llm`] (`damro-llm`): the LLaMA decoder with an external KV cache,
//!   tokenizers and prompt templates;
//! - [`outlier`] (`damro-outlier`): outlier-token selection and the
//!   paper's analysis metrics;
//! - [`sampler`] (`damro-sampler`): the contrastive sampler.
//!
//! `damro-eval` (POPE, CHAIR and MME runs and scoring) is model-free and
//! not re-exported; the examples use it. This crate also hosts the
//! workspace's examples, benches and integration tests.

pub use damro_core::{
    AnalysisInputs, AttentionCapture, Branch, BranchCache, BranchExecution, Branches,
    ContrastTokens, ContrastView, CustomContrast, DamroDecoder, DamroSettings, Error, FinishReason,
    Generation, GenerationConfig, ImageSource, LanguageModel, Limit, Mode, ModelOptions,
    PixelTransform, Request, Result, RowStateOf, Rows, SecondImage, Selection, TokenEvent,
    VcdNoise, VcdSettings, VisualTokens, analysis, cuda, generate, generate_streaming, memory,
    views,
};
pub use damro_models::{
    AutoDecoder, Benchmark, Indexing, InstructBlipDecoder, LlavaDecoder, LlavaNextDecoder,
    TileHeatmap, loading,
};

pub use damro_core as core;
pub use damro_llm as llm;
pub use damro_models as models;
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

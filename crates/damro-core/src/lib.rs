//! # damro-core
//!
//! The extension point of damro-rs: what an LVLM implements to get DAMRO
//! decoding, the contrast views, and the one generation loop that runs
//! them. The built-in LLaVA-1.5 and InstructBLIP adapters (`damro-models`)
//! are clients of this crate's public API like any outside model.
//!
//! - [`LanguageModel`]: embed, new cache, one forward over left-padded rows
//!   (implemented for [`damro_llm::Llama`]; [`BranchCache`] for
//!   [`damro_llm::KvCache`], whose write path any decoder can use).
//! - [`DamroDecoder`]: encode the image for both branches, build each
//!   branch's embeddings, stop ids, decoding.
//! - [`Mode`] and the views ([`views`]): plain, DAMRO outliers, VCD noise,
//!   no image, cutoff only, or a [`ContrastView`] of your own.
//! - [`generate`] / [`generate_streaming`]: prefill each branch, then both
//!   branches as one batched forward per step, the contrastive sampler,
//!   stop ids and strings, token limits.
//! - [`analysis`]: the paper's `H_i` and `F` per generated token, from
//!   the decoder attention a capture records.
//! - [`cuda`]: libtorch's CUDA backend for binaries that do not link it,
//!   and the one device check every loader uses.
//! - [`memory`]: an opt-in allocator setting for programs that generate
//!   again and again.
//!
//! Neighbours: `damro-llm` (the LLaMA decoder and its cache),
//! `damro-vision` (encoders, preprocessing), `damro-outlier` (top-k
//! selection), `damro-sampler` (the contrast step), `damro-nn`
//! (checkpoints, shared layers), `damro-models` (the built-in adapters),
//! `damro-eval` (POPE, CHAIR, MME runs and scoring), and the `damro`
//! facade that re-exports them all.
//!
//! ```no_run
//! use damro_core::{DamroDecoder, DamroSettings, GenerationConfig, Mode, Request, generate};
//! fn describe<D: DamroDecoder>(model: &D, request: Request) -> damro_core::Result<String> {
//!     let mode = Mode::Damro(DamroSettings::new(2.0, 0.1, 10)?);
//!     let out = generate(model, &[request], &GenerationConfig::greedy(mode, 64))?;
//!     Ok(out.into_iter().next().map(|g| g.text).unwrap_or_default())
//! }
//! ```

#![warn(missing_docs)]

pub mod analysis;
mod branches;
mod config;
pub mod cuda;
mod error;
mod generate;
mod llama;
pub mod memory;
pub mod model;
mod options;
mod request;
pub mod views;

pub use config::{BranchExecution, FinishReason, Generation, GenerationConfig, Limit, TokenEvent};
pub use damro_llm::{AttentionCapture, Selection};
pub use error::{Error, Result};
pub use generate::{generate, generate_streaming};
pub use model::{
    AnalysisInputs, Branch, BranchCache, Branches, ContrastTokens, DamroDecoder, LanguageModel,
    RowStateOf, Rows, VisualTokens,
};
pub use options::ModelOptions;
pub use request::{ImageSource, Request};
pub use views::{
    ContrastView, CustomContrast, DamroSettings, Mode, PixelTransform, SecondImage, VcdNoise,
    VcdSettings,
};

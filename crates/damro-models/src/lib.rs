//! # damro-models
//!
//! The LLaVA-1.5 ([`LlavaDecoder`]), LLaVA-NeXT ([`LlavaNextDecoder`]) and
//! InstructBLIP ([`InstructBlipDecoder`]) adapters behind damro-core's
//! [`damro_core::DamroDecoder`], and [`AutoDecoder`], which picks one from
//! a model directory's `config.json`.
//!
//! Everything here is written against the public APIs of the crates below
//! it (`damro-core`, `damro-llm`, `damro-vision`, `damro-outlier`,
//! `damro-nn`): the adapters are clients of the extension point like any
//! model outside this workspace, and the parts they are assembled from are
//! public in [`loading`]. Above it: the `damro` facade re-exports it with
//! the rest, and `damro-eval`'s runs (the examples' `eval` command) call
//! these decoders.
//!
//! ```no_run
//! use damro_core::{DamroSettings, GenerationConfig, ImageSource, Mode, ModelOptions, Request, generate};
//! use damro_llm::PromptTemplate;
//! use damro_models::LlavaDecoder;
//! # fn main() -> damro_core::Result<()> {
//! let model = LlavaDecoder::load("/models/llava-1.5-7b-hf", ModelOptions::auto())?;
//! let request = Request::new(ImageSource::File("photo.png".into()), "Is there a dog?", PromptTemplate::LlavaV1);
//! let mode = Mode::Damro(DamroSettings::new(2.0, 0.1, 10)?);
//! let out = generate(&model, &[request], &GenerationConfig::greedy(mode, 16))?;
//! println!("{}", out[0].text);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod auto;
pub mod config_sizes;
pub mod instructblip;
pub mod llava;
pub mod llava_next;
pub mod loading;

pub use auto::{AutoDecoder, Benchmark, TileHeatmap};
pub use instructblip::{Indexing, InstructBlipDecoder};
pub use llava::LlavaDecoder;
pub use llava_next::LlavaNextDecoder;

use damro_core::{Error, SecondImage};

/// The error of a model asked for a contrast view it cannot build.
pub fn unsupported_view(model: &str, second: SecondImage<'_>) -> Error {
    let view = match second {
        SecondImage::Custom(view) => view.name().to_string(),
        other => format!("{other:?}"),
    };
    Error::invalid(
        "contrast view",
        format!("{model} cannot build the second branch `{view}`"),
    )
}

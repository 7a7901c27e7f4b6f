//! Shared building blocks of damro-rs.
//!
//! - [`checkpoint`]: a HuggingFace model directory (`config.json`, single or
//!   sharded safetensors) memory-mapped, with every tensor name normalised
//!   through one [`KeyMap`].
//! - [`weights`]: typed, shape-checked weight lookups by path segments
//!   (`w.pp("layers").pp(3).get("q_proj.weight", &[d, d])`), with missing,
//!   mismatched and unexpected tensors reported together, once.
//! - [`limits`]: the sizes a config states, checked against fixed bounds
//!   and against the checkpoint's tensors before a model is built.
//! - [`module`]: the fallible [`Module`] trait and the layers every model uses
//!   (linear, layer norm, RMS norm, embedding, activations).
//! - [`attention`]: head splitting and libtorch's fused attention.
//! - [`testing`]: the parity tolerance every reference comparison uses.
//!
//! Everything works on `tch` tensors on any device; the dtype and device of
//! the loaded weights are chosen by [`LoadOptions`].
//!
//! Neighbours: `damro-vision` (the image encoders, Q-Former, projectors
//! and preprocessing) and `damro-llm` (the LLaMA decoder and its KV cache)
//! are made of these layers; `damro-outlier` (outlier-token selection) and
//! `damro-sampler` (the contrastive step) work on plain tensors beside
//! them; `damro-core` is the extension point and the generation loop,
//! `damro-models` the built-in LVLM adapters, `damro-eval` the benchmarks,
//! and the `damro` facade re-exports them all.
//!
//! ```no_run
//! use damro_nn::{Checkpoint, KeyMap, LoadOptions, Linear, Module, Weights};
//! # fn main() -> damro_nn::Result<()> {
//! // A LLaVA-1.5 directory, any of its key layouts (hub, transformers 5).
//! let checkpoint = Checkpoint::open("/models/llava-1.5-7b-hf", &KeyMap::llava())?;
//! let w = Weights::new(checkpoint, LoadOptions::cpu_f32())?;
//! let attn = w.pp("language_model").pp("model").pp("layers").pp(0).pp("self_attn");
//! // Shape-checked: `weight` must be [4096, 4096].
//! let q_proj = Linear::load(&attn.pp("q_proj"), 4096, 4096, false)?;
//! let q = q_proj.forward(&tch::Tensor::zeros([1, 4096], tch::kind::FLOAT_CPU))?; // [1, 4096]
//! // A model's `load` takes every tensor it needs, then reports all missing,
//! // mis-shaped and unused tensors at once with `w.finish()?`.
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod attention;
pub mod checkpoint;
mod cpu;
mod error;
pub mod key_map;
pub mod limits;
pub mod linear_kernel;
pub mod module;
pub mod testing;
pub mod weights;

pub use checkpoint::{Checkpoint, ShardIndex, TensorInfo, read_json};
pub use error::{Error, Result};
pub use key_map::KeyMap;
pub use module::{Activation, Embedding, LayerNorm, Linear, Module, RmsNorm};
pub use weights::{LoadOptions, Weights};

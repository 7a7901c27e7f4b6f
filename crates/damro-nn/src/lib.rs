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

pub mod attention;
pub mod checkpoint;
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

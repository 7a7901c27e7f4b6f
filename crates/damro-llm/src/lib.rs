//! The language-model side of damro-rs: the LLaMA / Vicuna decoder of
//! LLaVA-1.5 and InstructBLIP-Vicuna, its batchable KV cache, the LLaMA
//! tokenizer in both of its behaviours, and the authors' prompt templates.
//!
//! - [`config`]: `config.json` / `text_config` as written
//!   ([`LlamaConfigJson`]) and validated ([`LlamaConfig`]).
//! - [`llama`]: the decoder ([`Llama`]); it takes input embeddings (so visual
//!   tokens can be spliced in) and a cache owned by the caller, and computes
//!   logits only where asked ([`LogitsAt`]).
//! - [`kv_cache`]: [`KvCache`], rows of different lengths in one batch (left
//!   padding, per-row positions), append in place, fork, truncate, reset,
//!   stack.
//! - [`rope`]: rotary embeddings with linear, dynamic and llama3 scaling.
//! - [`tokenizer`]: [`LlamaTokenizer`] with [`TokenizerBehavior`].
//! - [`template`]: [`PromptTemplate`] (`raw`, `llava_v1`, `instructblip`).
//! - [`testing`]: random LLaMA checkpoints for tests and benchmarks.
//!
//! Everything runs in f32, f16 or bf16, on the CPU or CUDA, through the same
//! code: the dtype and device come from the [`damro_nn::LoadOptions`] the
//! weights were loaded with.

#![warn(missing_docs)]

pub mod config;
mod error;
pub mod kv_cache;
pub mod llama;
pub mod rope;
pub mod template;
pub mod testing;
pub mod tokenizer;

pub use config::{LlamaConfig, LlamaConfigJson, RopeConfig, RopeScaling};
pub use error::{Error, Result};
pub use kv_cache::{CacheShape, KvCache, Step, StepMask, left_pad};
pub use llama::{Input, Llama, LogitsAt};
pub use template::{IMAGE_TOKEN, Prompt, PromptTemplate};
pub use tokenizer::{LlamaTokenizer, SpecialToken, SpecialTokens, TokenizerBehavior};

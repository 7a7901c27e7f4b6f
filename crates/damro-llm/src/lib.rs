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
//! - [`capture`]: opt-in capture of the decoder's attention weights for
//!   the paper's analysis.
//! - [`rope`]: rotary embeddings with linear, dynamic and llama3 scaling.
//! - [`tokenizer`]: [`LlamaTokenizer`] with [`TokenizerBehavior`].
//! - [`template`]: [`PromptTemplate`] (`raw`, `llava_v1`, `instructblip`).
//! - [`testing`]: random LLaMA checkpoints for tests and benchmarks.
//!
//! Everything runs in f32, f16 or bf16, on the CPU or CUDA, through the same
//! code: the dtype and device come from the [`damro_nn::LoadOptions`] the
//! weights were loaded with.
//!
//! Neighbours: built on [`damro_nn`]. `damro-vision` supplies the image
//! embeddings spliced into the input, `damro-core` drives the decoder (its
//! `LanguageModel` trait is implemented for [`Llama`]) with
//! `damro-sampler`'s contrastive step, `damro-models` loads it inside
//! LLaVA-1.5, LLaVA-NeXT and InstructBLIP, and the `damro` facade
//! re-exports them all.
//!
//! ```no_run
//! use damro_llm::{Llama, LlamaConfigJson, LlamaTokenizer, LogitsAt, PromptTemplate, TokenizerBehavior};
//! use damro_nn::{Checkpoint, KeyMap, LoadOptions, Weights};
//! # fn main() -> damro_llm::Result<()> {
//! // A text-only LLaMA directory (for a LLaVA one: `w.pp("language_model")`).
//! let dir = std::path::Path::new("/models/vicuna-7b-v1.5");
//! let config = LlamaConfigJson::from_file(&dir.join("config.json"))?.into_config()?;
//! let w = Weights::new(Checkpoint::open(dir, &KeyMap::identity())?, LoadOptions::cpu_f32())?;
//! let model = Llama::load(&w, &config)?;
//! w.finish()?;
//! let tokenizer = LlamaTokenizer::from_dir(dir, TokenizerBehavior::AsWritten)?;
//! let ids = tokenizer.encode(&PromptTemplate::Raw.render("The capital of France is").llm)?;
//! let mut cache = model.new_cache(1, 64)?;
//! let logits = model.forward(&model.embed_ids(&ids)?, &mut cache, LogitsAt::Last)?; // [1, 1, vocab]
//! let next = logits.f_argmax(-1, false)?.int64_value(&[0, 0]);
//! println!("{}", tokenizer.decode(&[next as u32])?);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod capture;
pub mod config;
mod error;
pub mod kv_cache;
pub mod llama;
pub mod rope;
pub mod template;
pub mod testing;
pub mod tokenizer;

pub use capture::{AttentionCapture, CapturedAttention, Selection};
pub use config::{LlamaConfig, LlamaConfigJson, RopeConfig, RopeScaling};
pub use error::{Error, Result};
pub use kv_cache::{CacheShape, KvCache, Step, StepMask, left_pad};
pub use llama::{Input, Llama, LogitsAt};
pub use template::{IMAGE_TOKEN, Prompt, PromptTemplate};
pub use tokenizer::{LlamaTokenizer, SpecialToken, SpecialTokens, TokenizerBehavior};

//! The vision side of damro-rs: the image encoders of LLaVA-1.5 and
//! InstructBLIP with what DAMRO needs from them.
//!
//! - [`clip`]: the CLIP vision tower (LLaVA-1.5) with the hidden state of any
//!   layer and DAMRO's full-width `[CLS]` attention.
//! - [`eva`]: the BLIP-2 / EVA vision tower (InstructBLIP) with DAMRO's
//!   head-averaged `[CLS]` attention.
//! - [`qformer`] and [`qformer_tokenizer`]: InstructBLIP's Q-Former and its
//!   BERT tokenizer.
//! - [`projector`]: LLaVA's `multi_modal_projector` and InstructBLIP's
//!   `language_projection`.
//! - [`llava`] and [`instructblip`]: each model's vision side loaded from a
//!   HuggingFace model directory, ready for the facade.
//! - [`llava_next`] and [`anyres_pack`]: LLaVA-NeXT's tiles through the CLIP
//!   tower in one batch, the packed full branch (transformers 4.43's grid
//!   layout or the corrected one) and DAMRO's base-tile contrast tokens.
//! - [`config`]: the configs, as written in `config.json` and validated.
//! - [`preprocess`]: the HF image processors (CLIP, LLaVA, BLIP, LLaVA-NeXT
//!   anyres), pixel for pixel, driven by `preprocessor_config.json`.
//! - [`vit`]: the encoder layer and MLP both towers share.
//!
//! Tensor layouts and numerics follow HF transformers 5.23; the `[CLS]`
//! attention forms follow the DAMRO authors' code (EMNLP 2024,
//! arXiv 2410.04514).
//!
//! Neighbours: built on [`damro_nn`] (checkpoints, shared layers). Its
//! image embeddings feed the decoder of `damro-llm`, its `[CLS]` attention
//! goes to `damro-outlier` for the top-k selection, and `damro-models` wires
//! the three into LLaVA-1.5, LLaVA-NeXT and InstructBLIP behind
//! `damro-core`'s extension point; the `damro` facade re-exports them all.
//!
//! ```no_run
//! use damro_nn::LoadOptions;
//! use damro_vision::LlavaVision;
//! use damro_vision::preprocess::ImageProcessor;
//! # fn main() -> damro_vision::Result<()> {
//! let dir = "/models/llava-1.5-7b-hf";
//! let vision = LlavaVision::load(dir, LoadOptions::cpu_f32())?;
//! let pixels = ImageProcessor::from_model_dir(dir)?.preprocess_path("photo.png")?; // [1, 3, 336, 336]
//! let image = vision.encode(&pixels)?;
//! // image.embeds: [1, 576, 4096], the image tokens for the language model;
//! // image.cls_attention: [1, 576], the scores DAMRO ranks outliers by.
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod anyres_pack;
pub mod clip;
pub mod config;
mod error;
pub mod eva;
pub mod instructblip;
pub mod llava;
pub mod llava_next;
pub mod preprocess;
pub mod projector;
pub mod qformer;
pub mod qformer_tokenizer;
pub mod vit;

pub use clip::{ClipOutput, ClipRequest, ClipVisionTower};
pub use config::{ClipVisionConfig, EvaVisionConfig, QFormerConfig};
pub use error::{Error, Result};
pub use eva::{EvaOutput, EvaVisionTower};
pub use instructblip::{InstructBlipConfig, InstructBlipImageFeatures, InstructBlipVision};
pub use llava::{FeatureSelectStrategy, LlavaConfig, LlavaImageFeatures, LlavaVision};
pub use llava_next::{LlavaNextConfig, LlavaNextImageFeatures, LlavaNextVision};
pub use projector::{LanguageProjection, LlavaProjector, LlavaProjectorConfig};
pub use qformer::QFormer;
pub use qformer_tokenizer::{QFormerInput, QFormerTokenizer};

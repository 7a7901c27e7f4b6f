//! The [`DamroDecoder`] trait: what an LVLM provides so the generation loop
//! in [`crate::generate`] can run DAMRO on it.
//!
//! DAMRO needs three things from a model: (1) its image encoded twice — the
//! full visual tokens and the visual tokens made from only the ViT's top-k
//! outlier patches; (2) each branch's input embeddings (the prompt with the
//! respective visual tokens in place); (3) one forward of the language model
//! over a batch of left-padded rows on a KV cache the caller owns. The loop
//! does the rest: prefill, contrast, token choice, stopping, streaming.
//!
//! # Implementing it for another model
//!
//! ```no_run
//! use damro::{Branches, DamroDecoder, Request, Result, VisualTokens};
//! use tch::{Device, Tensor};
//!
//! struct MyLvlm {/* vision tower, projector, LLM, tokenizer */}
//!
//! impl DamroDecoder for MyLvlm {
//!     type Cache = damro::llm::KvCache;
//!     fn device(&self) -> Device { Device::Cpu }
//!     fn encode_image(&self, request: &Request, outlier_k: Option<usize>) -> Result<VisualTokens> {
//!         // Run the ViT once: keep the projected tokens of all patches, and
//!         // (when `outlier_k` is set) select the top-k patches by [CLS]
//!         // attention with `damro::outlier::select_outliers`, gather and
//!         // project them.
//!         todo!()
//!     }
//!     fn branch_embeds(&self, request: &Request, visual: &VisualTokens) -> Result<Branches> {
//!         // Tokenize the prompt and splice `visual.full` (and
//!         // `visual.outlier`) in place of the image placeholder.
//!         todo!()
//!     }
//!     fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> { todo!() }
//!     fn new_cache(&self, rows: i64, capacity: i64) -> Result<Self::Cache> { todo!() }
//!     fn forward(&self, embeds: &Tensor, row_lengths: &[i64], cache: &mut Self::Cache) -> Result<Tensor> {
//!         // One language-model step over left-padded rows; logits of the
//!         // last position of every row, `[rows, vocab]`.
//!         todo!()
//!     }
//!     fn stop_ids(&self) -> Vec<i64> { vec![2] }
//!     fn decode(&self, new_ids: &[i64]) -> Result<String> { todo!() }
//! }
//! ```

use std::path::PathBuf;

use damro_llm::PromptTemplate;
use tch::{Device, Tensor};

use crate::Result;

/// Where a request's image comes from.
#[derive(Debug)]
pub enum ImageSource {
    /// An image file (PNG or JPEG), preprocessed by the model's processor.
    File(PathBuf),
    /// A decoded image, preprocessed by the model's processor.
    Image(image::DynamicImage),
    /// Already-preprocessed pixel values `[1, 3, H, W]` (any device and
    /// float dtype; moved to the model's).
    Pixels(Tensor),
}

/// One prompt about one image.
#[derive(Debug)]
pub struct Request {
    /// The image.
    pub image: ImageSource,
    /// The question (or full text, with [`PromptTemplate::Raw`]).
    pub question: String,
    /// How the question becomes the model's prompt.
    pub template: PromptTemplate,
}

impl Request {
    /// A request for an image file.
    pub fn new(image: ImageSource, question: impl Into<String>, template: PromptTemplate) -> Self {
        Self {
            image,
            question: question.into(),
            template,
        }
    }
}

/// A request's visual tokens, in the language model's embedding space.
#[derive(Debug)]
pub struct VisualTokens {
    /// The full branch's visual tokens `[1, n, hidden]`.
    pub full: Tensor,
    /// The outlier branch's visual tokens `[1, n_o, hidden]`, when asked for.
    pub outlier: Option<Tensor>,
    /// The selected outlier patch indices, in selection order (descending
    /// [CLS] attention unless the model says otherwise).
    pub outlier_indices: Vec<i64>,
}

/// Both branches' input embeddings of one request.
#[derive(Debug)]
pub struct Branches {
    /// The prompt's token ids (as the language model's tokenizer gives them,
    /// the image placeholder included where the model has one).
    pub prompt_ids: Vec<i64>,
    /// The full branch `[1, len, hidden]`.
    pub full: Tensor,
    /// The outlier branch `[1, len_o, hidden]`, when the visual tokens have
    /// one.
    pub outlier: Option<Tensor>,
}

/// A language-model KV cache the generation loop can batch.
pub trait BranchCache: Sized {
    /// Number of columns (tokens, padding included) held.
    fn len(&self) -> i64;

    /// Whether the cache holds no tokens.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins caches into one batch (rows of `caches[0]` first), shorter ones
    /// left-padded, with room for `capacity` columns.
    fn stack(caches: &[&Self], capacity: i64) -> Result<Self>;
}

impl BranchCache for damro_llm::KvCache {
    fn len(&self) -> i64 {
        damro_llm::KvCache::len(self)
    }

    fn stack(caches: &[&Self], capacity: i64) -> Result<Self> {
        Ok(damro_llm::KvCache::stack(caches, capacity)?)
    }
}

/// What an LVLM provides to run DAMRO (see the module docs).
pub trait DamroDecoder {
    /// The language model's KV cache ([`damro_llm::KvCache`] for a LLaMA).
    type Cache: BranchCache;

    /// The device the model runs on.
    fn device(&self) -> Device;

    /// Encodes the request's image once: the full visual tokens and, when
    /// `outlier_k` is `Some(k)`, the visual tokens built from the ViT's
    /// top-k outlier patches.
    fn encode_image(&self, request: &Request, outlier_k: Option<usize>) -> Result<VisualTokens>;

    /// The input embeddings of each branch.
    fn branch_embeds(&self, request: &Request, visual: &VisualTokens) -> Result<Branches>;

    /// Embeddings of new tokens.
    ///
    /// # Shapes
    /// ids `[rows]` (int64, on the model's device) → `[rows, 1, hidden]`
    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor>;

    /// An empty cache for `rows` rows with room for `capacity` tokens.
    fn new_cache(&self, rows: i64, capacity: i64) -> Result<Self::Cache>;

    /// One language-model forward over left-padded rows appended to
    /// `cache`; returns the logits of each row's last position.
    ///
    /// # Shapes
    /// embeds `[rows, step, hidden]` with `row_lengths[i]` real (trailing)
    /// tokens in row `i` → `[rows, vocab]`
    fn forward(
        &self,
        embeds: &Tensor,
        row_lengths: &[i64],
        cache: &mut Self::Cache,
    ) -> Result<Tensor>;

    /// Token ids that end a generation (EOS).
    fn stop_ids(&self) -> Vec<i64>;

    /// The text of the new tokens of one generation, as the model's
    /// reference decodes it.
    fn decode(&self, new_ids: &[i64]) -> Result<String>;
}

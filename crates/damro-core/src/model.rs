//! What a model provides so that the generation loop ([`crate::generate`])
//! can run DAMRO, or any contrast view, on it: a [`LanguageModel`] (embed,
//! cache, one forward over left-padded rows) and a [`DamroDecoder`] on top
//! (encode the image for both branches, build each branch's input, decode).
//!
//! The built-in adapters (`damro-models`) implement these traits with
//! nothing but public items, so an LVLM outside this workspace can do the
//! same. A language model may use [`damro_llm::KvCache`], whose write path
//! is public ([`damro_llm::KvCache::begin_step`], [`damro_llm::KvCache::write`]),
//! or bring its own cache by implementing [`BranchCache`].

use std::fmt;

use tch::{Device, Tensor};

use damro_llm::AttentionCapture;

use crate::{Error, Request, Result, SecondImage};

/// A language-model KV cache the generation loop can batch.
pub trait BranchCache: Sized {
    /// Number of columns (tokens, padding included) held.
    fn len(&self) -> i64;

    /// Whether the cache holds no tokens.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins caches into one batch (rows of `caches[0]` first), shorter ones
    /// left-padded, with room for `capacity` columns. Each row keeps its own
    /// positions.
    fn stack(caches: &[&Self], capacity: i64) -> Result<Self>;
}

/// The rows of one language-model forward.
///
/// # Shapes
/// `embeds` `[rows, step, hidden]`; `row_lengths` and `states` have one
/// entry per row.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a, S> {
    /// Input embeddings, left-padded: row `i`'s real tokens are its last
    /// `row_lengths[i]` columns.
    pub embeds: &'a Tensor,
    /// Real tokens per row.
    pub row_lengths: &'a [i64],
    /// Each row's state, as the branch that made the row set it (see
    /// [`Branch::state`]).
    pub states: &'a [S],
}

/// A causal language model the generation loop can drive.
pub trait LanguageModel {
    /// Its KV cache.
    type Cache: BranchCache;
    /// What a branch tells every forward over its row (e.g. rotary
    /// position offsets that differ between branches); `()` for most
    /// models.
    type RowState: Clone + fmt::Debug;

    /// The device of the weights.
    fn device(&self) -> Device;

    /// Embeddings of new tokens.
    ///
    /// # Shapes
    /// ids `[rows]` (int64, on the model's device) → `[rows, 1, hidden]`
    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor>;

    /// An empty cache for `rows` rows with room for `capacity` tokens.
    fn new_cache(&self, rows: i64, capacity: i64) -> Result<Self::Cache>;

    /// One forward over left-padded rows appended to `cache`; the logits
    /// of each row's last position.
    ///
    /// # Shapes
    /// see [`Rows`] → `[rows, vocab]`
    fn forward(&self, rows: Rows<'_, Self::RowState>, cache: &mut Self::Cache) -> Result<Tensor>;

    /// [`LanguageModel::forward`] that also returns, per row, the last
    /// position's attention over the row's real tokens, averaged over the
    /// heads and layers `capture` selects (for the paper's analysis). The
    /// default says the model cannot.
    ///
    /// # Shapes
    /// see [`Rows`] → logits `[rows, vocab]`, one `[row's tokens]` f32 CPU
    /// tensor per row
    ///
    /// # Errors
    /// [`Error::Invalid`] unless the model implements it.
    fn forward_with_attention(
        &self,
        rows: Rows<'_, Self::RowState>,
        cache: &mut Self::Cache,
        capture: &AttentionCapture,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let _ = (rows, cache, capture);
        Err(Error::invalid(
            "attention capture",
            "this language model does not expose its attention weights",
        ))
    }
}

/// What the analysis of a generation needs from the model besides the
/// decoder's attention (see [`DamroDecoder::analysis_inputs`]).
#[derive(Debug)]
pub struct AnalysisInputs {
    /// Positions of the image tokens in the full branch's input (the
    /// decoder attention maps are cut to them).
    pub image_span: std::ops::Range<usize>,
    /// The ViT's \[CLS\] attention over the patches `[patches]` (f32, CPU),
    /// when the image tokens of `image_span` are those patches in patch
    /// order, so that `H_i` and `F` compare like with like. `None` where
    /// the image tokens are not patches (InstructBLIP's Q-Former queries).
    pub cls_attention: Option<Tensor>,
}

/// The row state of a decoder's language model.
pub type RowStateOf<D> = <<D as DamroDecoder>::Lm as LanguageModel>::RowState;

/// The second branch's visual input, as [`DamroDecoder::encode_image`]
/// built it.
#[derive(Debug)]
#[non_exhaustive]
pub enum ContrastTokens {
    /// No second branch.
    None,
    /// Visual tokens `[1, n, hidden]` in place of the full ones.
    Tokens(Tensor),
    /// No image: the second branch is the prompt without image tokens.
    NoImage,
}

/// A request's visual tokens, in the language model's embedding space.
#[derive(Debug)]
pub struct VisualTokens {
    /// The full branch's visual tokens `[1, n, hidden]`.
    pub full: Tensor,
    /// The second branch's.
    pub contrast: ContrastTokens,
    /// The selected outlier patch indices in selection order (DAMRO; empty
    /// for other views).
    pub outlier_indices: Vec<i64>,
}

/// One branch's input: its embeddings and its rows' state.
#[derive(Debug)]
pub struct Branch<S> {
    /// `[1, len, hidden]`.
    pub embeds: Tensor,
    /// Handed to every [`LanguageModel::forward`] over this branch's row.
    pub state: S,
}

impl Branch<()> {
    /// A branch with no state.
    pub fn new(embeds: Tensor) -> Self {
        Self { embeds, state: () }
    }
}

/// Both branches' inputs of one request.
#[derive(Debug)]
pub struct Branches<S> {
    /// The prompt's token ids (as the language model's tokenizer gives them,
    /// the image placeholder included where the model has one).
    pub prompt_ids: Vec<i64>,
    /// The full branch.
    pub full: Branch<S>,
    /// The second branch, when the visual tokens have one.
    pub contrast: Option<Branch<S>>,
}

/// What an LVLM provides to run DAMRO and the other contrast views.
///
/// # Implementing it
/// A model implements [`LanguageModel`] for its decoder (or uses
/// `damro_llm::Llama`, which implements it), then this trait: encode the
/// image once for both branches ([`DamroDecoder::encode_image`]), splice the
/// visual tokens into the prompt ([`DamroDecoder::branch_embeds`]), say
/// which ids end a generation and how ids become text. The generation loop
/// does the rest (prefill, batching both branches into one forward, the
/// contrast, sampling, stopping, streaming). The `custom-lvlm` package in
/// this repository's `examples/` is a complete outside implementation over
/// a GPT-2-style decoder.
pub trait DamroDecoder {
    /// The language model.
    type Lm: LanguageModel;

    /// The language model the loop drives.
    fn language_model(&self) -> &Self::Lm;

    /// The device the model runs on.
    fn device(&self) -> Device {
        self.language_model().device()
    }

    /// Encodes the request's image once: the full visual tokens and the
    /// second branch's input that `second` asks for. A model that cannot
    /// build a view returns [`crate::Error::Invalid`] naming it.
    fn encode_image(&self, request: &Request, second: SecondImage<'_>) -> Result<VisualTokens>;

    /// The input embeddings of each branch.
    fn branch_embeds(
        &self,
        request: &Request,
        visual: &VisualTokens,
    ) -> Result<Branches<RowStateOf<Self>>>;

    /// Embeddings of generated tokens (the language model's by default).
    ///
    /// # Shapes
    /// ids `[rows]` → `[rows, 1, hidden]`
    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.language_model().embed_tokens(ids)
    }

    /// Token ids that end a generation (EOS).
    fn stop_ids(&self) -> Vec<i64>;

    /// The text of the new tokens of one generation, as the model's
    /// reference decodes it.
    fn decode(&self, new_ids: &[i64]) -> Result<String>;

    /// For the analysis (when [`crate::GenerationConfig::attention`] is
    /// set): where the image tokens sit in the full branch and the ViT's
    /// \[CLS\] attention over them. The default has none, and a capture then
    /// records no image attention.
    ///
    /// # Errors
    /// Whatever recomputing the \[CLS\] scores can fail with.
    fn analysis_inputs(
        &self,
        request: &Request,
        branches: &Branches<RowStateOf<Self>>,
    ) -> Result<Option<AnalysisInputs>> {
        let _ = (request, branches);
        Ok(None)
    }

    /// The number of tokens the language model can attend to, when it has
    /// a limit (prompts and generations beyond it are refused before any
    /// work).
    fn context_length(&self) -> Option<usize> {
        None
    }
}

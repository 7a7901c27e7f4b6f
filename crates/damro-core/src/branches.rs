//! The caches of a generation's branches and how one step runs on them.

use damro_llm::AttentionCapture;
use tch::Tensor;

use crate::{BranchCache, BranchExecution, DamroDecoder, LanguageModel, Result, RowStateOf, Rows};

/// One step's output.
pub(crate) struct StepOut {
    /// The full branch's last logits `[requests, vocab]`.
    pub full: Tensor,
    /// The second branch's, when there is one.
    pub second: Option<Tensor>,
    /// With a capture: each full row's attention over its tokens.
    pub attention: Option<Vec<Tensor>>,
}

/// The rows of one branch over all requests, ready for prefill.
pub(crate) struct BranchRows<S> {
    /// `[len_i, hidden]` per request.
    pub embeds: Vec<Tensor>,
    /// The row state per request.
    pub states: Vec<S>,
}

impl<S> BranchRows<S> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            embeds: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.embeds.is_empty()
    }
}

/// A cache with the states of its rows, in row order.
struct Cached<C, S> {
    cache: C,
    states: Vec<S>,
}

/// The caches of the branches.
enum Layout<C, S> {
    /// One branch only (plain decoding, cutoff only).
    Single(Cached<C, S>),
    /// Full rows then second-branch rows in one cache: one forward a step.
    Batched(Cached<C, S>),
    /// One cache per branch: two forwards a step.
    Sequential(Cached<C, S>, Cached<C, S>),
}

/// A decoder's cache with its rows' states.
type CachedOf<D> = Cached<<<D as DamroDecoder>::Lm as LanguageModel>::Cache, RowStateOf<D>>;

/// The branches' caches of one generation call.
pub(crate) struct BranchCaches<D: DamroDecoder + ?Sized> {
    layout: Layout<<D::Lm as LanguageModel>::Cache, RowStateOf<D>>,
    capture: Option<AttentionCapture>,
}

impl<D: DamroDecoder + ?Sized> BranchCaches<D> {
    /// Runs the prompts of both branches and returns the caches with the
    /// first logits. Each branch is prefilled on its own (so the short
    /// second-branch rows are not padded to the full rows' length); for
    /// batched execution the two caches are then joined into one.
    /// `room` columns are reserved for generated tokens (the cache grows
    /// past that by doubling).
    pub(crate) fn prefill(
        decoder: &D,
        full: BranchRows<RowStateOf<D>>,
        second: BranchRows<RowStateOf<D>>,
        execution: BranchExecution,
        room: i64,
        capture: Option<&AttentionCapture>,
    ) -> Result<(Self, StepOut)> {
        let capture = capture.cloned();
        let (full, logits_full, attention) = prefill_branch(decoder, full, room, capture.as_ref())?;
        if second.is_empty() {
            let layout = Layout::Single(full);
            let out = StepOut {
                full: logits_full,
                second: None,
                attention,
            };
            return Ok((Self { layout, capture }, out));
        }
        let (second, logits_second, _) = prefill_branch(decoder, second, room, None)?;
        let logits = StepOut {
            full: logits_full,
            second: Some(logits_second),
            attention,
        };
        let layout = match execution {
            BranchExecution::Sequential => Layout::Sequential(full, second),
            BranchExecution::Batched => {
                let len = full.cache.len().max(second.cache.len());
                let cache = BranchCache::stack(&[&full.cache, &second.cache], len + room)?;
                let mut states = full.states;
                states.extend(second.states);
                Layout::Batched(Cached { cache, states })
            }
        };
        Ok((Self { layout, capture }, logits))
    }

    /// Appends one generated token per request (`ids` `[requests]`) to
    /// every branch and returns the next logits.
    pub(crate) fn step(&mut self, decoder: &D, ids: &Tensor) -> Result<StepOut> {
        let n = ids.size()[0];
        let embeds = decoder.embed_tokens(ids)?;
        let lm = decoder.language_model();
        let capture = self.capture.as_ref();
        match &mut self.layout {
            Layout::Single(c) => {
                let (full, attention) = forward_ones(lm, &embeds, c, capture)?;
                Ok(StepOut {
                    full,
                    second: None,
                    attention,
                })
            }
            Layout::Batched(c) => {
                let both = Tensor::f_cat(&[&embeds, &embeds], 0)?;
                let (logits, mut attention) = forward_ones(lm, &both, c, capture)?;
                if let Some(rows) = attention.as_mut() {
                    rows.truncate(n as usize);
                }
                Ok(StepOut {
                    full: logits.f_narrow(0, 0, n)?,
                    second: Some(logits.f_narrow(0, n, n)?),
                    attention,
                })
            }
            Layout::Sequential(full, second) => {
                let (full, attention) = forward_ones(lm, &embeds, full, capture)?;
                let (second, _) = forward_ones(lm, &embeds, second, None)?;
                Ok(StepOut {
                    full,
                    second: Some(second),
                    attention,
                })
            }
        }
    }
}

/// Prefills one branch's rows (left-padded into one batch) on a new cache.
fn prefill_branch<D: DamroDecoder + ?Sized>(
    decoder: &D,
    rows: BranchRows<RowStateOf<D>>,
    room: i64,
    capture: Option<&AttentionCapture>,
) -> Result<(CachedOf<D>, Tensor, Option<Vec<Tensor>>)> {
    let lm = decoder.language_model();
    let refs: Vec<&Tensor> = rows.embeds.iter().collect();
    let (embeds, lengths) = damro_llm::left_pad(&refs)?;
    let longest = embeds.size()[1];
    let mut cached = Cached {
        cache: lm.new_cache(refs.len() as i64, longest + room)?,
        states: rows.states,
    };
    let (logits, attention) = forward_rows(lm, &embeds, &lengths, &mut cached, capture)?;
    Ok((cached, logits, attention))
}

/// One token per row.
fn forward_ones<L: LanguageModel>(
    lm: &L,
    embeds: &Tensor,
    cached: &mut Cached<L::Cache, L::RowState>,
    capture: Option<&AttentionCapture>,
) -> Result<(Tensor, Option<Vec<Tensor>>)> {
    let ones = vec![1; cached.states.len()];
    forward_rows(lm, embeds, &ones, cached, capture)
}

/// One forward, capturing attention when asked.
fn forward_rows<L: LanguageModel>(
    lm: &L,
    embeds: &Tensor,
    row_lengths: &[i64],
    cached: &mut Cached<L::Cache, L::RowState>,
    capture: Option<&AttentionCapture>,
) -> Result<(Tensor, Option<Vec<Tensor>>)> {
    let rows = Rows {
        embeds,
        row_lengths,
        states: &cached.states,
    };
    match capture {
        None => Ok((lm.forward(rows, &mut cached.cache)?, None)),
        Some(capture) => {
            let (logits, attention) =
                lm.forward_with_attention(rows, &mut cached.cache, capture)?;
            Ok((logits, Some(attention)))
        }
    }
}

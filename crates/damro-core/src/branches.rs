//! The caches of a generation's branches and how one step runs on them.

use tch::Tensor;

use crate::{BranchCache, BranchExecution, DamroDecoder, LanguageModel, Result, RowStateOf, Rows};

/// One step's logits: the full branch's and the second branch's.
pub(crate) type StepOut = (Tensor, Option<Tensor>);

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
    ) -> Result<(Self, StepOut)> {
        let (full, logits_full) = prefill_branch(decoder, full, room)?;
        if second.is_empty() {
            let layout = Layout::Single(full);
            return Ok((Self { layout }, (logits_full, None)));
        }
        let (second, logits_second) = prefill_branch(decoder, second, room)?;
        let logits = (logits_full, Some(logits_second));
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
        Ok((Self { layout }, logits))
    }

    /// Appends one generated token per request (`ids` `[requests]`) to
    /// every branch and returns the next logits.
    pub(crate) fn step(&mut self, decoder: &D, ids: &Tensor) -> Result<StepOut> {
        let n = ids.size()[0];
        let embeds = decoder.embed_tokens(ids)?;
        let lm = decoder.language_model();
        match &mut self.layout {
            Layout::Single(c) => Ok((forward_ones(lm, &embeds, c)?, None)),
            Layout::Batched(c) => {
                let both = Tensor::f_cat(&[&embeds, &embeds], 0)?;
                let logits = forward_ones(lm, &both, c)?;
                Ok((logits.f_narrow(0, 0, n)?, Some(logits.f_narrow(0, n, n)?)))
            }
            Layout::Sequential(full, second) => Ok((
                forward_ones(lm, &embeds, full)?,
                Some(forward_ones(lm, &embeds, second)?),
            )),
        }
    }
}

/// Prefills one branch's rows (left-padded into one batch) on a new cache.
fn prefill_branch<D: DamroDecoder + ?Sized>(
    decoder: &D,
    rows: BranchRows<RowStateOf<D>>,
    room: i64,
) -> Result<(CachedOf<D>, Tensor)> {
    let lm = decoder.language_model();
    let refs: Vec<&Tensor> = rows.embeds.iter().collect();
    let (embeds, lengths) = damro_llm::left_pad(&refs)?;
    let longest = embeds.size()[1];
    let mut cache = lm.new_cache(refs.len() as i64, longest + room)?;
    let logits = lm.forward(
        Rows {
            embeds: &embeds,
            row_lengths: &lengths,
            states: &rows.states,
        },
        &mut cache,
    )?;
    let cached = Cached {
        cache,
        states: rows.states,
    };
    Ok((cached, logits))
}

/// One token per row.
fn forward_ones<L: LanguageModel>(
    lm: &L,
    embeds: &Tensor,
    cached: &mut Cached<L::Cache, L::RowState>,
) -> Result<Tensor> {
    let ones = vec![1; cached.states.len()];
    lm.forward(
        Rows {
            embeds,
            row_lengths: &ones,
            states: &cached.states,
        },
        &mut cached.cache,
    )
}

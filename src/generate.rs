//! The generation loop, written once against [`DamroDecoder`].
//!
//! Per call: encode every request's image once, build both branches'
//! embeddings, prefill, then step until EOS, a stop string or the token
//! limit. By default the full and the outlier branch of every request run
//! as ONE batched forward per step (rows of different lengths, left-padded
//! in one cache); [`BranchExecution::Sequential`] runs them as two forwards
//! on two caches, as the reference does. Both give the same tokens.
//!
//! Each step hands the rows' last logits to the [`damro_sampler::Sampler`]:
//! plain decoding takes the full branch alone, DAMRO contrasts the two under
//! the plausibility cutoff. Greedy or seeded multinomial sampling; no
//! logits processors unless configured (the reference applies none).

use damro_sampler::{
    Contrast, DamroParams, DamroPreset, LogitsProcessors, Sampler, StepLogits, TokenChoice,
    ids_to_vec,
};
use tch::Tensor;

use crate::{BranchCache, DamroDecoder, Error, Request, Result};

/// DAMRO's settings: the contrast parameters and the outlier count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DamroSettings {
    /// `alpha` and `beta`, validated.
    pub params: DamroParams,
    /// How many outlier tokens make the outlier branch's image part.
    pub outlier_k: usize,
}

impl DamroSettings {
    /// Validated settings.
    pub fn new(alpha: f64, beta: f64, outlier_k: usize) -> Result<Self> {
        if outlier_k == 0 {
            return Err(Error::invalid("outlier k", "must be at least 1"));
        }
        Ok(Self {
            params: DamroParams::new(alpha, beta)?,
            outlier_k,
        })
    }
}

impl From<DamroPreset> for DamroSettings {
    fn from(preset: DamroPreset) -> Self {
        Self {
            params: preset.params,
            outlier_k: preset.outlier_k,
        }
    }
}

/// Plain decoding or DAMRO.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// The full branch alone.
    Plain,
    /// Contrast with the outlier branch.
    Damro(DamroSettings),
}

/// How many tokens may be generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// At most this many new tokens.
    MaxNewTokens(usize),
    /// The reference InstructBLIP's `max_length = L`: `L - 1 - prompt_len`
    /// new tokens (the query tokens do not count; one is kept for the BOS
    /// prepended before decoding).
    MaxLength(usize),
}

impl Limit {
    fn new_tokens(self, prompt_len: usize) -> usize {
        match self {
            Limit::MaxNewTokens(n) => n,
            Limit::MaxLength(l) => l.saturating_sub(1 + prompt_len),
        }
    }
}

/// How the two branches are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BranchExecution {
    /// One batched forward per step over both branches (default).
    #[default]
    Batched,
    /// Two forwards per step, one per branch, each on its own cache.
    Sequential,
}

/// Everything about one generation call except the requests.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// Plain decoding or DAMRO.
    pub mode: Mode,
    /// `None`: greedy (ties to the lowest id); `Some(seed)`: multinomial
    /// sampling from a generator seeded like `torch.manual_seed(seed)`.
    ///
    /// Sampling draws from libtorch's global generator, exactly as
    /// `torch.multinomial` does (that is what makes the draws equal to the
    /// reference's): generations that sample in several threads at once
    /// interleave their draws and are then not reproducible. Sample from
    /// one thread at a time (greedy decoding has no such limit).
    pub seed: Option<u64>,
    /// The token limit.
    pub limit: Limit,
    /// Generation stops when the text contains one of these; the text is cut
    /// before it.
    pub stop_strings: Vec<String>,
    /// Batched or sequential branches.
    pub branches: BranchExecution,
    /// Optional logits processors, applied after the contrast (none by
    /// default, as in the reference).
    pub processors: LogitsProcessors,
}

impl GenerationConfig {
    /// Greedy, `max_new_tokens` tokens, batched branches, no stop strings.
    pub fn greedy(mode: Mode, max_new_tokens: usize) -> Self {
        Self {
            mode,
            seed: None,
            limit: Limit::MaxNewTokens(max_new_tokens),
            stop_strings: Vec::new(),
            branches: BranchExecution::Batched,
            processors: LogitsProcessors::default(),
        }
    }

    /// Seeded sampling, `max_new_tokens` tokens, batched branches.
    pub fn sampled(mode: Mode, max_new_tokens: usize, seed: u64) -> Self {
        Self {
            seed: Some(seed),
            ..Self::greedy(mode, max_new_tokens)
        }
    }

    fn outlier_k(&self) -> Option<usize> {
        match self.mode {
            Mode::Plain => None,
            Mode::Damro(s) => Some(s.outlier_k),
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token was generated (it is in `token_ids`).
    Eos,
    /// The text reached this stop string.
    StopString(String),
    /// The token limit was reached.
    Length,
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The prompt's token ids.
    pub prompt_ids: Vec<i64>,
    /// The new tokens (EOS included when generated).
    pub token_ids: Vec<i64>,
    /// The decoded text of the new tokens.
    pub text: String,
    /// The selected outlier patch indices, in selection order (empty in
    /// plain mode).
    pub outliers: Vec<i64>,
    /// Why it ended.
    pub finish: FinishReason,
}

/// One new token, as reported to a streaming callback.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent<'a> {
    /// Index of the request in the call.
    pub request: usize,
    /// The token.
    pub token_id: i64,
    /// The text added by this token (may be empty while a multi-byte
    /// character is incomplete).
    pub text_delta: &'a str,
}

/// Generates for every request (see the module docs).
pub fn generate<D: DamroDecoder + ?Sized>(
    decoder: &D,
    requests: &[Request],
    config: &GenerationConfig,
) -> Result<Vec<Generation>> {
    run(decoder, requests, config, None)
}

struct Row {
    prompt_ids: Vec<i64>,
    outliers: Vec<i64>,
    limit: usize,
    tokens: Vec<i64>,
    text: String,
    finish: Option<FinishReason>,
}

/// [`generate`], calling `on_token` for every new token.
pub fn generate_streaming<D: DamroDecoder + ?Sized>(
    decoder: &D,
    requests: &[Request],
    config: &GenerationConfig,
    on_token: &mut dyn FnMut(&TokenEvent<'_>),
) -> Result<Vec<Generation>> {
    run(decoder, requests, config, Some(on_token))
}

/// The loop behind [`generate`] and [`generate_streaming`]. Text is decoded
/// per step only when something reads it (a callback or stop strings);
/// otherwise once at the end.
fn run<D: DamroDecoder + ?Sized>(
    decoder: &D,
    requests: &[Request],
    config: &GenerationConfig,
    mut on_token: Option<&mut dyn FnMut(&TokenEvent<'_>)>,
) -> Result<Vec<Generation>> {
    let decode_each_step = on_token.is_some() || !config.stop_strings.is_empty();
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let device = decoder.device();
    let damro = config.outlier_k().is_some();

    // Encode each image once, build both branches.
    let mut rows = Vec::with_capacity(requests.len());
    let mut full = Vec::with_capacity(requests.len());
    let mut outlier = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        let visual = decoder.encode_image(request, config.outlier_k())?;
        let branches = decoder.branch_embeds(request, &visual)?;
        full.push(squeeze_row(&branches.full, "full branch")?);
        if damro {
            let o = branches.outlier.as_ref().ok_or_else(|| {
                Error::invalid(
                    "decoder",
                    format!("request {i}: no outlier branch in DAMRO mode"),
                )
            })?;
            outlier.push(squeeze_row(o, "outlier branch")?);
        }
        rows.push(Row {
            limit: config.limit.new_tokens(branches.prompt_ids.len()),
            prompt_ids: branches.prompt_ids,
            outliers: visual.outlier_indices,
            tokens: Vec::new(),
            text: String::new(),
            finish: None,
        });
    }
    let steps = rows.iter().map(|r| r.limit).max().unwrap_or(0);
    let stop_ids = decoder.stop_ids();
    let contrast = match config.mode {
        Mode::Plain => Contrast::Plain,
        Mode::Damro(s) => Contrast::Damro(s.params),
    };
    let choice = match config.seed {
        None => TokenChoice::Greedy,
        Some(seed) => TokenChoice::sample_seeded(seed),
    };
    let mut sampler = Sampler::new(contrast, choice).with_processors(config.processors.clone());

    // Prefill.
    let (mut branches, mut logits) =
        BranchCaches::prefill(decoder, &full, &outlier, config.branches, steps)?;

    for step in 0..steps {
        for row in rows.iter_mut() {
            if row.finish.is_none() && row.tokens.len() >= row.limit {
                row.finish = Some(FinishReason::Length);
            }
        }
        if rows.iter().all(|r| r.finish.is_some()) {
            break;
        }
        let history = if sampler.processors().needs_history() {
            Some(history(&rows, device)?)
        } else {
            None
        };
        let step_logits = match &logits.1 {
            Some(o) => StepLogits::damro(&logits.0, o),
            None => StepLogits::plain(&logits.0),
        };
        let step_logits = match &history {
            Some(h) => step_logits.with_history(h),
            None => step_logits,
        };
        let ids = ids_to_vec(&sampler.step(step_logits)?)?;
        for (i, (row, &id)) in rows.iter_mut().zip(&ids).enumerate() {
            if row.finish.is_some() {
                continue;
            }
            row.tokens.push(id);
            if decode_each_step {
                let text = decoder.decode(&row.tokens)?;
                if let Some(on_token) = on_token.as_mut() {
                    let delta = text.strip_prefix(row.text.as_str()).unwrap_or(&text);
                    on_token(&TokenEvent {
                        request: i,
                        token_id: id,
                        text_delta: delta,
                    });
                }
                row.text = text;
            }
            if stop_ids.contains(&id) {
                row.finish = Some(FinishReason::Eos);
            } else if let Some((at, stop)) = config
                .stop_strings
                .iter()
                .filter_map(|s| row.text.find(s.as_str()).map(|at| (at, s)))
                .min_by_key(|(at, _)| *at)
            {
                row.text.truncate(at);
                row.finish = Some(FinishReason::StopString(stop.clone()));
            } else if row.tokens.len() >= row.limit {
                row.finish = Some(FinishReason::Length);
            }
        }
        if step + 1 == steps || rows.iter().all(|r| r.finish.is_some()) {
            break;
        }
        let ids = Tensor::f_from_slice(&ids)?.f_to_device(device)?;
        logits = branches.step(decoder, &ids)?;
    }
    rows.into_iter()
        .map(|r| {
            let text = if decode_each_step {
                r.text
            } else {
                decoder.decode(&r.tokens)?
            };
            Ok(Generation {
                prompt_ids: r.prompt_ids,
                token_ids: r.tokens,
                text,
                outliers: r.outliers,
                finish: r.finish.unwrap_or(FinishReason::Length),
            })
        })
        .collect()
}

fn squeeze_row(embeds: &Tensor, what: &str) -> Result<Tensor> {
    match embeds.size()[..] {
        [1, _, _] => Ok(embeds.f_squeeze_dim(0)?),
        ref other => Err(Error::invalid(
            what,
            format!("expected embeddings [1, len, hidden], got {other:?}"),
        )),
    }
}

/// Prompt + generated ids per row, right-padded with the row's first id
/// (a repeat changes no processor that looks at which ids occurred).
fn history(rows: &[Row], device: tch::Device) -> Result<Tensor> {
    let seqs: Vec<Vec<i64>> = rows
        .iter()
        .map(|r| r.prompt_ids.iter().chain(&r.tokens).copied().collect())
        .collect();
    let width = seqs.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut flat = Vec::with_capacity(seqs.len() * width);
    for seq in &seqs {
        let pad = seq.first().copied().unwrap_or(0);
        flat.extend(
            seq.iter()
                .copied()
                .chain(std::iter::repeat(pad))
                .take(width),
        );
    }
    Ok(Tensor::f_from_slice(&flat)?
        .f_view([seqs.len() as i64, width as i64])?
        .f_to_device(device)?)
}

/// The caches of the branches and how they are stepped.
enum BranchCaches<C> {
    /// Plain decoding: the full rows only.
    Plain(C),
    /// Full rows then outlier rows in one cache.
    Batched(C),
    /// One cache per branch.
    Sequential(C, C),
}

type StepOut = (Tensor, Option<Tensor>);

impl<C: BranchCache> BranchCaches<C> {
    /// Runs the prompts of both branches and returns the caches with the
    /// first logits. Each branch is prefilled on its own (so the short
    /// outlier rows are not padded to the full rows' length); for batched
    /// execution the two caches are then joined into one.
    fn prefill<D: DamroDecoder<Cache = C> + ?Sized>(
        decoder: &D,
        full: &[Tensor],
        outlier: &[Tensor],
        execution: BranchExecution,
        steps: usize,
    ) -> Result<(Self, StepOut)> {
        let room = steps as i64;
        let run = |rows: &[Tensor]| -> Result<(C, Tensor)> {
            let refs: Vec<&Tensor> = rows.iter().collect();
            let (embeds, lengths) = damro_llm::left_pad(&refs)?;
            let longest = embeds.size()[1];
            let mut cache = decoder.new_cache(rows.len() as i64, longest + room)?;
            let logits = decoder.forward(&embeds, &lengths, &mut cache)?;
            Ok((cache, logits))
        };
        let (cache_full, logits_full) = run(full)?;
        if outlier.is_empty() {
            return Ok((BranchCaches::Plain(cache_full), (logits_full, None)));
        }
        let (cache_outlier, logits_outlier) = run(outlier)?;
        let logits = (logits_full, Some(logits_outlier));
        Ok(match execution {
            BranchExecution::Sequential => {
                (BranchCaches::Sequential(cache_full, cache_outlier), logits)
            }
            BranchExecution::Batched => {
                let len = cache_full.len().max(cache_outlier.len());
                let joined = C::stack(&[&cache_full, &cache_outlier], len + room)?;
                (BranchCaches::Batched(joined), logits)
            }
        })
    }

    fn step<D: DamroDecoder<Cache = C> + ?Sized>(
        &mut self,
        decoder: &D,
        ids: &Tensor,
    ) -> Result<StepOut> {
        let n = ids.size()[0];
        let embeds = decoder.embed_tokens(ids)?;
        match self {
            BranchCaches::Plain(cache) => {
                Ok((decoder.forward(&embeds, &vec![1; n as usize], cache)?, None))
            }
            BranchCaches::Batched(cache) => {
                let both = Tensor::f_cat(&[&embeds, &embeds], 0)?;
                let logits = decoder.forward(&both, &vec![1; 2 * n as usize], cache)?;
                Ok((logits.f_narrow(0, 0, n)?, Some(logits.f_narrow(0, n, n)?)))
            }
            BranchCaches::Sequential(cf, co) => {
                let ones = vec![1; n as usize];
                Ok((
                    decoder.forward(&embeds, &ones, cf)?,
                    Some(decoder.forward(&embeds, &ones, co)?),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Limit;

    #[test]
    fn max_length_counts_like_the_reference_instructblip() {
        // Reference: generate(max_length = L) on [query embeds; prompt
        // embeds] yields L - 1 - prompt_len new tokens.
        assert_eq!(Limit::MaxLength(30).new_tokens(10), 19);
        assert_eq!(Limit::MaxLength(11).new_tokens(10), 0);
        assert_eq!(Limit::MaxLength(5).new_tokens(10), 0);
        assert_eq!(Limit::MaxNewTokens(16).new_tokens(10), 16);
    }
}

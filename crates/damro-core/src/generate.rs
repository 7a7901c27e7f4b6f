//! The generation loop, written once against [`DamroDecoder`].
//!
//! Per call: encode every request's image once (with the second branch the
//! [`Mode`] asks for), build both branches' embeddings, prefill, then step
//! until EOS, a stop string or the token limit. By default the full and the
//! second branch of every request run as ONE batched forward per step (rows
//! of different lengths, left-padded in one cache);
//! [`BranchExecution::Sequential`] runs them as two forwards on two caches,
//! as the reference does. Both give the same tokens.
//!
//! Each step hands the rows' last logits to the [`damro_sampler::Sampler`]:
//! plain decoding takes the full branch alone, the contrast views contrast
//! the two under the plausibility cutoff, cutoff-only masks the full branch.
//! Greedy or seeded multinomial sampling; no logits processors unless
//! configured (the reference applies none).

use damro_sampler::{Sampler, StepLogits, TokenChoice, ids_to_vec};
use tch::Tensor;

use crate::branches::{BranchCaches, BranchRows, StepOut};
use crate::{
    DamroDecoder, Error, FinishReason, Generation, GenerationConfig, Request, Result, RowStateOf,
    TokenEvent,
};

/// Tokens reserved in the caches for generation up front; a longer
/// generation grows the caches by doubling, so a huge token limit never
/// allocates before it is used.
const RESERVED_NEW_TOKENS: usize = 256;

/// Generates for every request (see the module docs).
///
/// # Errors
/// Invalid requests (no image placeholder, a prompt longer than the model's
/// context, a view the model cannot build), model errors, and
/// non-finite logits (named with the step).
pub fn generate<D: DamroDecoder + ?Sized>(
    decoder: &D,
    requests: &[Request],
    config: &GenerationConfig,
) -> Result<Vec<Generation>> {
    run(decoder, requests, config, None)
}

/// [`generate`], calling `on_token` for every new token.
///
/// # Errors
/// As [`generate`].
pub fn generate_streaming<D: DamroDecoder + ?Sized>(
    decoder: &D,
    requests: &[Request],
    config: &GenerationConfig,
    on_token: &mut dyn FnMut(&TokenEvent<'_>),
) -> Result<Vec<Generation>> {
    run(decoder, requests, config, Some(on_token))
}

/// One request's progress.
struct Row {
    prompt_ids: Vec<i64>,
    outliers: Vec<i64>,
    limit: usize,
    tokens: Vec<i64>,
    text: String,
    finish: Option<FinishReason>,
    /// With a capture: where the image tokens are, the ViT's scores, and
    /// the image attention of each token so far.
    analysis: Option<RowAnalysis>,
}

struct RowAnalysis {
    span: std::ops::Range<usize>,
    cls_attention: Option<Vec<f32>>,
    attention: Vec<Vec<f32>>,
}

/// Every request encoded: its row and both branches' inputs.
struct Prepared<S> {
    rows: Vec<Row>,
    full: BranchRows<S>,
    second: BranchRows<S>,
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
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let Prepared {
        mut rows,
        full,
        second,
    } = prepare(decoder, requests, config)?;
    let steps = rows.iter().map(|r| r.limit).max().unwrap_or(0);
    let room = steps.min(RESERVED_NEW_TOKENS) as i64;
    let (mut caches, mut logits) = BranchCaches::prefill(
        decoder,
        full,
        second,
        config.branches,
        room,
        config.attention.as_ref(),
    )?;
    let choice = match config.seed {
        None => TokenChoice::Greedy,
        Some(seed) => TokenChoice::sample_seeded(seed),
    };
    let mut sampler =
        Sampler::new(config.mode.contrast(), choice).with_processors(config.processors.clone());
    let stepper = Stepper {
        decoder,
        config,
        stop_ids: decoder.stop_ids(),
        decode_each_step: on_token.is_some() || !config.stop_strings.is_empty(),
    };
    for step in 0..steps {
        mark_length_limits(&mut rows);
        if rows.iter().all(|r| r.finish.is_some()) {
            break;
        }
        let ids =
            choose(&mut sampler, &logits, &rows, decoder.device()).map_err(|e| at_step(e, step))?;
        stepper.append(&mut rows, &ids, logits.attention.as_deref(), &mut on_token)?;
        if step + 1 == steps || rows.iter().all(|r| r.finish.is_some()) {
            break;
        }
        let ids = Tensor::f_from_slice(&ids)?.f_to_device(decoder.device())?;
        logits = caches.step(decoder, &ids)?;
    }
    rows.into_iter()
        .map(|r| stepper.finish(r))
        .collect::<Result<_>>()
}

/// Encodes every request's image once and builds its branches.
fn prepare<D: DamroDecoder + ?Sized>(
    decoder: &D,
    requests: &[Request],
    config: &GenerationConfig,
) -> Result<Prepared<RowStateOf<D>>> {
    let second_image = config.mode.second_image();
    let has_second = config.mode.has_second_branch();
    let n = requests.len();
    let mut prepared = Prepared {
        rows: Vec::with_capacity(n),
        full: BranchRows::with_capacity(n),
        second: BranchRows::with_capacity(n),
    };
    for (i, request) in requests.iter().enumerate() {
        let visual = decoder.encode_image(request, second_image)?;
        let branches = decoder.branch_embeds(request, &visual)?;
        let analysis = match config.attention {
            None => None,
            Some(_) => analysis_of(decoder, request, &branches)?,
        };
        let limit = config.limit.new_tokens(branches.prompt_ids.len());
        let longest = branches.full.embeds.size().get(1).copied().unwrap_or(0);
        check_context(decoder, i, longest as usize, limit)?;
        prepared
            .full
            .embeds
            .push(squeeze_row(&branches.full.embeds, "full branch")?);
        prepared.full.states.push(branches.full.state);
        match (has_second, branches.contrast) {
            (true, Some(b)) => {
                prepared
                    .second
                    .embeds
                    .push(squeeze_row(&b.embeds, "second branch")?);
                prepared.second.states.push(b.state);
            }
            (true, None) => {
                return Err(Error::invalid(
                    "decoder",
                    format!(
                        "request {i}: no second branch was built for the {} view",
                        config.mode.name()
                    ),
                ));
            }
            (false, _) => {}
        }
        prepared.rows.push(Row {
            limit,
            prompt_ids: branches.prompt_ids,
            outliers: visual.outlier_indices,
            tokens: Vec::new(),
            text: String::new(),
            finish: None,
            analysis,
        });
    }
    Ok(prepared)
}

/// The analysis inputs of one request, on the host.
fn analysis_of<D: DamroDecoder + ?Sized>(
    decoder: &D,
    request: &Request,
    branches: &crate::Branches<RowStateOf<D>>,
) -> Result<Option<RowAnalysis>> {
    let Some(inputs) = decoder.analysis_inputs(request, branches)? else {
        return Ok(None);
    };
    let cls_attention = match inputs.cls_attention {
        Some(t) => Some(Vec::<f32>::try_from(
            t.f_to_device(tch::Device::Cpu)?
                .f_to_kind(tch::Kind::Float)?
                .f_flatten(0, -1)?,
        )?),
        None => None,
    };
    Ok(Some(RowAnalysis {
        span: inputs.image_span,
        cls_attention,
        attention: Vec::new(),
    }))
}

/// The image part of one row's captured attention.
fn image_attention(row_attention: &Tensor, span: &std::ops::Range<usize>) -> Result<Vec<f32>> {
    let len = row_attention.size().first().copied().unwrap_or(0);
    if span.end as i64 > len || span.start > span.end {
        return Err(Error::invalid(
            "analysis image span",
            format!("{span:?} outside a row of {len} tokens"),
        ));
    }
    let slice = row_attention.f_narrow(0, span.start as i64, (span.end - span.start) as i64)?;
    Ok(Vec::<f32>::try_from(slice.f_to_kind(tch::Kind::Float)?)?)
}

/// Refuses a request whose prompt, or prompt plus token limit, exceeds the
/// model's context.
fn check_context<D: DamroDecoder + ?Sized>(
    decoder: &D,
    request: usize,
    prompt_len: usize,
    limit: usize,
) -> Result<()> {
    let Some(context) = decoder.context_length() else {
        return Ok(());
    };
    if prompt_len > context {
        return Err(Error::invalid(
            "prompt",
            format!(
                "request {request}: the prompt takes {prompt_len} tokens (image tokens included), more than the model's context of {context}"
            ),
        ));
    }
    if prompt_len.saturating_add(limit) > context {
        return Err(Error::invalid(
            "token limit",
            format!(
                "request {request}: {limit} new tokens after a {prompt_len}-token prompt exceed the model's context of {context} (at most {} fit)",
                context - prompt_len
            ),
        ));
    }
    Ok(())
}

fn at_step(error: Error, step: usize) -> Error {
    match error {
        Error::Sampler(e) => Error::invalid("logits", format!("at generation step {step}: {e}")),
        other => other,
    }
}

fn mark_length_limits(rows: &mut [Row]) {
    for row in rows.iter_mut() {
        if row.finish.is_none() && row.tokens.len() >= row.limit {
            row.finish = Some(FinishReason::Length);
        }
    }
}

/// The sampler's choice for every row, on the host.
fn choose(
    sampler: &mut Sampler,
    logits: &StepOut,
    rows: &[Row],
    device: tch::Device,
) -> Result<Vec<i64>> {
    let history = if sampler.processors().needs_history() {
        Some(history(rows, device)?)
    } else {
        None
    };
    let step_logits = match &logits.second {
        Some(second) => StepLogits::damro(&logits.full, second),
        None => StepLogits::plain(&logits.full),
    };
    let step_logits = match &history {
        Some(h) => step_logits.with_history(h),
        None => step_logits,
    };
    Ok(ids_to_vec(&sampler.step(step_logits)?)?)
}

/// What appending a step's tokens needs besides the rows.
struct Stepper<'a, D: ?Sized> {
    decoder: &'a D,
    config: &'a GenerationConfig,
    stop_ids: Vec<i64>,
    decode_each_step: bool,
}

impl<D: DamroDecoder + ?Sized> Stepper<'_, D> {
    /// Appends each unfinished row's token, streams it, and marks the rows
    /// that end here.
    fn append(
        &self,
        rows: &mut [Row],
        ids: &[i64],
        attention: Option<&[Tensor]>,
        on_token: &mut Option<&mut dyn FnMut(&TokenEvent<'_>)>,
    ) -> Result<()> {
        for (i, (row, &id)) in rows.iter_mut().zip(ids).enumerate() {
            if row.finish.is_some() {
                continue;
            }
            row.tokens.push(id);
            if let (Some(analysis), Some(rows_attention)) = (row.analysis.as_mut(), attention)
                && let Some(row_attention) = rows_attention.get(i)
            {
                let map = image_attention(row_attention, &analysis.span)?;
                analysis.attention.push(map);
            }
            if self.decode_each_step {
                let text = self.decoder.decode(&row.tokens)?;
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
            row.finish = self.finish_reason(row, id);
        }
        Ok(())
    }

    fn finish_reason(&self, row: &mut Row, id: i64) -> Option<FinishReason> {
        if self.stop_ids.contains(&id) {
            return Some(FinishReason::Eos);
        }
        let stop = self
            .config
            .stop_strings
            .iter()
            .filter_map(|s| row.text.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = stop {
            row.text.truncate(at);
            return Some(FinishReason::StopString(stop.clone()));
        }
        (row.tokens.len() >= row.limit).then_some(FinishReason::Length)
    }

    fn finish(&self, row: Row) -> Result<Generation> {
        let text = if self.decode_each_step {
            row.text
        } else {
            self.decoder.decode(&row.tokens)?
        };
        let (attention, cls_attention) = match row.analysis {
            Some(a) => (a.attention, a.cls_attention),
            None => (Vec::new(), None),
        };
        Ok(Generation {
            prompt_ids: row.prompt_ids,
            token_ids: row.tokens,
            text,
            outliers: row.outliers,
            finish: row.finish.unwrap_or(FinishReason::Length),
            attention,
            cls_attention,
        })
    }
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

//! Optional logits processors, off by default.
//!
//! The reference DAMRO (and plain) path applies none of these: it samples
//! `softmax(s)` of the masked contrastive scores directly (the authors ran
//! with temperature 1 and top-p 1). They are here for users who want them,
//! and each follows the HF transformers processor of the same name:
//! `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`,
//! `MinPLogitsWarper` (all with `min_tokens_to_keep = 1`) and
//! `RepetitionPenaltyLogitsProcessor`. Removed tokens get `-inf`.
//!
//! A [`LogitsProcessors`] list applies them in its order, after the DAMRO
//! mask and before the token choice. HF `generate` runs the repetition
//! penalty first, then temperature, top-k, top-p and min-p.

use crate::contrastive::check_logits;
use crate::{Error, Result};
use tch::{Kind, Tensor};

/// One logits processor. Values are validated when added to a
/// [`LogitsProcessors`] list (and by each function).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogitsProcessor {
    /// Divide the scores by `t` (`t > 0`, finite).
    Temperature(f64),
    /// Keep the `k` best scores (`k >= 1`; `k >= vocab` keeps all).
    TopK(usize),
    /// Keep the smallest set of best tokens whose probability reaches `p`
    /// (`0 < p <= 1`; `p = 1` keeps all).
    TopP(f64),
    /// Keep tokens whose probability is at least `p` times the best one
    /// (`0 <= p <= 1`).
    MinP(f64),
    /// HF's repetition penalty on the ids in the history (`penalty > 0`,
    /// finite): negative scores are multiplied by it, others divided.
    RepetitionPenalty(f64),
}

impl LogitsProcessor {
    /// Checks the processor's value against its range.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the parameter and its range.
    pub fn validate(&self) -> Result<()> {
        let (ok, name, value, expected) = match *self {
            LogitsProcessor::Temperature(t) => (
                t.is_finite() && t > 0.0,
                "temperature",
                t.to_string(),
                "a finite number > 0",
            ),
            LogitsProcessor::TopK(k) => (k >= 1, "top_k", k.to_string(), "an integer >= 1"),
            LogitsProcessor::TopP(p) => (
                p > 0.0 && p <= 1.0,
                "top_p",
                p.to_string(),
                "a number in (0, 1]",
            ),
            LogitsProcessor::MinP(p) => (
                (0.0..=1.0).contains(&p),
                "min_p",
                p.to_string(),
                "a number in [0, 1]",
            ),
            LogitsProcessor::RepetitionPenalty(r) => (
                r.is_finite() && r > 0.0,
                "repetition_penalty",
                r.to_string(),
                "a finite number > 0",
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name,
                value,
                expected,
            })
        }
    }

    /// Applies the processor and returns new scores (`scores` is untouched).
    ///
    /// # Shapes
    /// `scores`: `[batch, vocab]`; `history`: `[batch, seq]` int64 (only the
    /// repetition penalty reads it); result `[batch, vocab]`.
    ///
    /// # Errors
    /// Invalid values, shapes, or [`Error::MissingHistory`].
    pub fn apply(&self, scores: &Tensor, history: Option<&Tensor>) -> Result<Tensor> {
        match *self {
            LogitsProcessor::Temperature(t) => temperature(scores, t),
            LogitsProcessor::TopK(k) => top_k(scores, k),
            LogitsProcessor::TopP(p) => top_p(scores, p),
            LogitsProcessor::MinP(p) => min_p(scores, p),
            LogitsProcessor::RepetitionPenalty(r) => {
                repetition_penalty(scores, history.ok_or(Error::MissingHistory)?, r)
            }
        }
    }
}

/// An ordered, validated list of processors; empty by default (the
/// reference's behaviour).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogitsProcessors {
    list: Vec<LogitsProcessor>,
}

impl LogitsProcessors {
    /// Validates every processor.
    ///
    /// # Errors
    /// The first invalid processor's [`Error::InvalidParameter`].
    pub fn new(list: Vec<LogitsProcessor>) -> Result<Self> {
        list.iter().try_for_each(LogitsProcessor::validate)?;
        Ok(Self { list })
    }

    /// Appends one processor after validating it.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`].
    pub fn push(&mut self, processor: LogitsProcessor) -> Result<()> {
        processor.validate()?;
        self.list.push(processor);
        Ok(())
    }

    /// The processors, in order.
    pub fn as_slice(&self) -> &[LogitsProcessor] {
        &self.list
    }

    /// True when no processor is enabled.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// True when a processor needs the token history.
    pub fn needs_history(&self) -> bool {
        self.list
            .iter()
            .any(|p| matches!(p, LogitsProcessor::RepetitionPenalty(_)))
    }

    /// Applies the processors in order. With none, returns `scores` itself.
    ///
    /// # Shapes
    /// As [`LogitsProcessor::apply`].
    ///
    /// # Errors
    /// As [`LogitsProcessor::apply`].
    pub fn apply(&self, scores: Tensor, history: Option<&Tensor>) -> Result<Tensor> {
        self.list
            .iter()
            .try_fold(scores, |s, p| p.apply(&s, history))
    }
}

/// `scores / t`.
///
/// # Shapes
/// `scores`: `[batch, vocab]`; result likewise.
///
/// # Errors
/// [`Error::InvalidParameter`] for `t` outside `(0, inf)`; shape/type errors.
pub fn temperature(scores: &Tensor, t: f64) -> Result<Tensor> {
    LogitsProcessor::Temperature(t).validate()?;
    check_logits("scores", scores)?;
    Ok(scores.f_div_scalar(t)?)
}

/// Keeps the `k` highest scores of each row (ties with the k-th are kept).
///
/// # Shapes
/// `scores`: `[batch, vocab]`; result likewise.
///
/// # Errors
/// [`Error::InvalidParameter`] for `k = 0`; shape/type errors.
pub fn top_k(scores: &Tensor, k: usize) -> Result<Tensor> {
    LogitsProcessor::TopK(k).validate()?;
    let (_, vocab) = check_logits("scores", scores)?;
    let k = i64::try_from(k).unwrap_or(i64::MAX).min(vocab);
    if k == vocab {
        return Ok(scores.shallow_clone());
    }
    let (best, _) = scores.f_topk(k, -1, true, true)?;
    let kth = best.f_narrow(-1, k - 1, 1)?;
    let remove = scores.f_lt_tensor(&kth)?;
    Ok(scores.f_masked_fill(&remove, f64::NEG_INFINITY)?)
}

/// Nucleus filtering as HF's `TopPLogitsWarper`: sorts ascending, removes
/// tokens whose cumulative probability is `<= 1 - p`, always keeps the best.
///
/// # Shapes
/// `scores`: `[batch, vocab]`; result likewise.
///
/// # Errors
/// [`Error::InvalidParameter`] for `p` outside `(0, 1]`; shape/type errors.
pub fn top_p(scores: &Tensor, p: f64) -> Result<Tensor> {
    LogitsProcessor::TopP(p).validate()?;
    let (_, vocab) = check_logits("scores", scores)?;
    if p >= 1.0 {
        return Ok(scores.shallow_clone());
    }
    let (sorted, order) = scores.f_sort(-1, false)?;
    let cumulative = sorted
        .f_softmax(-1, None::<Kind>)?
        .f_cumsum(-1, None::<Kind>)?;
    let remove_sorted = cumulative.f_le(1.0 - p)?;
    // The best token always stays (HF's `min_tokens_to_keep = 1`).
    let _keep_best = remove_sorted.f_narrow(-1, vocab - 1, 1)?.f_fill_(0)?;
    let remove = remove_sorted.f_scatter(-1, &order, &remove_sorted)?;
    Ok(scores.f_masked_fill(&remove, f64::NEG_INFINITY)?)
}

/// Removes tokens whose probability is below `p` times the row's best.
///
/// # Shapes
/// `scores`: `[batch, vocab]`; result likewise.
///
/// # Errors
/// [`Error::InvalidParameter`] for `p` outside `[0, 1]`; shape/type errors.
pub fn min_p(scores: &Tensor, p: f64) -> Result<Tensor> {
    LogitsProcessor::MinP(p).validate()?;
    check_logits("scores", scores)?;
    if p == 0.0 {
        return Ok(scores.shallow_clone());
    }
    let probs = scores.f_softmax(-1, None::<Kind>)?;
    let threshold = probs.f_amax(-1, true)?.f_mul_scalar_(p)?;
    // With p <= 1 the best token is never below the threshold, so HF's
    // `min_tokens_to_keep = 1` guard needs no sort here.
    let remove = probs.f_lt_tensor(&threshold)?;
    Ok(scores.f_masked_fill(&remove, f64::NEG_INFINITY)?)
}

/// HF's repetition penalty: for every id in a row's history, a negative
/// score is multiplied by `penalty`, a non-negative one divided by it.
///
/// # Shapes
/// `scores`: `[batch, vocab]`; `history`: `[batch, seq]` int64 on the same
/// device, ids in `0..vocab`; result `[batch, vocab]`.
///
/// # Errors
/// [`Error::InvalidParameter`]; [`Error::Shape`], [`Error::Kind`] or
/// [`Error::Device`] for a mismatched history; libtorch's error for ids out
/// of range.
pub fn repetition_penalty(scores: &Tensor, history: &Tensor, penalty: f64) -> Result<Tensor> {
    LogitsProcessor::RepetitionPenalty(penalty).validate()?;
    let (batch, _) = check_logits("scores", scores)?;
    let (history_batch, seq) = match history.size()[..] {
        [b, s] => (b, s),
        _ => (-1, 0),
    };
    if history_batch != batch {
        return Err(Error::Shape {
            what: "history",
            shape: history.size(),
            expected: format!("[{batch}, seq]"),
        });
    }
    if history.kind() != Kind::Int64 {
        return Err(Error::Kind {
            what: "history",
            kind: history.kind(),
            expected: "int64",
        });
    }
    if history.device() != scores.device() {
        return Err(Error::Device {
            what: "history",
            found: history.device(),
            expected: scores.device(),
        });
    }
    if seq == 0 {
        return Ok(scores.shallow_clone());
    }
    let seen = scores.f_gather(-1, history, false)?;
    let penalised = seen
        .f_mul_scalar(penalty)?
        .f_where_self(&seen.f_lt(0.0)?, &seen.f_div_scalar(penalty)?)?;
    Ok(scores.f_scatter(-1, history, &penalised)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).view([1, -1])
    }

    fn to_vec(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&t.view([-1])).unwrap()
    }

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn validation_names_each_parameter() {
        for (p, name) in [
            (LogitsProcessor::Temperature(0.0), "temperature"),
            (LogitsProcessor::TopK(0), "top_k"),
            (LogitsProcessor::TopP(0.0), "top_p"),
            (LogitsProcessor::MinP(1.5), "min_p"),
            (
                LogitsProcessor::RepetitionPenalty(f64::NAN),
                "repetition_penalty",
            ),
        ] {
            match LogitsProcessors::new(vec![p]) {
                Err(Error::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{p:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn temperature_divides() {
        assert_eq!(
            to_vec(&temperature(&row(&[2.0, -4.0]), 2.0).unwrap()),
            [1.0, -2.0]
        );
    }

    #[test]
    fn top_k_keeps_the_k_best() {
        let s = row(&[1.0, 4.0, 3.0, 2.0]);
        assert_eq!(to_vec(&top_k(&s, 2).unwrap()), [NEG, 4.0, 3.0, NEG]);
        assert_eq!(to_vec(&top_k(&s, 9).unwrap()), [1.0, 4.0, 3.0, 2.0]);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // probabilities 0.5, 0.25, 0.125, 0.125
        let s = row(&[0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()]);
        let out = to_vec(&top_p(&s, 0.7).unwrap());
        assert_eq!(&out[..2], &to_vec(&s)[..2]);
        assert_eq!(&out[2..], [NEG, NEG]);
        // p small: only the best survives.
        let out = to_vec(&top_p(&s, 0.01).unwrap());
        assert_eq!(out[1..], [NEG, NEG, NEG]);
    }

    #[test]
    fn min_p_scales_with_the_best() {
        let s = row(&[0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()]);
        let out = to_vec(&min_p(&s, 0.4).unwrap());
        assert_eq!(out[2..], [NEG, NEG]);
        assert!(out[1].is_finite());
    }

    #[test]
    fn repetition_penalty_follows_hf() {
        let s = row(&[2.0, -2.0, 1.0]);
        let history = Tensor::from_slice(&[0i64, 1, 1]).view([1, 3]);
        let out = to_vec(&repetition_penalty(&s, &history, 2.0).unwrap());
        assert_eq!(out, [1.0, -4.0, 1.0]);
        let list = LogitsProcessors::new(vec![LogitsProcessor::RepetitionPenalty(2.0)]).unwrap();
        assert!(matches!(list.apply(s, None), Err(Error::MissingHistory)));
    }
}

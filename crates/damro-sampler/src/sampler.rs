//! [`Sampler`]: one decoding step from the branches' logits to token ids.

use crate::choice::FirstMax;
use crate::contrastive::StepConstants;
use crate::{Contrast, Error, LogitsProcessors, Result, TokenChoice};
use tch::Tensor;

/// The logits of one decoding step (the last position of each branch).
///
/// # Shapes
/// `logits`, `outlier_logits`: `[batch, vocab]`; `history`: `[batch, seq]`
/// int64, the ids so far (only a repetition penalty reads it).
#[derive(Debug, Clone, Copy)]
pub struct StepLogits<'a> {
    /// The full branch's logits.
    pub logits: &'a Tensor,
    /// The outlier branch's logits (DAMRO only).
    pub outlier_logits: Option<&'a Tensor>,
    /// The token history, for processors that need it.
    pub history: Option<&'a Tensor>,
}

impl<'a> StepLogits<'a> {
    /// Plain decoding: the full branch only.
    pub fn plain(logits: &'a Tensor) -> Self {
        Self {
            logits,
            outlier_logits: None,
            history: None,
        }
    }

    /// DAMRO decoding: both branches.
    pub fn damro(logits: &'a Tensor, outlier_logits: &'a Tensor) -> Self {
        Self {
            logits,
            outlier_logits: Some(outlier_logits),
            history: None,
        }
    }

    /// Adds the token history.
    pub fn with_history(self, history: &'a Tensor) -> Self {
        Self {
            history: Some(history),
            ..self
        }
    }
}

/// Contrast, processors and token choice, configured once and applied per step.
#[derive(Debug)]
pub struct Sampler {
    contrast: Contrast,
    processors: LogitsProcessors,
    choice: TokenChoice,
    /// Kept between steps so the greedy index needs no per-step setup.
    first_max: FirstMax,
    /// The DAMRO step's constants, built at the first step.
    constants: Option<StepConstants>,
}

impl Sampler {
    /// A sampler without logits processors (the reference's behaviour).
    pub fn new(contrast: Contrast, choice: TokenChoice) -> Self {
        Self {
            contrast,
            processors: LogitsProcessors::default(),
            choice,
            first_max: FirstMax::default(),
            constants: None,
        }
    }

    /// Replaces the (already validated) processor list.
    pub fn with_processors(self, processors: LogitsProcessors) -> Self {
        Self { processors, ..self }
    }

    /// Plain or DAMRO.
    pub fn contrast(&self) -> &Contrast {
        &self.contrast
    }

    /// The enabled processors.
    pub fn processors(&self) -> &LogitsProcessors {
        &self.processors
    }

    /// Greedy or seeded sampling.
    pub fn choice(&self) -> &TokenChoice {
        &self.choice
    }

    /// The final scores of a step: contrast and cutoff, then the processors.
    ///
    /// # Shapes
    /// See [`StepLogits`]; result `[batch, vocab]` f32 (f64 for f64 logits).
    ///
    /// # Errors
    /// As [`Contrast::scores`] and [`LogitsProcessors::apply`].
    pub fn scores(&self, step: StepLogits<'_>) -> Result<Tensor> {
        self.scores_with(step, None)
    }

    fn scores_with(
        &self,
        step: StepLogits<'_>,
        constants: Option<&StepConstants>,
    ) -> Result<Tensor> {
        if self.processors.needs_history() && step.history.is_none() {
            return Err(Error::MissingHistory);
        }
        let scores = self
            .contrast
            .scores_with(step.logits, step.outlier_logits, constants)?;
        self.processors.apply(scores, step.history)
    }

    /// One decoding step: the chosen id of each row, on the logits' device.
    ///
    /// A greedy step without processors on CPU logits (f32, or f16/bf16
    /// upcast as everywhere here) is computed on the host by a few passes
    /// over each row instead of a dozen libtorch kernels: the same ids and
    /// errors, for a fraction of the cost (`BENCHMARKS.md`, sampler step).
    ///
    /// # Shapes
    /// See [`StepLogits`]; result `[batch]` int64.
    ///
    /// # Errors
    /// As [`Sampler::scores`], and [`Error::NonFiniteLogits`] when either
    /// branch's logits hold NaN or an infinity.
    pub fn step(&mut self, step: StepLogits<'_>) -> Result<Tensor> {
        if matches!(self.choice, TokenChoice::Greedy)
            && self.processors.is_empty()
            && let Some(ids) =
                crate::cpu_greedy::greedy_ids(&self.contrast, step.logits, step.outlier_logits)?
        {
            return Ok(ids);
        }
        check_finite("logits", step.logits)?;
        if let Some(second) = step.outlier_logits {
            check_finite("outlier_logits", second)?;
        }
        if let (Contrast::Damro(params), None) = (&self.contrast, &self.constants) {
            self.constants = Some(StepConstants::new(params, tch::Kind::Float)?);
        }
        let scores = self.scores_with(step, self.constants.as_ref())?;
        self.choice.choose_with(&scores, &mut self.first_max)
    }
}

/// Rejects logits with NaN or infinite values (one reduction and one host
/// read per branch and step).
fn check_finite(what: &'static str, logits: &Tensor) -> Result<()> {
    let bad = logits
        .f_isfinite()?
        .f_logical_not()?
        .f_any()?
        .f_int64_value(&[])?;
    if bad != 0 {
        return Err(Error::NonFiniteLogits { what });
    }
    Ok(())
}

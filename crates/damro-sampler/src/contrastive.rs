//! The DAMRO contrastive step over a batch of (full, outlier) logits pairs.
//!
//! Follows the paper's Eq. (3)-(5) and the reference implementation (the
//! VCD-style `sample()` patch of HF transformers 4.43 in the authors' code):
//!
//! ```text
//! cutoff = ln(beta) + max(l)                       per row, f32
//! s      = (1 + alpha) * l - alpha * l_o
//! s[l < cutoff] = -inf                             strict: l == cutoff is kept
//! ```
//!
//! # Precision
//! Logits of any floating type are accepted. Half and bfloat16 logits are
//! upcast to f32 first and every step runs in f32 (f64 stays f64): the
//! reference runs on transformers 4.43, whose `LlamaForCausalLM` upcasts its
//! logits with `logits.float()`, so its DAMRO step always sees f32 logits,
//! even from an fp16 model. The scores returned are therefore f32 for f16,
//! bf16 and f32 input.
//!
//! The contrast is evaluated with the reference's roundings (`(1+alpha)*l`,
//! `alpha*l_o`, then the difference, each rounded to f32) rather than with a
//! fused `lerp`/FMA, and the mask, although built from float kernels for
//! speed (see [`damro_scores`]), sets exactly the reference's tokens to
//! `-inf`: for finite logits the scores equal the reference's bit for bit.

use crate::{DamroParams, Error, Result};
use tch::{Kind, Tensor};

/// Plain or contrastive decoding, through one API.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Contrast {
    /// Decode from the full branch's logits as they are (no cutoff, no
    /// second branch): the reference's plain greedy/sampling path.
    Plain,
    /// DAMRO (and every contrast view that has a second branch): contrast
    /// the full branch against the second branch and apply the adaptive
    /// plausibility cutoff.
    Damro(DamroParams),
    /// The cutoff alone, with no second branch (alpha = 0): the full
    /// branch's logits with every token below `ln(beta) + max(l)` set to
    /// `-inf`. The params' alpha is not used.
    CutoffOnly(DamroParams),
}

impl Contrast {
    /// The scores the token choice runs on.
    ///
    /// `Plain` returns the full logits (upcast to f32 when half precision;
    /// the same tensor otherwise) and requires `outlier_logits` to be `None`;
    /// `Damro` requires them and returns [`damro_scores`].
    ///
    /// # Shapes
    /// `logits`, `outlier_logits`: `[batch, vocab]`; result `[batch, vocab]`.
    ///
    /// # Errors
    /// [`Error::MissingOutlierLogits`], [`Error::UnexpectedOutlierLogits`],
    /// and the shape/type errors of [`damro_scores`].
    pub fn scores(&self, logits: &Tensor, outlier_logits: Option<&Tensor>) -> Result<Tensor> {
        self.scores_with(logits, outlier_logits, None)
    }

    pub(crate) fn scores_with(
        &self,
        logits: &Tensor,
        outlier_logits: Option<&Tensor>,
        constants: Option<&StepConstants>,
    ) -> Result<Tensor> {
        match (self, outlier_logits) {
            (Contrast::Plain, None) => {
                check_logits("logits", logits)?;
                upcast(logits)
            }
            (Contrast::Plain, Some(_)) => Err(Error::UnexpectedOutlierLogits),
            (Contrast::Damro(params), Some(outlier)) => {
                damro_scores_with(logits, outlier, params, constants)
            }
            (Contrast::Damro(_), None) => Err(Error::MissingOutlierLogits),
            (Contrast::CutoffOnly(params), None) => {
                let cutoff = plausibility_cutoff(logits, params)?;
                apply_cutoff(&upcast(logits)?, logits, &cutoff)
            }
            (Contrast::CutoffOnly(_), Some(_)) => Err(Error::UnexpectedOutlierLogits),
        }
    }
}

/// The adaptive plausibility cutoff `ln(beta) + max(l)`, per row.
///
/// `ln(beta)` is the f32 value held by `params`; the sum is one f32 (or f64)
/// addition, as in the reference.
///
/// # Shapes
/// `logits`: `[batch, vocab]`; result `[batch, 1]` (f32, or f64 for f64 logits).
///
/// # Errors
/// [`Error::Shape`] or [`Error::Kind`] for logits that are not a 2-D
/// floating-point tensor with a non-empty vocabulary.
pub fn plausibility_cutoff(logits: &Tensor, params: &DamroParams) -> Result<Tensor> {
    check_logits("logits", logits)?;
    let ln_beta =
        Tensor::f_scalar_tensor(f64::from(params.ln_beta()), (Kind::Float, tch::Device::Cpu))?;
    Ok(upcast(logits)?.f_amax(-1, true)?.f_add_(&ln_beta)?)
}

/// The contrastive scores `(1 + alpha) * l - alpha * l_o`, unmasked.
///
/// # Shapes
/// `logits`, `outlier_logits`: `[batch, vocab]`; result `[batch, vocab]`.
///
/// # Errors
/// [`Error::Shape`], [`Error::Kind`] or [`Error::Device`] when the two
/// branches do not match.
pub fn contrastive_logits(
    logits: &Tensor,
    outlier_logits: &Tensor,
    params: &DamroParams,
) -> Result<Tensor> {
    check_pair(logits, "outlier_logits", outlier_logits)?;
    let full = upcast(logits)?;
    let alpha = params.alpha();
    let outlier_term = outlier_logits.f_to_kind(full.kind())?.f_mul_scalar(alpha)?;
    Ok(full.f_mul_scalar(1.0 + alpha)?.f_sub_(&outlier_term)?)
}

/// Sets `scores` to `-inf` wherever `logits < cutoff` (strictly).
///
/// Same masking as [`damro_scores`] (see there for non-finite input).
///
/// Returns a new tensor (f32 for half-precision scores); `scores` is not modified.
///
/// # Shapes
/// `scores`, `logits`: `[batch, vocab]`; `cutoff`: `[batch, 1]`; result like `scores`.
///
/// # Errors
/// [`Error::Shape`], [`Error::Kind`] or [`Error::Device`] for mismatched inputs.
pub fn apply_cutoff(scores: &Tensor, logits: &Tensor, cutoff: &Tensor) -> Result<Tensor> {
    check_pair(logits, "scores", scores)?;
    let (batch, _) = dims2("logits", logits)?;
    if cutoff.size() != [batch, 1] {
        return Err(Error::Shape {
            what: "cutoff",
            shape: cutoff.size(),
            expected: format!("[{batch}, 1]"),
        });
    }
    if cutoff.device() != logits.device() {
        return Err(Error::Device {
            what: "cutoff",
            found: cutoff.device(),
            expected: logits.device(),
        });
    }
    let scores = upcast(scores)?;
    let mut owned = scores.f_empty_like()?;
    owned.f_copy_(&scores)?;
    let spare = owned.f_empty_like()?;
    let one = Tensor::f_scalar_tensor(1.0, (owned.kind(), tch::Device::Cpu))?;
    mask_unchecked(owned, spare, &upcast(logits)?, cutoff, &one)
}

/// The whole DAMRO scoring step in one call: cutoff, contrast and mask.
///
/// Nine cheap elementwise or reduction kernels (amax and the scalar add on
/// `[batch, 1]`; two scalings and a subtraction; the mask as a float
/// comparison, a scalar subtraction, one `addcdiv_` and a NaN guard), plus the
/// casts for half-precision input; every intermediate stays on the logits'
/// device. For finite logits the scores equal the reference's
/// `masked_fill` bit for bit; with non-finite logits a removed token is
/// still always `-inf`, and a NaN score becomes `-inf` (a NaN full-branch
/// logit therefore leaves its whole row `-inf`).
///
/// # Shapes
/// `logits`, `outlier_logits`: `[batch, vocab]`; result `[batch, vocab]`,
/// f32 (f64 for f64 logits), `-inf` outside the plausible set.
///
/// # Errors
/// [`Error::Shape`], [`Error::Kind`] or [`Error::Device`] when the two
/// branches are not matching 2-D floating-point tensors on one device.
pub fn damro_scores(
    logits: &Tensor,
    outlier_logits: &Tensor,
    params: &DamroParams,
) -> Result<Tensor> {
    damro_scores_with(logits, outlier_logits, params, None)
}

/// [`damro_scores`] with the step's constants built beforehand (they are
/// rebuilt when missing or of another type).
pub(crate) fn damro_scores_with(
    logits: &Tensor,
    outlier_logits: &Tensor,
    params: &DamroParams,
    constants: Option<&StepConstants>,
) -> Result<Tensor> {
    check_pair(logits, "outlier_logits", outlier_logits)?;
    let full = upcast(logits)?;
    let fresh;
    let constants = match constants {
        Some(c) if c.kind == full.kind() => c,
        _ => {
            fresh = StepConstants::new(params, full.kind())?;
            &fresh
        }
    };
    // As the reference: the row max plus a 0-dim f32 tensor holding ln(beta).
    let cutoff = full.f_amax(-1, true)?.f_add_(&constants.ln_beta)?;
    let outlier = match outlier_logits.kind() == full.kind() {
        true => outlier_logits.shallow_clone(),
        false => outlier_logits.f_to_kind(full.kind())?,
    };
    let outlier_term = outlier.f_mul(&constants.alpha)?;
    let scores = full
        .f_mul(&constants.one_plus_alpha)?
        .f_sub_(&outlier_term)?;
    mask_unchecked(scores, outlier_term, &full, &cutoff, &constants.one)
}

/// The step's constants as 0-dim CPU tensors of the scores' type (ln(beta)
/// always f32, as the reference has it).
///
/// Tensors rather than `Scalar`s: the arithmetic is the same (a scalar is
/// rounded to the tensor's type either way), but libtorch then skips
/// wrapping a fresh tensor per operation, and a CPU 0-dim operand is passed
/// to CUDA kernels by value. [`crate::Sampler`] builds them once.
#[derive(Debug)]
pub(crate) struct StepConstants {
    kind: Kind,
    alpha: Tensor,
    one_plus_alpha: Tensor,
    ln_beta: Tensor,
    one: Tensor,
}

impl StepConstants {
    pub(crate) fn new(params: &DamroParams, kind: Kind) -> Result<Self> {
        let scalar = |value: f64, kind: Kind| -> Result<Tensor> {
            Ok(Tensor::f_scalar_tensor(value, (kind, tch::Device::Cpu))?)
        };
        Ok(Self {
            kind,
            alpha: scalar(params.alpha(), kind)?,
            one_plus_alpha: scalar(1.0 + params.alpha(), kind)?,
            ln_beta: scalar(f64::from(params.ln_beta()), Kind::Float)?,
            one: scalar(1.0, kind)?,
        })
    }
}

/// Sets `scores` to `-inf` where `full < cutoff`, in place; returns it.
/// `spare` is a tensor shaped like `scores` whose content is not needed.
///
/// Written with float arithmetic instead of `masked_fill_(full < cutoff)`:
/// libtorch's CPU kernels that produce or consume boolean masks (`lt`,
/// `masked_fill_`, `where`) are several times slower than float ones, and
/// this is the hot path of every step. With `kept = (full >= cutoff)` as
/// 0/1 floats, `scores += (kept - 1) / kept` adds `0 / 1 = 0` to kept
/// tokens (leaving them bit for bit) and `-1 / 0 = -inf` to removed ones.
/// A removed token whose score is `+inf` or NaN (only possible with
/// non-finite logits) would give NaN, so NaN is finally mapped to `-inf`:
/// removed tokens are always `-inf`, and a kept token with a NaN score
/// becomes `-inf` too (the reference would keep the NaN); a NaN full-branch
/// logit, which makes the row's cutoff NaN, leaves the whole row `-inf`
/// (the reference would keep every token). For finite logits the result
/// equals `masked_fill_` exactly.
fn mask_unchecked(
    mut scores: Tensor,
    spare: Tensor,
    full: &Tensor,
    cutoff: &Tensor,
    one: &Tensor,
) -> Result<Tensor> {
    let kept = full.f_ge_tensor_out(&spare, cutoff)?;
    let minus_removed = kept.f_sub(one)?;
    let inf = f64::INFINITY;
    Ok(scores
        .f_addcdiv_(&minus_removed, &kept)?
        .f_nan_to_num_(-inf, inf, -inf)?)
}

/// Half and bfloat16 become f32; f32 and f64 are returned as they are.
pub(crate) fn upcast(t: &Tensor) -> Result<Tensor> {
    Ok(match t.kind() {
        Kind::Half | Kind::BFloat16 => t.f_to_kind(Kind::Float)?,
        _ => t.shallow_clone(),
    })
}

pub(crate) fn dims2(what: &'static str, t: &Tensor) -> Result<(i64, i64)> {
    match t.size()[..] {
        [batch, vocab] if vocab > 0 => Ok((batch, vocab)),
        _ => Err(Error::Shape {
            what,
            shape: t.size(),
            expected: "[batch, vocab] with vocab > 0".into(),
        }),
    }
}

pub(crate) fn check_logits(what: &'static str, t: &Tensor) -> Result<(i64, i64)> {
    match t.kind() {
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double => {}
        kind => {
            return Err(Error::Kind {
                what,
                kind,
                expected: "f16, bf16, f32 or f64",
            });
        }
    }
    dims2(what, t)
}

fn check_pair(logits: &Tensor, what: &'static str, other: &Tensor) -> Result<()> {
    let dims = check_logits("logits", logits)?;
    let other_dims = check_logits(what, other)?;
    if dims != other_dims {
        return Err(Error::Shape {
            what,
            shape: other.size(),
            expected: format!("the logits' shape {:?}", logits.size()),
        });
    }
    if other.device() != logits.device() {
        return Err(Error::Device {
            what,
            found: other.device(),
            expected: logits.device(),
        });
    }
    Ok(())
}

//! DAMRO's hyper-parameters, validated once, and the authors' presets.
//!
//! `alpha` weighs the contrast between the full branch and the
//! outlier-only branch, `beta` sets the adaptive plausibility cutoff
//! (paper, Sec. 3.3; the values come from the authors' run scripts).

use crate::{Error, Result};
use tch::{Kind, Tensor};

/// Validated DAMRO parameters: `alpha >= 0` (finite) and `0 < beta <= 1`.
///
/// Built with [`DamroParams::new`]; the fields are private so that a value of
/// this type is always valid. `ln(beta)` is computed once here, in f32, by
/// libtorch's CPU `log` (the reference's `torch.log(torch.tensor(beta))`),
/// so the cutoff matches the reference bit for bit; the platform's `logf`
/// differs from it in the last bit for some betas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DamroParams {
    alpha: f64,
    beta: f64,
    ln_beta: f32,
}

impl DamroParams {
    /// Validates `alpha` (finite, `>= 0`) and `beta` (`0 < beta <= 1`).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the parameter and its range.
    pub fn new(alpha: f64, beta: f64) -> Result<Self> {
        if !(alpha.is_finite() && alpha >= 0.0) {
            return Err(Error::InvalidParameter {
                name: "alpha",
                value: alpha.to_string(),
                expected: "a finite number >= 0",
            });
        }
        if !(beta > 0.0 && beta <= 1.0) {
            return Err(Error::InvalidParameter {
                name: "beta",
                value: beta.to_string(),
                expected: "a number in (0, 1]",
            });
        }
        // The reference: `torch.log(torch.tensor(beta))`, a 0-dim f32 CPU tensor.
        let ln_beta = Tensor::f_scalar_tensor(beta, (Kind::Float, tch::Device::Cpu))?
            .f_log()?
            .f_double_value(&[])? as f32;
        Ok(Self {
            alpha,
            beta,
            ln_beta,
        })
    }

    /// The contrast weight `alpha`.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The plausibility ratio `beta`.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// `ln(beta)` in f32, as the reference computes it.
    pub fn ln_beta(&self) -> f32 {
        self.ln_beta
    }
}

/// The authors' settings for one model and benchmark: the sampler's
/// parameters and the outlier selector's `k` (used by `damro-outlier`).
///
/// All were run with seed 42, batch 1 and plain multinomial sampling
/// (temperature 1, top-p 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DamroPreset {
    /// `alpha` and `beta`.
    pub params: DamroParams,
    /// How many outlier tokens form the contrastive branch's image part.
    pub outlier_k: usize,
}

impl DamroPreset {
    fn build(alpha: f64, beta: f64, outlier_k: usize) -> Result<Self> {
        Ok(Self {
            params: DamroParams::new(alpha, beta)?,
            outlier_k,
        })
    }

    /// LLaVA-1.5-7B on MME and the GPT-4V-aided evaluation: alpha 2, beta 0.1, k 10.
    ///
    /// # Errors
    /// Only if libtorch fails to compute `ln(beta)`.
    pub fn llava_1_5() -> Result<Self> {
        Self::build(2.0, 0.1, 10)
    }

    /// InstructBLIP-Vicuna-7B on POPE: alpha 0.5, beta 0.1, k 4.
    ///
    /// # Errors
    /// Only if libtorch fails to compute `ln(beta)`.
    pub fn instructblip_pope() -> Result<Self> {
        Self::build(0.5, 0.1, 4)
    }

    /// InstructBLIP-Vicuna-7B on CHAIR: alpha 1.5, beta 0.1, k 4.
    ///
    /// # Errors
    /// Only if libtorch fails to compute `ln(beta)`.
    pub fn instructblip_chair() -> Result<Self> {
        Self::build(1.5, 0.1, 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_valid_range() {
        assert!(DamroParams::new(0.0, 1.0).is_ok());
        assert!(DamroParams::new(2.0, 0.1).is_ok());
        assert!(DamroParams::new(1e6, f64::MIN_POSITIVE).is_ok());
    }

    #[test]
    fn rejects_bad_alpha_naming_it() {
        for alpha in [-0.1, f64::NAN, f64::INFINITY] {
            let err = DamroParams::new(alpha, 0.1).unwrap_err();
            assert!(
                matches!(err, Error::InvalidParameter { name: "alpha", .. }),
                "{err}"
            );
            assert!(err.to_string().contains(">= 0"), "{err}");
        }
    }

    #[test]
    fn rejects_bad_beta_naming_it() {
        for beta in [0.0, -0.5, 1.0001, f64::NAN, f64::INFINITY] {
            let err = DamroParams::new(1.0, beta).unwrap_err();
            assert!(
                matches!(err, Error::InvalidParameter { name: "beta", .. }),
                "{err}"
            );
            assert!(err.to_string().contains("(0, 1]"), "{err}");
        }
    }

    #[test]
    fn ln_beta_is_the_f32_log() {
        let p = DamroParams::new(1.0, 0.1).unwrap();
        assert!((f64::from(p.ln_beta()) - 0.1f64.ln()).abs() < 1e-6);
        assert_eq!(DamroParams::new(1.0, 1.0).unwrap().ln_beta(), 0.0);
    }

    #[test]
    fn presets_hold_the_authors_values() {
        let p = DamroPreset::llava_1_5().unwrap();
        assert_eq!(
            (p.params.alpha(), p.params.beta(), p.outlier_k),
            (2.0, 0.1, 10)
        );
        let p = DamroPreset::instructblip_pope().unwrap();
        assert_eq!(
            (p.params.alpha(), p.params.beta(), p.outlier_k),
            (0.5, 0.1, 4)
        );
        let p = DamroPreset::instructblip_chair().unwrap();
        assert_eq!(
            (p.params.alpha(), p.params.beta(), p.outlier_k),
            (1.5, 0.1, 4)
        );
    }
}

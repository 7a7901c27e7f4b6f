//! Parity checks of computed tensors against reference tensors, with one
//! definition of "close enough" for every parity test of the workspace (and
//! for a downstream model checked against its own reference).
//!
//! A bound in absolute terms breaks across CPU families: the same f32 code
//! on an AVX2 and an AVX-512/AMX machine runs different BLAS and attention
//! kernels that sum in different orders, and on values of magnitude ~80
//! (projector outputs) one f32 ulp is already ~8e-6. The bound is therefore
//! relative to the reference's scale: `max|a - r| <= rel * max(1, max|r|)`.

use std::fmt;

use tch::{Kind, Tensor};

use crate::{Error, Result};

/// How close a computed tensor must be to its reference: the max absolute
/// error over `max(1, max|reference|)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    relative: f64,
}

impl Tolerance {
    /// A bound of `relative * max(1, max|reference|)`.
    pub const fn relative(relative: f64) -> Self {
        Self { relative }
    }

    /// The relative bound.
    pub fn value(&self) -> f64 {
        self.relative
    }
}

/// The parity bound against a reference implementation (HF transformers):
/// `1e-4 * max(1, max|reference|)`.
pub const PARITY: Tolerance = Tolerance::relative(1e-4);

/// The bound for two computations of the same thing by this project (e.g.
/// cached step-by-step decoding against one full forward):
/// `1e-5 * max(1, max|reference|)`.
pub const SELF_CONSISTENT: Tolerance = Tolerance::relative(1e-5);

/// How far a tensor is from its reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Closeness {
    /// `max |actual - reference|`.
    pub max_abs: f64,
    /// `max(1, max |reference|)`.
    pub scale: f64,
    /// The allowed `max_abs` under the tolerance it was measured with.
    pub bound: f64,
}

impl Closeness {
    /// Measures `actual` against `reference` (any dtypes and devices; both
    /// are compared in f64 on the reference's device).
    ///
    /// # Shapes
    /// `actual` and `reference` of the same shape.
    ///
    /// # Errors
    /// [`Error::Shape`] when the shapes differ; libtorch errors.
    pub fn measure(actual: &Tensor, reference: &Tensor, tolerance: Tolerance) -> Result<Self> {
        if actual.size() != reference.size() {
            return Err(Error::shape(
                "tensor compared with its reference",
                format!("{:?}", reference.size()),
                actual.size(),
            ));
        }
        let r = reference.f_to_kind(Kind::Double)?;
        let a = actual
            .f_to_device(reference.device())?
            .f_to_kind(Kind::Double)?;
        let max_abs = if r.numel() == 0 {
            0.0
        } else {
            a.f_sub(&r)?.f_abs()?.f_max()?.f_double_value(&[])?
        };
        let peak = if r.numel() == 0 {
            0.0
        } else {
            r.f_abs()?.f_max()?.f_double_value(&[])?
        };
        let scale = peak.max(1.0);
        Ok(Self {
            max_abs,
            scale,
            bound: tolerance.relative * scale,
        })
    }

    /// Whether the error is within the bound (NaN never is).
    pub fn is_within(&self) -> bool {
        self.max_abs <= self.bound
    }

    /// The error relative to the scale, `max_abs / scale`.
    pub fn relative(&self) -> f64 {
        self.max_abs / self.scale
    }
}

impl fmt::Display for Closeness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max abs error {:e} (bound {:e}, reference scale {:.3})",
            self.max_abs, self.bound, self.scale
        )
    }
}

/// Asserts that `actual` is within `tolerance` of `reference` and returns
/// the error relative to the reference's scale. For tests: it panics with a
/// message naming `what` when the tensors differ in shape or are too far
/// apart.
///
/// # Panics
/// When the shapes differ or the error exceeds the bound.
pub fn assert_close(what: &str, actual: &Tensor, reference: &Tensor, tolerance: Tolerance) -> f64 {
    match Closeness::measure(actual, reference, tolerance) {
        Ok(c) if c.is_within() => c.relative(),
        Ok(c) => panic!("{what}: {c}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_scales_with_the_reference_and_never_goes_below_its_floor() {
        let reference = Tensor::from_slice(&[80.0f32, -2.0]);
        let actual = Tensor::from_slice(&[80.005f32, -2.0]);
        let c = Closeness::measure(&actual, &reference, PARITY).unwrap();
        assert!((c.scale - 80.0).abs() < 1e-12);
        assert!((c.bound - 8e-3).abs() < 1e-12);
        assert!(c.is_within(), "{c}");
        // Small references keep the absolute floor of 1.
        let reference = Tensor::from_slice(&[0.01f32]);
        let actual = Tensor::from_slice(&[0.01f32 + 2e-4]);
        let c = Closeness::measure(&actual, &reference, PARITY).unwrap();
        assert_eq!(c.scale, 1.0);
        assert!(!c.is_within(), "{c}");
    }

    #[test]
    fn nan_and_shape_mismatches_fail() {
        let reference = Tensor::from_slice(&[1.0f32, 2.0]);
        let nan = Tensor::from_slice(&[f32::NAN, 2.0]);
        assert!(
            !Closeness::measure(&nan, &reference, PARITY)
                .unwrap()
                .is_within()
        );
        let short = Tensor::from_slice(&[1.0f32]);
        assert!(Closeness::measure(&short, &reference, PARITY).is_err());
    }
}

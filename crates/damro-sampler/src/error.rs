//! The sampler's error type.

/// Everything that can go wrong in `damro-sampler`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hyper-parameter is outside its valid range.
    #[error("invalid parameter `{name}` = {value}: expected {expected}")]
    InvalidParameter {
        /// The parameter's name, as in the paper or in HF `generate`.
        name: &'static str,
        /// The rejected value.
        value: String,
        /// The valid range, in words.
        expected: &'static str,
    },
    /// A tensor does not have the shape the function documents.
    #[error("`{what}` has shape {shape:?}, expected {expected}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// Its actual shape.
        shape: Vec<i64>,
        /// The expected shape, in words.
        expected: String,
    },
    /// A tensor has an element type the function does not accept.
    #[error("`{what}` has element type {kind:?}, expected {expected}")]
    Kind {
        /// Which argument.
        what: &'static str,
        /// Its actual element type.
        kind: tch::Kind,
        /// The accepted element types, in words.
        expected: &'static str,
    },
    /// Two tensors that must live on the same device do not.
    #[error("`{what}` is on {found:?} but the logits are on {expected:?}")]
    Device {
        /// Which argument.
        what: &'static str,
        /// Its device.
        found: tch::Device,
        /// The logits' device.
        expected: tch::Device,
    },
    /// DAMRO decoding was asked for without the outlier branch's logits.
    #[error("DAMRO decoding needs the outlier branch's logits, none were given")]
    MissingOutlierLogits,
    /// Plain decoding was given outlier logits (it would silently ignore them).
    #[error(
        "a contrast without a second branch (plain or cutoff-only) was given second-branch logits; use `Contrast::Damro` or drop them"
    )]
    UnexpectedOutlierLogits,
    /// Logits hold NaN or infinite values (e.g. a broken checkpoint or an
    /// f16 overflow): no token can be chosen from them.
    #[error("`{what}` hold NaN or infinite values")]
    NonFiniteLogits {
        /// Which branch's logits.
        what: &'static str,
    },
    /// A repetition penalty is enabled but no token history was given.
    #[error("the repetition penalty needs the token history ([batch, seq] int64 ids)")]
    MissingHistory,
    /// An error reported by libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

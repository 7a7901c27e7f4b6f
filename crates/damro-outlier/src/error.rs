//! The outlier crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `damro-outlier`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `k` is outside `1..=patches`.
    #[error("invalid k = {k}: expected 1 <= k <= {patches} (the number of patches)")]
    InvalidK {
        /// The requested number of outliers.
        k: usize,
        /// The number of patches in the scores.
        patches: i64,
    },
    /// A parameter other than `k` is outside its range.
    #[error("invalid parameter `{name}` = {value}: expected {expected}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// The rejected value.
        value: String,
        /// The valid range, in words.
        expected: &'static str,
    },
    /// A tensor does not have the documented shape.
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
        /// The accepted types, in words.
        expected: &'static str,
    },
    /// Two tensors that must share a device do not.
    #[error("`{what}` is on {found:?}, expected {expected:?}")]
    Device {
        /// Which argument.
        what: &'static str,
        /// Its device.
        found: tch::Device,
        /// The device of the other input.
        expected: tch::Device,
    },
    /// A patch index is outside `0..patches`.
    #[error("patch index {index} is outside 0..{patches}")]
    IndexOutOfRange {
        /// The offending index.
        index: i64,
        /// The number of patches.
        patches: i64,
    },
    /// Scores contain NaN or infinity where finite values are needed.
    #[error("`{what}` contains a non-finite value")]
    NonFinite {
        /// Which argument.
        what: &'static str,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Encoding or decoding an image failed.
    #[error("{path}: {source}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: image::ImageError,
    },
    /// An error reported by libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

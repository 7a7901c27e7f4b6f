//! Errors of the vision crate.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong while loading or running a vision model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a checkpoint or a JSON file, or a shared layer, failed.
    #[error(transparent)]
    Nn(#[from] damro_nn::Error),
    /// A config field has a value the model cannot use.
    #[error("invalid config field `{field}`: {reason}")]
    Config {
        /// The field's path in `config.json` (`vision_config.patch_size`).
        field: String,
        /// What is wrong with its value and what was expected.
        reason: String,
    },
    /// An argument (pixel tensor, token ids, requested layer) does not fit
    /// the model.
    #[error("{what}: expected {expected}, got {got}")]
    Input {
        /// The argument that was checked.
        what: String,
        /// What it should have been (shape, range, ...).
        expected: String,
        /// What it was.
        got: String,
    },
    /// An image could not be read or preprocessed.
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),
    /// A tokenizer file could not be loaded or used.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file involved.
        path: PathBuf,
        /// Why loading or using it failed.
        reason: String,
    },
    /// An error reported by libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl Error {
    /// Shorthand for [`Error::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Input`].
    pub fn input(
        what: impl Into<String>,
        expected: impl std::fmt::Display,
        got: impl std::fmt::Debug,
    ) -> Self {
        Error::Input {
            what: what.into(),
            expected: expected.to_string(),
            got: format!("{got:?}"),
        }
    }
}

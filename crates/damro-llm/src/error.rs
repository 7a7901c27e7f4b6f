//! Errors of the LLM crate.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong while loading or running the language model, its cache,
/// its tokenizer or a prompt template.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Checkpoint loading or a shared layer failed.
    #[error(transparent)]
    Nn(#[from] damro_nn::Error),
    /// A config field has a value the model cannot use.
    #[error("invalid config field `{field}`: {reason}")]
    Config {
        /// The field's name as written in `config.json` (`rope_scaling.factor`,
        /// `text_config`).
        field: String,
        /// What is wrong with its value and what was expected.
        reason: String,
    },
    /// A tensor argument has the wrong shape, dtype or device.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        /// The tensor or argument that was checked.
        what: String,
        /// The shape, dtype or device it should have had.
        expected: String,
        /// What it had (`Debug` form).
        got: String,
    },
    /// A KV-cache operation was asked for something the cache cannot do.
    #[error("KV cache: {0}")]
    Cache(String),
    /// A tokenizer file is missing, invalid, or encoding/decoding failed.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file (`tokenizer.json`, `tokenizer_config.json`, ...)
        /// involved.
        path: PathBuf,
        /// Why reading it, or encoding/decoding with it, failed.
        reason: String,
    },
    /// An attention capture that does not fit the model.
    #[error("attention capture: {0}")]
    Capture(String),
    /// A prompt template name is not known.
    #[error("unknown prompt template `{0}` (expected raw, llava_v1 or instructblip)")]
    UnknownTemplate(String),
    /// An error reported by libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl Error {
    /// Shorthand for [`Error::Config`].
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Shape`].
    pub(crate) fn shape(
        what: impl Into<String>,
        expected: impl std::fmt::Display,
        got: impl std::fmt::Debug,
    ) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.to_string(),
            got: format!("{got:?}"),
        }
    }
}

//! Errors of the shared building blocks.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong while reading a checkpoint or running a module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON or does not have the expected fields.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file is truncated or its header is corrupt.
    #[error("invalid safetensors file {path}: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    /// The directory holds neither `model.safetensors` nor an index.
    #[error(
        "no weights in {dir}: expected model.safetensors or model.safetensors.index.json with its shards"
    )]
    NoWeights { dir: PathBuf },
    /// `model.safetensors.index.json` names a shard that is not there.
    #[error("shard {shard} named by {index} is missing")]
    ShardMissing { index: PathBuf, shard: PathBuf },
    /// `model.safetensors.index.json` maps tensors to a shard that lacks them.
    #[error("{index} maps {} tensor(s) to shards that do not hold them: {}", names.len(), names.join(", "))]
    IndexNamesAbsent { index: PathBuf, names: Vec<String> },
    /// Two names in the checkpoint map to the same canonical name.
    #[error("tensors {first} and {second} both map to {canonical}")]
    DuplicateTensor {
        canonical: String,
        first: String,
        second: String,
    },
    /// Missing, mis-shaped, mis-typed or unexpected tensors, all at once.
    #[error("checkpoint {dir} does not match the model:\n{}", problems.join("\n"))]
    WeightsMismatch { dir: PathBuf, problems: Vec<String> },
    /// A config field has a value the model cannot use.
    #[error("invalid config field `{field}`: {reason}")]
    Config { field: String, reason: String },
    /// A tensor argument has the wrong shape or dtype.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        what: String,
        expected: String,
        got: String,
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

    /// Shorthand for [`Error::Shape`].
    pub fn shape(
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

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
        /// The file that could not be read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON or does not have the expected fields.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The JSON file (`config.json`, an index, ...).
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file is truncated or its header is corrupt.
    #[error("invalid safetensors file {path}: {reason}")]
    Safetensors {
        /// The `.safetensors` file.
        path: PathBuf,
        /// What is wrong with its header or its size.
        reason: String,
    },
    /// The directory holds neither `model.safetensors` nor an index.
    #[error(
        "no weights in {dir}: expected model.safetensors or model.safetensors.index.json with its shards"
    )]
    NoWeights {
        /// The model directory that was searched.
        dir: PathBuf,
    },
    /// `model.safetensors.index.json` names a shard that is not there.
    #[error("shard {shard} named by {index} is missing")]
    ShardMissing {
        /// The `model.safetensors.index.json` naming the shard.
        index: PathBuf,
        /// The shard file it names that does not exist.
        shard: PathBuf,
    },
    /// `model.safetensors.index.json` names a shard by something other than
    /// a plain file name in the model directory.
    #[error("{index} names shard `{shard}`, which is not a plain file name in the model directory")]
    BadShardName {
        /// The index file.
        index: PathBuf,
        /// The shard name as written.
        shard: String,
    },
    /// `model.safetensors.index.json` maps tensors to a shard that lacks them.
    #[error("{index} maps {} tensor(s) to shards that do not hold them: {}", names.len(), names.join(", "))]
    IndexNamesAbsent {
        /// The `model.safetensors.index.json` holding the mapping.
        index: PathBuf,
        /// The tensor names its shards do not hold.
        names: Vec<String>,
    },
    /// Two names in the checkpoint map to the same canonical name.
    #[error("tensors {first} and {second} both map to {canonical}")]
    DuplicateTensor {
        /// The canonical (hub-layout) name both map to.
        canonical: String,
        /// The first name as found on disk.
        first: String,
        /// The second name as found on disk.
        second: String,
    },
    /// Missing, mis-shaped, mis-typed or unexpected tensors, all at once.
    #[error("checkpoint {dir} does not match the model:\n{}", problems.join("\n"))]
    WeightsMismatch {
        /// The checkpoint directory.
        dir: PathBuf,
        /// One line per problem tensor, naming it and what was expected.
        problems: Vec<String>,
    },
    /// Sizes a config states exceed the [`crate::limits`] or do not match
    /// the tensors of its checkpoint, all at once (checked before a model
    /// is built).
    #[error("sizes in {file} do not fit the limits or the checkpoint:\n{}", problems.join("\n"))]
    ConfigSizes {
        /// The config file (`config.json`).
        file: PathBuf,
        /// One line per field: its value and the limit or tensor it fails.
        problems: Vec<String>,
    },
    /// A config field has a value the model cannot use.
    #[error("invalid config field `{field}`: {reason}")]
    Config {
        /// The field's name as written in the config file.
        field: String,
        /// What is wrong with its value and what was expected.
        reason: String,
    },
    /// A tensor argument has the wrong shape or dtype.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        /// The tensor or argument that was checked.
        what: String,
        /// The shape or dtype it should have had.
        expected: String,
        /// What it had.
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

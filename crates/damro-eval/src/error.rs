//! The evaluation crate's error type.
//!
//! Only problems that stop a whole operation are errors: an input file that
//! cannot be read, an answers file another runner holds, a shard spec out of
//! range, an incomplete merge. A bad *record* (a malformed line, an unknown
//! label, a missing image, a failed answer) is not an error: it is reported as
//! a [`BadRecord`](crate::BadRecord) and the run goes on.

use std::path::PathBuf;

use crate::merge::MergeMismatch;

/// Everything that can stop an operation in `damro-eval`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading, writing, truncating or locking a file failed.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        /// What was being done ("reading", "appending to", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A whole-file JSON document (COCO annotations, a JSON captions array)
    /// does not parse or lacks a required field.
    #[error("parsing `{}`: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// Serialising a record or a report failed.
    #[error("serialising {what}: {source}")]
    Serialize {
        /// What was being serialised.
        what: &'static str,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A `--shard i/N` value is not of that form or `i >= N` / `N == 0`.
    #[error("invalid shard `{spec}`: {reason} (expected `i/N` with 0 <= i < N, e.g. `0/4`)")]
    InvalidShard {
        /// The rejected text.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A named choice (a scoring rule, ...) is not one of the known values.
    #[error("unknown {what} `{value}` (expected {expected})")]
    InvalidChoice {
        /// What was being chosen.
        what: &'static str,
        /// The rejected text.
        value: String,
        /// The accepted values, in words.
        expected: &'static str,
    },
    /// `--shard auto` found no usable shard in the environment.
    #[error("--shard auto: {0}")]
    ShardEnv(#[from] crate::shard::ShardEnvError),
    /// Another process holds the lock on this answers file (two runners
    /// would interleave and duplicate records).
    #[error("answers file `{}` is locked by another run", path.display())]
    AnswersLocked {
        /// The answers file.
        path: PathBuf,
    },
    /// A COCO annotation refers to a category id that its file does not list.
    #[error("`{}`: annotation refers to unknown category id {category_id}", path.display())]
    UnknownCategoryId {
        /// The instances file.
        path: PathBuf,
        /// The unknown id.
        category_id: u64,
    },
    /// A COCO category name is not an entry of the synonyms file, so it has
    /// no canonical object (the standard script fails here too).
    #[error("`{}`: category `{name}` is not in the synonyms file", path.display())]
    CategoryNotInSynonyms {
        /// The instances file.
        path: PathBuf,
        /// The category name.
        name: String,
    },
    /// The file given as an answers file to append to is something else (a
    /// question file, binary data); nothing was written to it.
    #[error("`{}` is not an answers file: {reason}; nothing was written to it", path.display())]
    NotAnswersFile {
        /// The file.
        path: PathBuf,
        /// What it looks like instead.
        reason: String,
    },
    /// An MME input (a parquet shard, the image cache) is not usable as a
    /// whole.
    #[error("MME input `{}`: {reason}", path.display())]
    MmeInput {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong, and what was expected.
        reason: String,
    },
    /// A parquet file could not be decoded.
    #[error("reading parquet `{}`: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: parquet::errors::ParquetError,
    },
    /// The inputs of a comparison do not line up (e.g. a method without one
    /// answers file per split).
    #[error("comparison: {0}")]
    Comparison(String),
    /// The synonyms file has no entries.
    #[error("synonyms file `{}` has no entries", path.display())]
    EmptySynonyms {
        /// The synonyms file.
        path: PathBuf,
    },
    /// The shards' answers do not cover the questions exactly once.
    #[error("{0}")]
    Merge(Box<MergeMismatch>),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

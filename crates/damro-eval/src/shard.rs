//! Deterministic sharding of a question file over N processes.
//!
//! # The rule
//! Shard `i/N` (0-based: `0 <= i < N`) owns the records whose **position**
//! `p` satisfies `p % N == i`, where `p` is the record's 0-based line index
//! in the question file, counting every line (blank and malformed ones
//! included). Line `k` of the file is therefore always in the same shard,
//! whatever else is wrong with the file, and shards differ in size by at
//! most one line. Every process must read the same question file; the merge
//! step ([`crate::merge`]) checks the result against it.
//!
//! The index is 0-based so it can be a Slurm `SLURM_ARRAY_TASK_ID` of an
//! array `0-(N-1)` or a Kubernetes `JOB_COMPLETION_INDEX` as is.
//!
//! # `--shard auto`
//! [`Shard::from_env`] (and [`ShardSpec::Auto`]) read the shard from the
//! scheduler's environment:
//! - **Slurm job arrays**: index = `SLURM_ARRAY_TASK_ID` −
//!   `SLURM_ARRAY_TASK_MIN` (0 when unset), count = `SLURM_ARRAY_TASK_COUNT`
//!   (or, when unset, as for Kubernetes). An array with a step or a list
//!   with gaps (`--array=0-15:4`, `--array=1,5`) gives indices that are not
//!   `0..count` and is refused with [`ShardEnvError::IndexOutOfRange`].
//! - **Kubernetes Indexed Jobs**: index = `JOB_COMPLETION_INDEX`, count =
//!   the caller's `count` (e.g. `--shards N`) or `DAMRO_SHARD_COUNT`.
//!
//! Slurm is tried first. When a count is given both by the caller and by the
//! environment, they must agree.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::{Error, Result};

/// One part of a split run: `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    index: usize,
    count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self::ALL
    }
}

impl Shard {
    /// The whole file in one shard (`0/1`).
    pub const ALL: Self = Self { index: 0, count: 1 };

    /// Shard `index` of `count`; fails unless `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 {
            return Err(Error::InvalidShard {
                spec: format!("{index}/{count}"),
                reason: "the shard count is 0",
            });
        }
        if index >= count {
            return Err(Error::InvalidShard {
                spec: format!("{index}/{count}"),
                reason: "the index is not below the count",
            });
        }
        Ok(Self { index, count })
    }

    /// This shard's 0-based index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The number of shards.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether the record at 0-based `position` belongs to this shard.
    pub fn contains(&self, position: usize) -> bool {
        position % self.count == self.index
    }

    /// All `count` shards, in index order.
    pub fn all_of(count: usize) -> Result<Vec<Self>> {
        (0..count.max(1)).map(|i| Self::new(i, count)).collect()
    }

    /// A conventional per-shard file name next to `base`:
    /// `answers.jsonl` becomes `answers.shard-2-of-4.jsonl`; with one shard
    /// `base` is returned unchanged.
    pub fn file_name(&self, base: &Path) -> PathBuf {
        if self.count == 1 {
            return base.to_path_buf();
        }
        let stem = base
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match base.extension() {
            Some(ext) => format!(
                "{stem}.shard-{}-of-{}.{}",
                self.index,
                self.count,
                ext.to_string_lossy()
            ),
            None => format!("{stem}.shard-{}-of-{}", self.index, self.count),
        };
        base.with_file_name(name)
    }
}

/// Environment variables that [`Shard::from_env`] reads.
pub mod env_vars {
    /// Slurm: this task's array index.
    pub const SLURM_ID: &str = "SLURM_ARRAY_TASK_ID";
    /// Slurm: the number of tasks in the array.
    pub const SLURM_COUNT: &str = "SLURM_ARRAY_TASK_COUNT";
    /// Slurm: the array's lowest index.
    pub const SLURM_MIN: &str = "SLURM_ARRAY_TASK_MIN";
    /// Kubernetes Indexed Job: this pod's completion index.
    pub const K8S_INDEX: &str = "JOB_COMPLETION_INDEX";
    /// The shard count when the scheduler does not give one.
    pub const COUNT: &str = "DAMRO_SHARD_COUNT";
}

/// Why [`Shard::from_env`] could not tell the shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardEnvError {
    /// Neither scheduler's index variable is set.
    #[error(
        "no shard in the environment: neither `SLURM_ARRAY_TASK_ID` (a Slurm job array) nor `JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job) is set; pass `--shard i/N` instead"
    )]
    NotSet,
    /// A variable (or the count argument) is not an integer.
    #[error("`{var}` is {value:?}, expected a non-negative integer")]
    NotANumber {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A variable is a negative integer.
    #[error("`{var}` is {value}, expected a non-negative integer")]
    Negative {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: i64,
    },
    /// `SLURM_ARRAY_TASK_ID` is below `SLURM_ARRAY_TASK_MIN`.
    #[error("`SLURM_ARRAY_TASK_ID` {id} is below `SLURM_ARRAY_TASK_MIN` {min}")]
    BelowMin {
        /// The task id.
        id: u64,
        /// The array's lowest id.
        min: u64,
    },
    /// An index but no count: a Kubernetes job without `--shards N` or
    /// `DAMRO_SHARD_COUNT`.
    #[error(
        "`{index_var}` is set but the shard count is not: pass the count (e.g. `--shards N`) or set `DAMRO_SHARD_COUNT`"
    )]
    MissingCount {
        /// The index variable that was found.
        index_var: &'static str,
    },
    /// The count is 0.
    #[error("the shard count from {from} is 0")]
    ZeroCount {
        /// Where the count came from (a variable or "the count argument").
        from: &'static str,
    },
    /// Two sources give different counts.
    #[error("the shard count is {first} from {first_from} but {second} from {second_from}")]
    CountMismatch {
        /// The first count.
        first: u64,
        /// Its source.
        first_from: &'static str,
        /// The other count.
        second: u64,
        /// Its source.
        second_from: &'static str,
    },
    /// The index is not below the count.
    #[error("shard index {index} (from `{index_var}`) is not below the shard count {count}")]
    IndexOutOfRange {
        /// The index.
        index: u64,
        /// The index variable.
        index_var: &'static str,
        /// The count.
        count: u64,
    },
}

/// What the caller passes for the count when reading the shard from the
/// environment.
const COUNT_ARGUMENT: &str = "the count argument";

/// Reads a non-negative integer variable; `Ok(None)` when unset.
fn env_number(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> std::result::Result<Option<u64>, ShardEnvError> {
    let Some(value) = lookup(var) else {
        return Ok(None);
    };
    let parsed: i64 = value
        .trim()
        .parse()
        .map_err(|_| ShardEnvError::NotANumber {
            var,
            value: value.clone(),
        })?;
    u64::try_from(parsed)
        .map(Some)
        .map_err(|_| ShardEnvError::Negative { var, value: parsed })
}

/// The one count the given sources agree on (`None` if none is given).
fn agreed_count(
    sources: &[(Option<u64>, &'static str)],
) -> std::result::Result<Option<(u64, &'static str)>, ShardEnvError> {
    let mut found: Option<(u64, &'static str)> = None;
    for &(value, from) in sources {
        let Some(value) = value else { continue };
        if value == 0 {
            return Err(ShardEnvError::ZeroCount { from });
        }
        match found {
            Some((first, first_from)) if first != value => {
                return Err(ShardEnvError::CountMismatch {
                    first,
                    first_from,
                    second: value,
                    second_from: from,
                });
            }
            Some(_) => {}
            None => found = Some((value, from)),
        }
    }
    Ok(found)
}

impl Shard {
    /// The shard of this process from a Slurm job array or a Kubernetes
    /// Indexed Job (see the module docs). `lookup` reads a variable (pass
    /// `|k| std::env::var(k).ok()`, or a map in tests); `count` is the
    /// caller's shard count, if it has one.
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
        count: Option<usize>,
    ) -> std::result::Result<Self, ShardEnvError> {
        use env_vars::*;
        let given = (count.map(|c| c as u64), COUNT_ARGUMENT);
        let from_var = (env_number(&lookup, COUNT)?, COUNT);
        let (index, index_var, count) = if let Some(id) = env_number(&lookup, SLURM_ID)? {
            let min = env_number(&lookup, SLURM_MIN)?.unwrap_or(0);
            let index = id
                .checked_sub(min)
                .ok_or(ShardEnvError::BelowMin { id, min })?;
            let slurm = (env_number(&lookup, SLURM_COUNT)?, SLURM_COUNT);
            (index, SLURM_ID, agreed_count(&[slurm, given, from_var])?)
        } else if let Some(index) = env_number(&lookup, K8S_INDEX)? {
            (index, K8S_INDEX, agreed_count(&[given, from_var])?)
        } else {
            return Err(ShardEnvError::NotSet);
        };
        let (count, _) = count.ok_or(ShardEnvError::MissingCount { index_var })?;
        if index >= count {
            return Err(ShardEnvError::IndexOutOfRange {
                index,
                index_var,
                count,
            });
        }
        Ok(Self {
            index: index as usize,
            count: count as usize,
        })
    }

    /// [`Shard::from_env`] over this process's environment.
    pub fn from_process_env(count: Option<usize>) -> std::result::Result<Self, ShardEnvError> {
        Self::from_env(|key| std::env::var(key).ok(), count)
    }
}

/// A `--shard` value: `i/N`, or `auto` to read it from the scheduler's
/// environment ([`Shard::from_env`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardSpec {
    /// A fixed shard.
    Fixed(Shard),
    /// From the environment.
    Auto,
}

impl ShardSpec {
    /// The shard: the fixed one, or the one the environment gives (with
    /// `lookup` and `count` as in [`Shard::from_env`]).
    pub fn resolve(
        self,
        lookup: impl Fn(&str) -> Option<String>,
        count: Option<usize>,
    ) -> Result<Shard> {
        match self {
            Self::Fixed(shard) => Ok(shard),
            Self::Auto => Ok(Shard::from_env(lookup, count)?),
        }
    }
}

impl FromStr for ShardSpec {
    type Err = Error;

    /// Parses `auto` (letter case ignored) or `i/N`.
    fn from_str(spec: &str) -> Result<Self> {
        if spec.trim().eq_ignore_ascii_case("auto") {
            Ok(Self::Auto)
        } else {
            spec.parse().map(Self::Fixed)
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = Error;

    /// Parses `i/N`, e.g. `0/4`.
    fn from_str(spec: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidShard {
            spec: spec.to_owned(),
            reason,
        };
        let (index, count) = spec
            .trim()
            .split_once('/')
            .ok_or_else(|| invalid("no `/`"))?;
        let index = index
            .trim()
            .parse()
            .map_err(|_| invalid("the index is not a non-negative integer"))?;
        let count = count
            .trim()
            .parse()
            .map_err(|_| invalid("the count is not a non-negative integer"))?;
        Self::new(index, count).map_err(|_| {
            invalid(if count == 0 {
                "the shard count is 0"
            } else {
                "the index is not below the count"
            })
        })
    }
}

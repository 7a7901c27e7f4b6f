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

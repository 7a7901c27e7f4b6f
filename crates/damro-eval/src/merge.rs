//! Merging the answers files of a sharded run, with a check that every
//! question is answered exactly once.
//!
//! [`merge_answers`] reads every shard's file, keys each parsed line by its
//! `question_id`, and compares the union with the expected ids (normally
//! [`QuestionSet::ids`](crate::pope::QuestionSet::ids)). Missing ids,
//! ids answered more than once (in one file or across files) and ids that
//! are not expected are all listed in one [`Error::Merge`]; nothing is
//! written then. Otherwise the records are written in question-file order,
//! each line exactly as it was in its shard file, to a temporary file that
//! is renamed onto the output (so a crash never leaves half a merge).
//!
//! Lines that do not parse are not fatal (a resumed run leaves an
//! unparseable line in place when it redoes that question): they are listed
//! in [`MergeReport::malformed`] and left out of the output.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::jsonl;
use crate::{BadRecord, Error, QuestionId, Result};

/// Where an answer line is: file and 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The shard file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Why a merge was refused: the shards do not cover the questions exactly
/// once. Every list is in a deterministic order (question-file order for
/// missing and duplicated ids, file then line order for unexpected ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeMismatch {
    /// Expected ids with no answer in any shard.
    pub missing: Vec<QuestionId>,
    /// Ids answered more than once, with every place they occur.
    pub duplicates: Vec<(QuestionId, Vec<Place>)>,
    /// Answers to ids that are not expected.
    pub unexpected: Vec<(QuestionId, Place)>,
}

impl fmt::Display for MergeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 10;
        write!(
            f,
            "shards do not answer every question exactly once: {} missing, {} duplicated, {} unexpected",
            self.missing.len(),
            self.duplicates.len(),
            self.unexpected.len()
        )?;
        if !self.missing.is_empty() {
            let ids: Vec<String> = self
                .missing
                .iter()
                .take(SHOWN)
                .map(|id| id.to_string())
                .collect();
            write!(f, "\n  missing: {}", ids.join(", "))?;
            if self.missing.len() > SHOWN {
                write!(f, ", ...")?;
            }
        }
        for (id, places) in self.duplicates.iter().take(SHOWN) {
            let places: Vec<String> = places.iter().map(|p| p.to_string()).collect();
            write!(f, "\n  duplicate {id}: {}", places.join(", "))?;
        }
        for (id, place) in self.unexpected.iter().take(SHOWN) {
            write!(f, "\n  unexpected {id} at {place}")?;
        }
        Ok(())
    }
}

/// What a successful merge did.
#[derive(Debug, Clone, Default)]
pub struct MergeReport {
    /// Records written (= the number of expected ids).
    pub records: usize,
    /// Unparseable lines skipped, with their file.
    pub malformed: Vec<(PathBuf, BadRecord)>,
}

#[derive(Deserialize)]
struct IdOnly {
    question_id: QuestionId,
}

/// Merges shard answer files into `out` after checking that they answer
/// every id of `expected` exactly once (see the module docs).
pub fn merge_answers<'a>(
    expected: impl IntoIterator<Item = &'a QuestionId>,
    shard_files: &[PathBuf],
    out: &Path,
) -> Result<MergeReport> {
    let expected: Vec<&QuestionId> = expected.into_iter().collect();
    let wanted: HashSet<&QuestionId> = expected.iter().copied().collect();
    let contents: Vec<Vec<u8>> = shard_files
        .iter()
        .map(|path| jsonl::read_file(path))
        .collect::<Result<_>>()?;

    let mut report = MergeReport::default();
    let mut found: HashMap<QuestionId, Vec<(Place, &[u8])>> = HashMap::new();
    let mut mismatch = MergeMismatch::default();
    for (path, bytes) in shard_files.iter().zip(&contents) {
        for line in jsonl::split_lines(bytes, true) {
            let place = Place {
                file: path.clone(),
                line: line.number(),
            };
            match jsonl::parse_line::<IdOnly>(&line) {
                Ok(IdOnly { question_id }) if wanted.contains(&question_id) => {
                    found
                        .entry(question_id)
                        .or_default()
                        .push((place, line.bytes));
                }
                Ok(IdOnly { question_id }) => mismatch.unexpected.push((question_id, place)),
                Err(bad) => report.malformed.push((path.clone(), bad)),
            }
        }
    }

    let mut merged = Vec::new();
    for id in &expected {
        match found.get(*id).map(Vec::as_slice) {
            None | Some([]) => mismatch.missing.push((*id).clone()),
            Some([(_, bytes)]) => {
                merged.extend_from_slice(bytes);
                merged.push(b'\n');
            }
            Some(many) => mismatch
                .duplicates
                .push(((*id).clone(), many.iter().map(|(p, _)| p.clone()).collect())),
        }
    }
    if mismatch != MergeMismatch::default() {
        return Err(Error::Merge(Box::new(mismatch)));
    }
    write_atomically(out, &merged)?;
    report.records = expected.len();
    Ok(report)
}

/// Writes `bytes` to `path` through a temporary sibling file and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io("writing", &tmp, e))?;
    file.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming onto", path, e))
}

//! Merging the answers files of a sharded run, with a check that every
//! question is answered exactly once.
//!
//! [`merge_answers`] reads every shard's file, keys each parsed line by its
//! `question_id`, and compares the union with the expected ids (normally
//! [`QuestionSet::ids`](crate::pope::QuestionSet::ids)). [`merge_jobs`]
//! does the same with the runner's job keys, `question_id` *and* prompt,
//! for benchmarks that ask several questions per id (MME). Missing
//! questions, questions answered more than once (in one file or across
//! files) and answers that are not expected are all listed in one
//! [`Error::Merge`]; nothing is written then. Otherwise the records are written in question-file order,
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
use crate::runner::Job;
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

/// What a merge expects once: a question id, with the prompt when several
/// questions share the id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MergeKey {
    /// The `question_id`.
    pub id: QuestionId,
    /// The prompt, or `None` when any prompt goes.
    pub prompt: Option<String>,
}

impl From<QuestionId> for MergeKey {
    fn from(id: QuestionId) -> Self {
        Self { id, prompt: None }
    }
}

impl PartialEq<QuestionId> for MergeKey {
    fn eq(&self, other: &QuestionId) -> bool {
        self.prompt.is_none() && self.id == *other
    }
}

impl fmt::Display for MergeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.prompt {
            Some(prompt) => write!(f, "{} (prompt {prompt:?})", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

/// Why a merge was refused: the shards do not cover the questions exactly
/// once. Every list is in a deterministic order (question-file order for
/// missing and duplicated ids, file then line order for unexpected ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeMismatch {
    /// Expected questions with no answer in any shard.
    pub missing: Vec<MergeKey>,
    /// Questions answered more than once, with every place they occur.
    pub duplicates: Vec<(MergeKey, Vec<Place>)>,
    /// Answers to questions that are not expected (with the line's prompt
    /// when the expected keys have prompts).
    pub unexpected: Vec<(MergeKey, Place)>,
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
struct KeyOnly {
    question_id: QuestionId,
    #[serde(default)]
    prompt: String,
}

/// Merges shard answer files into `out` after checking that they answer
/// every id of `expected` exactly once (see the module docs).
pub fn merge_answers<'a>(
    expected: impl IntoIterator<Item = &'a QuestionId>,
    shard_files: &[PathBuf],
    out: &Path,
) -> Result<MergeReport> {
    let keys = expected.into_iter().cloned().map(MergeKey::from).collect();
    merge_keys(keys, shard_files, out)
}

/// Merges shard answer files into `out` after checking that they answer
/// every job of `jobs` (all shards' jobs, keyed by `question_id` and
/// prompt) exactly once. A line without a prompt answers the job of its id
/// when the id has only one job.
pub fn merge_jobs(jobs: &[Job], shard_files: &[PathBuf], out: &Path) -> Result<MergeReport> {
    let mut seen = HashSet::new();
    let keys = jobs
        .iter()
        .filter(|j| seen.insert((&j.id, &j.prompt)))
        .map(|j| MergeKey {
            id: j.id.clone(),
            prompt: Some(j.prompt.clone()),
        })
        .collect();
    merge_keys(keys, shard_files, out)
}

/// The expected key a line answers, if any.
fn match_line(
    expected: &[MergeKey],
    by_id: &HashMap<&QuestionId, Vec<usize>>,
    line: &KeyOnly,
) -> Option<usize> {
    let candidates = by_id.get(&line.question_id)?;
    candidates
        .iter()
        .copied()
        .find(|&i| {
            expected[i]
                .prompt
                .as_ref()
                .is_none_or(|prompt| *prompt == line.prompt)
        })
        .or(match candidates.as_slice() {
            [only] if line.prompt.is_empty() => Some(*only),
            _ => None,
        })
}

fn merge_keys(expected: Vec<MergeKey>, shard_files: &[PathBuf], out: &Path) -> Result<MergeReport> {
    let mut by_id: HashMap<&QuestionId, Vec<usize>> = HashMap::new();
    for (i, key) in expected.iter().enumerate() {
        by_id.entry(&key.id).or_default().push(i);
    }
    let contents: Vec<Vec<u8>> = shard_files
        .iter()
        .map(|path| jsonl::read_file(path))
        .collect::<Result<_>>()?;

    let mut report = MergeReport::default();
    let mut found: HashMap<usize, Vec<(Place, &[u8])>> = HashMap::new();
    let mut mismatch = MergeMismatch::default();
    for (path, bytes) in shard_files.iter().zip(&contents) {
        for line in jsonl::split_lines(bytes, true) {
            let place = Place {
                file: path.clone(),
                line: line.number(),
            };
            match jsonl::parse_line::<KeyOnly>(&line) {
                Ok(key) => match match_line(&expected, &by_id, &key) {
                    Some(i) => found.entry(i).or_default().push((place, line.bytes)),
                    None => {
                        let with_prompts = expected.iter().any(|k| k.prompt.is_some());
                        let key = MergeKey {
                            id: key.question_id,
                            prompt: with_prompts.then_some(key.prompt),
                        };
                        mismatch.unexpected.push((key, place));
                    }
                },
                Err(bad) => report.malformed.push((path.clone(), bad)),
            }
        }
    }

    let mut merged = Vec::new();
    for (i, key) in expected.iter().enumerate() {
        match found.get(&i).map(Vec::as_slice) {
            None | Some([]) => mismatch.missing.push(key.clone()),
            Some([(_, bytes)]) => {
                merged.extend_from_slice(bytes);
                merged.push(b'\n');
            }
            Some(many) => mismatch
                .duplicates
                .push((key.clone(), many.iter().map(|(p, _)| p.clone()).collect())),
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
    // The process id keeps concurrent writers (e.g. shards filling the same
    // image cache) off each other's temporary file.
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io("writing", &tmp, e))?;
    file.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming onto", path, e))
}

//! The runner's answers file: opened for appending under an exclusive
//! lock, with a torn last line cut away on open and one whole line written
//! (and synced) per record. The guarantees are described in
//! [`crate::runner`].

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// How many times (20 ms apart) a held lock is retried.
const LOCK_ATTEMPTS: u32 = 50;

use crate::pope::{AnswerRecord, parse_answer_line};
use crate::runner::Job;
use crate::{BadRecord, BadRecordKind, Error, QuestionId, Result, jsonl};

/// The jobs an answers file answers: per id, the prompts of its records
/// (an empty prompt answers every job with that id).
#[derive(Debug, Default)]
pub(crate) struct Answered {
    prompts: HashMap<QuestionId, HashSet<String>>,
}

impl Answered {
    /// Records that `id` was answered with `prompt`.
    pub(crate) fn insert(&mut self, id: QuestionId, prompt: String) {
        self.prompts.entry(id).or_default().insert(prompt);
    }

    /// Whether a record answers `job`.
    pub(crate) fn contains(&self, job: &Job) -> bool {
        self.prompts
            .get(&job.id)
            .is_some_and(|p| p.contains("") || p.contains(&job.prompt))
    }

    /// Records of the ids of `jobs` whose prompt none of `jobs` has (the
    /// prompt changed since they were written).
    pub(crate) fn stale<'a>(&self, jobs: impl IntoIterator<Item = &'a Job>) -> usize {
        let mut wanted: HashMap<&QuestionId, HashSet<&str>> = HashMap::new();
        for job in jobs {
            wanted.entry(&job.id).or_default().insert(&job.prompt);
        }
        wanted
            .iter()
            .filter_map(|(id, job_prompts)| {
                let found = self.prompts.get(*id)?;
                Some(
                    found
                        .iter()
                        .filter(|p| !p.is_empty() && !job_prompts.contains(p.as_str()))
                        .count(),
                )
            })
            .sum()
    }
}

/// What the answers file held when the run started.
pub(crate) struct Recovered {
    pub answered: Answered,
    pub malformed: Vec<BadRecord>,
    pub torn_tail_bytes: u64,
}

/// The locked answers file, positioned for appending.
pub(crate) struct AnswersFile {
    file: File,
    path: PathBuf,
    len: u64,
    sync: bool,
}

impl AnswersFile {
    pub(crate) fn open(path: &Path, sync: bool) -> Result<(Self, Recovered)> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("creating the folder of", path, e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io("opening", path, e))?;
        // A lock that is still held for a moment after its owner let go
        // (a process exiting, or a child process forked while the file was
        // open, until its exec closes the descriptor) is waited for briefly
        // before the file counts as in use.
        let mut attempts = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if attempts < LOCK_ATTEMPTS => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::AnswersLocked {
                        path: path.to_path_buf(),
                    });
                }
                Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                    break;
                }
                Err(TryLockError::Error(e)) => return Err(Error::io("locking", path, e)),
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io("reading", path, e))?;
        let recovered = recover(path, &bytes)?;
        let complete_len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let torn_tail_bytes = (bytes.len() - complete_len) as u64;
        if torn_tail_bytes > 0 {
            file.set_len(complete_len as u64)
                .map_err(|e| Error::io("truncating the torn last line of", path, e))?;
            file.sync_data()
                .map_err(|e| Error::io("syncing", path, e))?;
        }
        let recovered = Recovered {
            torn_tail_bytes,
            ..recovered
        };
        let out = Self {
            file,
            path: path.to_path_buf(),
            len: complete_len as u64,
            sync,
        };
        Ok((out, recovered))
    }

    /// Appends the records, one line each, with one write (and one sync);
    /// on a failed write, truncates back.
    pub(crate) fn append_all(&mut self, records: &[AnswerRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        for record in records {
            serde_json::to_writer(&mut lines, record).map_err(|source| Error::Serialize {
                what: "an answer record",
                source,
            })?;
            lines.push(b'\n');
        }
        if let Err(e) = self.file.write_all(&lines) {
            // Best effort: leave no partial line behind (the next run would
            // remove it anyway).
            let _ = self.file.set_len(self.len);
            return Err(Error::io("appending to", &self.path, e));
        }
        self.file
            .flush()
            .map_err(|e| Error::io("flushing", &self.path, e))?;
        if self.sync {
            self.file
                .sync_data()
                .map_err(|e| Error::io("syncing", &self.path, e))?;
        }
        self.len += lines.len() as u64;
        Ok(())
    }
}

/// Reads the complete lines of an existing answers file; refuses a file
/// that is not one (a question file, binary data).
fn recover(path: &Path, bytes: &[u8]) -> Result<Recovered> {
    let mut recovered = Recovered {
        answered: Answered::default(),
        malformed: Vec::new(),
        torn_tail_bytes: 0,
    };
    let mut usable = 0usize;
    let mut binary_line = None;
    for line in jsonl::split_lines(bytes, false) {
        match parse_answer_line(&line) {
            Ok(record) => {
                usable += 1;
                recovered.answered.insert(record.question_id, record.prompt);
            }
            Err(bad) if bad.kind == BadRecordKind::QuestionLine => {
                return Err(Error::NotAnswersFile {
                    path: path.to_path_buf(),
                    reason: format!(
                        "line {} is a question (it has `text` and `label` but no `output`); is this the question file?",
                        line.number()
                    ),
                });
            }
            Err(bad) => {
                if std::str::from_utf8(line.bytes).is_err() || line.bytes.contains(&0) {
                    binary_line.get_or_insert(line.number());
                }
                recovered.malformed.push(bad);
            }
        }
    }
    if let (0, Some(line)) = (usable, binary_line) {
        return Err(Error::NotAnswersFile {
            path: path.to_path_buf(),
            reason: format!("no answer record, and line {line} is binary data, not text"),
        });
    }
    Ok(recovered)
}

//! The runner's answers file: opened for appending under an exclusive
//! lock, with a torn last line cut away on open and one whole line written
//! (and synced) per record. The guarantees are described in
//! [`crate::runner`].

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// How many times (20 ms apart) a held lock is retried.
const LOCK_ATTEMPTS: u32 = 50;

use crate::pope::AnswerRecord;
use crate::{BadRecord, Error, QuestionId, Result, jsonl};

/// What the answers file held when the run started.
pub(crate) struct Recovered {
    pub answered: HashSet<QuestionId>,
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
        let complete_len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let torn_tail_bytes = (bytes.len() - complete_len) as u64;
        if torn_tail_bytes > 0 {
            file.set_len(complete_len as u64)
                .map_err(|e| Error::io("truncating the torn last line of", path, e))?;
            file.sync_data()
                .map_err(|e| Error::io("syncing", path, e))?;
        }
        let mut recovered = Recovered {
            answered: HashSet::new(),
            malformed: Vec::new(),
            torn_tail_bytes,
        };
        for line in jsonl::split_lines(&bytes[..complete_len], false) {
            match jsonl::parse_line::<AnswerRecord>(&line) {
                Ok(record) => {
                    recovered.answered.insert(record.question_id);
                }
                Err(bad) => recovered.malformed.push(bad),
            }
        }
        let out = Self {
            file,
            path: path.to_path_buf(),
            len: complete_len as u64,
            sync,
        };
        Ok((out, recovered))
    }

    /// Appends one record as one line; on a failed write, truncates back.
    pub(crate) fn append(&mut self, record: &AnswerRecord) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|source| Error::Serialize {
            what: "an answer record",
            source,
        })?;
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
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
        self.len += line.len() as u64;
        Ok(())
    }
}

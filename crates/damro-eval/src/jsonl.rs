//! Line-oriented reading of JSON-lines files.
//!
//! Every reader in this crate goes through [`split_lines`], so the same rules
//! hold everywhere: lines are split on `\n` (a trailing `\r` is dropped),
//! blank lines are skipped silently, a line that is not UTF-8 or not valid
//! JSON for the expected record is a
//! [`BadRecordKind::MalformedLine`](crate::BadRecordKind::MalformedLine)
//! with its 1-based line number, and the reader goes on with the next line.
//!
//! The bytes after the last `\n` form the *tail*. Input files (questions,
//! captions) often end without a newline, so readers treat the tail as an
//! ordinary last line. The runner instead treats a non-empty tail of its
//! own answers file as a torn write (see [`crate::runner`]).

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{BadRecord, BadRecordKind, Error, Result};

/// One non-blank line of a file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Line<'a> {
    /// 0-based index among *all* lines of the file (blank ones included):
    /// the record's position, used for sharding.
    pub index: usize,
    /// The bytes, without the `\n` (and without a trailing `\r`).
    pub bytes: &'a [u8],
}

impl Line<'_> {
    /// 1-based line number, for messages.
    pub fn number(&self) -> usize {
        self.index + 1
    }
}

/// Splits `bytes` into its non-blank lines. With `include_tail == false`,
/// bytes after the last `\n` are left out.
pub(crate) fn split_lines(bytes: &[u8], include_tail: bool) -> Vec<Line<'_>> {
    let complete = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(last) if !include_tail => &bytes[..=last],
        None if !include_tail => &bytes[..0],
        _ => bytes,
    };
    let mut lines = Vec::new();
    for (index, raw) in complete.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines.push(Line { index, bytes: raw });
    }
    lines
}

/// Parses one line as `T`; on failure returns the bad record for it.
pub(crate) fn parse_line<T: DeserializeOwned>(
    line: &Line<'_>,
) -> std::result::Result<T, BadRecord> {
    let text = std::str::from_utf8(line.bytes).map_err(|e| BadRecord {
        line: Some(line.number()),
        id: None,
        kind: BadRecordKind::MalformedLine,
        detail: format!("not UTF-8: {e}"),
    })?;
    serde_json::from_str(text).map_err(|e| BadRecord {
        line: Some(line.number()),
        id: id_of(text),
        kind: BadRecordKind::MalformedLine,
        detail: e.to_string(),
    })
}

/// The `question_id` of a line that failed to parse as a full record, when
/// it is at least a JSON object with one.
fn id_of(text: &str) -> Option<crate::QuestionId> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    serde_json::from_value(value.get("question_id")?.clone()).ok()
}

/// Reads a whole file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("reading", path, e))
}

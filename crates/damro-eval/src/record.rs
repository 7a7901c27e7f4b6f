//! Record-level types shared by every task: the question id and the report
//! of a bad record.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A question's id as written in its file: POPE uses integers, other files
/// may use strings. It is written back in the same JSON type.
///
/// `1` and `"1"` are different ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QuestionId {
    /// An integer id (`"question_id": 17`).
    Int(i64),
    /// A string id (`"question_id": "17_a"`).
    Text(String),
}

impl fmt::Display for QuestionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(id) => write!(f, "{id}"),
            Self::Text(id) => write!(f, "{id:?}"),
        }
    }
}

impl From<i64> for QuestionId {
    fn from(id: i64) -> Self {
        Self::Int(id)
    }
}

impl From<&str> for QuestionId {
    fn from(id: &str) -> Self {
        Self::Text(id.to_owned())
    }
}

/// What is wrong with a [`BadRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BadRecordKind {
    /// The line is not valid JSON, not UTF-8, or lacks a required field.
    MalformedLine,
    /// A POPE label other than `yes` / `no`.
    UnknownLabel,
    /// A question id already seen earlier in the same file.
    DuplicateId,
    /// A question line where an answer was expected (the question file was
    /// given as the answers file).
    QuestionLine,
    /// An MME sub-task that is not one of the 14 known ones.
    UnknownCategory,
    /// The image file does not exist.
    MissingImage,
    /// The image path exists but cannot be opened as a file.
    UnreadableImage,
    /// The answer function returned an error (e.g. the image did not decode).
    AnswerFailed,
}

impl BadRecordKind {
    /// Every kind, in the order summary tables list them.
    pub const ALL: [Self; 8] = [
        Self::MalformedLine,
        Self::UnknownLabel,
        Self::DuplicateId,
        Self::QuestionLine,
        Self::UnknownCategory,
        Self::MissingImage,
        Self::UnreadableImage,
        Self::AnswerFailed,
    ];

    /// Whether this kind comes from attempting a job in the runner (image
    /// checks, the answer function) rather than from reading an input file.
    pub fn is_attempt(self) -> bool {
        matches!(
            self,
            Self::MissingImage | Self::UnreadableImage | Self::AnswerFailed
        )
    }

    /// The kind's name as in JSON (`missing_image`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedLine => "malformed_line",
            Self::UnknownLabel => "unknown_label",
            Self::DuplicateId => "duplicate_id",
            Self::QuestionLine => "question_line",
            Self::UnknownCategory => "unknown_category",
            Self::MissingImage => "missing_image",
            Self::UnreadableImage => "unreadable_image",
            Self::AnswerFailed => "answer_failed",
        }
    }
}

impl fmt::Display for BadRecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One record that could not be used, with where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    /// 1-based line in its file, when it came from a file.
    pub line: Option<usize>,
    /// The record's id, when it could be read.
    pub id: Option<QuestionId>,
    /// What is wrong.
    pub kind: BadRecordKind,
    /// Details in words (the parser's message, the path, the answer error).
    pub detail: String,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(line) = self.line {
            write!(f, " at line {line}")?;
        }
        if let Some(id) = &self.id {
            write!(f, " (question_id {id})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// Counts of bad records per kind, for summaries.
pub fn count_by_kind<'a>(
    bad: impl IntoIterator<Item = &'a BadRecord>,
) -> Vec<(BadRecordKind, usize)> {
    let mut counts = [0usize; BadRecordKind::ALL.len()];
    for record in bad {
        if let Some(slot) = BadRecordKind::ALL.iter().position(|k| *k == record.kind) {
            counts[slot] += 1;
        }
    }
    BadRecordKind::ALL.iter().copied().zip(counts).collect()
}

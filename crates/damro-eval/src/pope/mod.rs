//! POPE (Li et al., EMNLP 2023, "Evaluating Object Hallucination in Large
//! Vision-Language Models"): the file formats the DAMRO authors use, the
//! prompt, the scorer ([`score`]) under either answer rule
//! ([`score::PopeRule`]), and several splits at once with their average
//! ([`splits`]).
//!
//! Question files are JSON lines, one question per line:
//!
//! ```text
//! {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"}
//! ```
//!
//! Answer files are JSON lines written by the runner
//! ([`AnswerRecord`]): `question_id`, `prompt`, `output`, `model_id`,
//! `image` and, when set, `mode`. When reading, `output` may also be named
//! `text` (LLaVA's answer files) or `answer` (POPE's own), and every field
//! other than `question_id` and the output may be absent. A question line
//! given as an answer (`text` and `label`, no output) is reported as
//! [`BadRecordKind::QuestionLine`], so a question file passed as an answers
//! file is noticed instead of scored.

pub mod score;
pub mod splits;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::jsonl::{self, Line};
use crate::{BadRecord, BadRecordKind, QuestionId, Result};

/// What the authors append to every POPE question.
pub const POPE_PROMPT_SUFFIX: &str = " Please answer this question with one word.";

/// The authors' POPE prompt: the question followed by
/// [`POPE_PROMPT_SUFFIX`]. The chat template (llava_v1 for LLaVA-1.5, with
/// the `<image>\n` prefix) is the model's business, not applied here.
pub fn pope_prompt(question: &str) -> String {
    format!("{question}{POPE_PROMPT_SUFFIX}")
}

/// A POPE ground-truth label, or a parsed yes/no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// The object is in the image / the answer is "yes".
    Yes,
    /// The object is not in the image / the answer is "no".
    No,
}

impl Label {
    /// Parses a label as written in a question file: `yes` or `no`, with
    /// surrounding whitespace and letter case ignored. Anything else is
    /// `None` (the reader reports it as an unknown label).
    pub fn parse_label(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("yes") {
            Some(Self::Yes)
        } else if text.eq_ignore_ascii_case("no") {
            Some(Self::No)
        } else {
            None
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Yes => "yes",
            Self::No => "no",
        })
    }
}

/// One POPE question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopeQuestion {
    /// The id answers refer to.
    pub question_id: QuestionId,
    /// The image file name, relative to the image folder.
    pub image: String,
    /// The question text (without the prompt suffix).
    pub text: String,
    /// The ground truth.
    pub label: Label,
    /// 0-based line index in the question file (sharding uses it).
    pub position: usize,
}

impl PopeQuestion {
    /// The authors' prompt for this question ([`pope_prompt`]).
    pub fn prompt(&self) -> String {
        pope_prompt(&self.text)
    }
}

/// A question line as written; `label` is checked separately so that a bad
/// label is reported as such, not as a malformed line.
#[derive(Deserialize)]
struct RawQuestion {
    question_id: QuestionId,
    image: String,
    text: String,
    label: Option<String>,
}

/// The usable questions of a file and the lines that were not usable.
#[derive(Debug, Clone, Default)]
pub struct QuestionSet {
    /// Valid questions, in file order, ids unique.
    pub questions: Vec<PopeQuestion>,
    /// Malformed lines, unknown labels and repeated ids (later copies).
    pub bad: Vec<BadRecord>,
}

impl QuestionSet {
    /// The valid questions' ids, in file order.
    pub fn ids(&self) -> impl Iterator<Item = &QuestionId> {
        self.questions.iter().map(|q| &q.question_id)
    }
}

/// Reads a POPE question file (see the module docs for the format).
///
/// Only an unreadable file is an error; bad lines are collected in
/// [`QuestionSet::bad`].
pub fn read_questions(path: &Path) -> Result<QuestionSet> {
    Ok(parse_questions(&jsonl::read_file(path)?))
}

/// Parses the bytes of a POPE question file; see [`read_questions`].
pub fn parse_questions(bytes: &[u8]) -> QuestionSet {
    let mut set = QuestionSet::default();
    let mut seen = HashSet::new();
    for line in jsonl::split_lines(bytes, true) {
        match question_from_line(&line) {
            Ok(q) if !seen.insert(q.question_id.clone()) => set.bad.push(BadRecord {
                line: Some(line.number()),
                id: Some(q.question_id),
                kind: BadRecordKind::DuplicateId,
                detail: "question_id already used by an earlier line; this line is skipped".into(),
            }),
            Ok(q) => set.questions.push(q),
            Err(bad) => set.bad.push(bad),
        }
    }
    set
}

fn question_from_line(line: &Line<'_>) -> std::result::Result<PopeQuestion, BadRecord> {
    let raw: RawQuestion = jsonl::parse_line(line)?;
    let label = raw
        .label
        .as_deref()
        .and_then(Label::parse_label)
        .ok_or_else(|| BadRecord {
            line: Some(line.number()),
            id: Some(raw.question_id.clone()),
            kind: BadRecordKind::UnknownLabel,
            detail: match &raw.label {
                Some(label) => format!("label {label:?} is neither \"yes\" nor \"no\""),
                None => "no `label` field".into(),
            },
        })?;
    Ok(PopeQuestion {
        question_id: raw.question_id,
        image: raw.image,
        text: raw.text,
        label,
        position: line.index,
    })
}

/// One answer line, as the runner writes it.
///
/// When reading, the output may also be named `answer` (POPE's own files)
/// or `text` (LLaVA's); with several, `output` wins over `answer` over
/// `text`. A line with `text` and `label` but no `output` or `answer` is a
/// *question* line and is refused (see [`parse_answers`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawAnswer")]
pub struct AnswerRecord {
    /// The question (or, for captioning, the image) this answers.
    pub question_id: QuestionId,
    /// The prompt text given to the model, before any chat template.
    #[serde(default)]
    pub prompt: String,
    /// The model's decoded output.
    pub output: String,
    /// Which model produced it (free text, e.g. the checkpoint directory name).
    #[serde(default)]
    pub model_id: String,
    /// The image file name, as in the question.
    #[serde(default)]
    pub image: String,
    /// Decoding mode (e.g. `plain`, `damro`), when the caller sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The ground-truth answer, for benchmarks whose answer files carry it
    /// (MME: `Yes` / `No`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt_answer: Option<String>,
    /// The sub-task, for benchmarks that have them (MME: `existence`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// An answer line as it may be written by this crate or other tools.
#[derive(Deserialize)]
struct RawAnswer {
    question_id: QuestionId,
    #[serde(default)]
    prompt: String,
    output: Option<String>,
    answer: Option<String>,
    text: Option<String>,
    #[serde(default)]
    model_id: String,
    #[serde(default)]
    image: String,
    mode: Option<String>,
    gt_answer: Option<String>,
    category: Option<String>,
    label: Option<serde::de::IgnoredAny>,
}

/// What [`AnswerRecord`]'s deserialiser says about a question line; the
/// readers recognise it to report the file as a question file.
pub(crate) const QUESTION_LINE: &str =
    "this is a question line (`text` and `label`, no `output`), not an answer";

impl TryFrom<RawAnswer> for AnswerRecord {
    type Error = &'static str;

    fn try_from(raw: RawAnswer) -> std::result::Result<Self, &'static str> {
        let output = match (raw.output, raw.answer, raw.text) {
            (Some(output), _, _) | (None, Some(output), _) => output,
            (None, None, Some(_)) if raw.label.is_some() => return Err(QUESTION_LINE),
            (None, None, Some(text)) => text,
            (None, None, None) => return Err("missing field `output`"),
        };
        Ok(Self {
            question_id: raw.question_id,
            prompt: raw.prompt,
            output,
            model_id: raw.model_id,
            image: raw.image,
            mode: raw.mode,
            gt_answer: raw.gt_answer,
            category: raw.category,
        })
    }
}

/// Parses one answer line; a question line is reported as
/// [`BadRecordKind::QuestionLine`].
pub(crate) fn parse_answer_line(line: &Line<'_>) -> std::result::Result<AnswerRecord, BadRecord> {
    jsonl::parse_line::<AnswerRecord>(line).map_err(|mut bad| {
        if bad.detail.starts_with(QUESTION_LINE) {
            bad.kind = BadRecordKind::QuestionLine;
        }
        bad
    })
}

/// The records of an answers file.
#[derive(Debug, Clone, Default)]
pub struct AnswerSet {
    /// Parsed records with their 1-based line numbers, in file order
    /// (repeated ids are kept; the scorer uses the first).
    pub answers: Vec<(usize, AnswerRecord)>,
    /// Lines that did not parse.
    pub bad: Vec<BadRecord>,
}

/// Reads an answers file. A last line without a newline is read like any
/// other (it is reported as malformed if it was torn).
pub fn read_answers(path: &Path) -> Result<AnswerSet> {
    Ok(parse_answers(&jsonl::read_file(path)?))
}

/// Parses the bytes of an answers file; see [`read_answers`].
pub fn parse_answers(bytes: &[u8]) -> AnswerSet {
    let mut set = AnswerSet::default();
    for line in jsonl::split_lines(bytes, true) {
        match parse_answer_line(&line) {
            Ok(record) => set.answers.push((line.number(), record)),
            Err(bad) => set.bad.push(bad),
        }
    }
    set
}

//! The POPE scorer: yes/no parsing of free-text answers and the metrics.
//!
//! Two answer rules are available ([`PopeRule`]); they give different
//! figures on the same answers, so every report records which one it used.
//!
//! # The DAMRO authors' rule ([`PopeRule::Damro`])
//! The authors' own `eval_pope.py` judges an answer *against its label*:
//! the answer is lower-cased and stripped; for a `yes` label it counts as
//! **yes** iff it contains the substring `yes`, otherwise **no**; for a `no`
//! label it counts as **no** iff it contains the substring `no`, otherwise
//! **yes**. So `"I know"` or `"not sure"` count as a right "no", and an
//! empty answer is wrong whatever the label. Use it to reproduce the paper's
//! figures ([`parse_damro`]).
//!
//! # The common rule ([`PopeRule::Pope`])
//! [`parse_yes_no`] follows the standard POPE evaluation script
//! (`evaluate.py` in the POPE repository; LLaVA's and VCD's `eval_pope.py`
//! use the same rule), character for character:
//!
//! 1. keep only the text before the first `.` (all of it if there is none);
//! 2. delete every `,`;
//! 3. split on single spaces (`str.split(' ')`: no other whitespace splits,
//!    so `"No\n"` is one word `"No\n"`);
//! 4. the answer is **no** if one of the words is exactly `No`, `not` or
//!    `no`, and **yes** otherwise (including empty answers, `"NO"`, `"Not"`,
//!    `"No!"` and answers that say neither).
//!
//! # Metrics
//! "yes" is the positive class. With TP, FP, TN, FN over the scored
//! questions: accuracy = (TP + TN) / all, precision = TP / (TP + FP),
//! recall = TP / (TP + FN), F1 = 2PR / (P + R), yes-ratio = (TP + FP) / all.
//!
//! # Deviations from the standard script
//! - Answers are matched to questions by `question_id`, not by line order,
//!   so answer files may be in any order (merged shards, resumed runs). The
//!   first answer of an id counts; later ones are counted as duplicates.
//! - Labels must be `yes` or `no` (case and surrounding space ignored); the
//!   standard script reads every label other than exactly `no` as yes. Here
//!   other labels are reported ([`PopeCounts::unknown_labels`]) and left out.
//! - Questions without an answer are counted ([`PopeCounts::unanswered`])
//!   and left out; answers to unknown ids are counted and left out.
//! - A ratio whose denominator is 0 is 0.0 (the script raises
//!   `ZeroDivisionError`).

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{AnswerSet, Label, QuestionSet};
use crate::{BadRecordKind, RunInfo, RunSettings};

/// Which rule turns a free-text answer into yes/no (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PopeRule {
    /// The DAMRO authors' `eval_pope.py`: substring `yes` / `no` depending
    /// on the label ([`parse_damro`]). Reproduces the paper.
    Damro,
    /// The standard POPE / LLaVA / VCD rule ([`parse_yes_no`]); what
    /// [`score`] uses.
    #[default]
    Pope,
}

impl PopeRule {
    /// Both rules, in the order tables list them.
    pub const ALL: [Self; 2] = [Self::Damro, Self::Pope];

    /// The rule's name (`damro`, `pope`), as in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Damro => "damro",
            Self::Pope => "pope",
        }
    }

    /// What `answer` counts as for a question labelled `truth`.
    pub fn judge(self, answer: &str, truth: Label) -> Label {
        match self {
            Self::Damro => parse_damro(answer, truth),
            Self::Pope => parse_yes_no(answer),
        }
    }
}

impl fmt::Display for PopeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PopeRule {
    type Err = crate::Error;

    /// Parses `damro` or `pope` (letter case ignored).
    fn from_str(text: &str) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|rule| rule.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| crate::Error::InvalidChoice {
                what: "POPE rule",
                value: text.to_owned(),
                expected: "`damro` or `pope`",
            })
    }
}

/// The DAMRO authors' rule (see the module docs): what `answer` counts as
/// for a question labelled `truth`.
///
/// ```
/// use damro_eval::pope::{Label, score::parse_damro};
/// assert_eq!(parse_damro("I know", Label::No), Label::No); // "know" contains "no"
/// assert_eq!(parse_damro("Yes, there is no dog", Label::Yes), Label::Yes);
/// assert_eq!(parse_damro("", Label::Yes), Label::No);
/// ```
pub fn parse_damro(answer: &str, truth: Label) -> Label {
    let answer = answer.trim().to_lowercase();
    match truth {
        Label::Yes if answer.contains("yes") => Label::Yes,
        Label::Yes => Label::No,
        Label::No if answer.contains("no") => Label::No,
        Label::No => Label::Yes,
    }
}

/// Parses a free-text answer into yes/no with the standard POPE rule (see
/// the module docs).
///
/// ```
/// use damro_eval::pope::{Label, score::parse_yes_no};
/// assert_eq!(parse_yes_no("No, there is no dog."), Label::No);
/// assert_eq!(parse_yes_no("Yes. There is not a cat."), Label::Yes); // only the first sentence counts
/// assert_eq!(parse_yes_no("NO"), Label::Yes); // exact words only
/// ```
pub fn parse_yes_no(answer: &str) -> Label {
    let first_sentence = answer.split('.').next().unwrap_or(answer);
    let without_commas = first_sentence.replace(',', "");
    let says_no = without_commas
        .split(' ')
        .any(|word| word == "No" || word == "not" || word == "no");
    if says_no { Label::No } else { Label::Yes }
}

/// Confusion counts and bookkeeping of a POPE scoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopeCounts {
    /// Label yes, answer yes.
    pub tp: usize,
    /// Label no, answer yes.
    pub fp: usize,
    /// Label no, answer no.
    pub tn: usize,
    /// Label yes, answer no.
    #[serde(rename = "fn")]
    pub fn_: usize,
    /// Question lines whose label is neither yes nor no (not scored).
    pub unknown_labels: usize,
    /// Valid questions with no answer (not scored).
    pub unanswered: usize,
    /// Answers whose `question_id` is not a valid question (not scored).
    pub unmatched_answers: usize,
    /// Further answers to an already answered question (not scored).
    pub duplicate_answers: usize,
    /// Answer lines that did not parse.
    pub malformed_answers: usize,
}

impl PopeCounts {
    /// Adds one scored question.
    pub fn add(&mut self, truth: Label, predicted: Label) {
        match (truth, predicted) {
            (Label::Yes, Label::Yes) => self.tp += 1,
            (Label::No, Label::Yes) => self.fp += 1,
            (Label::No, Label::No) => self.tn += 1,
            (Label::Yes, Label::No) => self.fn_ += 1,
        }
    }

    /// Number of scored questions (TP + FP + TN + FN).
    pub fn scored(&self) -> usize {
        self.tp + self.fp + self.tn + self.fn_
    }
}

/// The POPE metrics, as fractions in `[0, 1]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PopeMetrics {
    /// (TP + TN) / scored.
    pub accuracy: f64,
    /// TP / (TP + FP).
    pub precision: f64,
    /// TP / (TP + FN).
    pub recall: f64,
    /// 2 · precision · recall / (precision + recall).
    pub f1: f64,
    /// Share of "yes" answers: (TP + FP) / scored.
    pub yes_ratio: f64,
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl PopeMetrics {
    /// Computes the metrics from the confusion counts.
    pub fn from_counts(c: &PopeCounts) -> Self {
        let precision = ratio(c.tp, c.tp + c.fp);
        let recall = ratio(c.tp, c.tp + c.fn_);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            accuracy: ratio(c.tp + c.tn, c.scored()),
            precision,
            recall,
            f1,
            yes_ratio: ratio(c.tp + c.fp, c.scored()),
        }
    }
}

/// The result of scoring one question file: the rule, where the answers
/// come from, metrics and counts. Serialises to the metrics JSON;
/// `Display` is the plain-text summary table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PopeReport {
    /// The answer rule used.
    pub rule: PopeRule,
    /// Settings, model ids, scored and unscored answers.
    #[serde(flatten)]
    pub info: RunInfo,
    /// Accuracy, precision, recall, F1, yes-ratio.
    pub metrics: PopeMetrics,
    /// TP/FP/TN/FN and what was left out.
    pub counts: PopeCounts,
}

impl PopeReport {
    /// Builds the report from finished counts (rule [`PopeRule::Pope`], no
    /// model ids or settings).
    pub fn from_counts(counts: PopeCounts) -> Self {
        let unscored =
            counts.unmatched_answers + counts.duplicate_answers + counts.malformed_answers;
        Self {
            rule: PopeRule::Pope,
            info: RunInfo::new([], counts.scored(), unscored),
            metrics: PopeMetrics::from_counts(&counts),
            counts,
        }
    }

    /// The report with the caller's run settings recorded.
    pub fn with_settings(mut self, settings: RunSettings) -> Self {
        self.info.settings = settings;
        self
    }

    /// Whether no answer was scored (see [`RunInfo::nothing_scored`]).
    pub fn nothing_scored(&self) -> bool {
        self.info.nothing_scored()
    }
}

/// Scores answers against questions with the common rule
/// ([`PopeRule::Pope`]); see [`score_with`].
pub fn score(questions: &QuestionSet, answers: &AnswerSet) -> PopeReport {
    score_with(questions, answers, PopeRule::Pope)
}

/// Scores answers against questions with `rule`, matching them by
/// `question_id` (see the module docs).
pub fn score_with(questions: &QuestionSet, answers: &AnswerSet, rule: PopeRule) -> PopeReport {
    let mut counts = PopeCounts {
        unknown_labels: questions
            .bad
            .iter()
            .filter(|b| b.kind == BadRecordKind::UnknownLabel)
            .count(),
        malformed_answers: answers.bad.len(),
        ..PopeCounts::default()
    };
    let mut first_answer: HashMap<_, &str> = HashMap::with_capacity(answers.answers.len());
    for (_, record) in &answers.answers {
        if first_answer.contains_key(&record.question_id) {
            counts.duplicate_answers += 1;
        } else {
            first_answer.insert(&record.question_id, &record.output);
        }
    }
    let mut matched = 0;
    for question in &questions.questions {
        match first_answer.get(&question.question_id) {
            Some(output) => {
                matched += 1;
                counts.add(question.label, rule.judge(output, question.label));
            }
            None => counts.unanswered += 1,
        }
    }
    counts.unmatched_answers = first_answer.len() - matched;
    let mut report = PopeReport::from_counts(counts);
    report.rule = rule;
    report.info = RunInfo::new(
        answers.answers.iter().map(|(_, r)| r.model_id.as_str()),
        report.info.scored_answers,
        report.info.unscored_answers,
    );
    report
}

impl fmt::Display for PopeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, c) = (&self.metrics, &self.counts);
        writeln!(f, "POPE (rule: {})", self.rule)?;
        let info = self.info.describe();
        if !info.is_empty() {
            writeln!(f, "  {info}")?;
        }
        writeln!(f, "  scored        {:>8}", c.scored())?;
        writeln!(f, "  accuracy      {:>8.2}", 100.0 * m.accuracy)?;
        writeln!(f, "  precision     {:>8.2}", 100.0 * m.precision)?;
        writeln!(f, "  recall        {:>8.2}", 100.0 * m.recall)?;
        writeln!(f, "  F1            {:>8.2}", 100.0 * m.f1)?;
        writeln!(f, "  yes ratio     {:>8.2}", 100.0 * m.yes_ratio)?;
        writeln!(f, "  TP / FP       {:>8} / {}", c.tp, c.fp)?;
        writeln!(f, "  TN / FN       {:>8} / {}", c.tn, c.fn_)?;
        writeln!(f, "  unknown labels      {:>6}", c.unknown_labels)?;
        writeln!(f, "  unanswered          {:>6}", c.unanswered)?;
        writeln!(f, "  unmatched answers   {:>6}", c.unmatched_answers)?;
        writeln!(f, "  duplicate answers   {:>6}", c.duplicate_answers)?;
        write!(f, "  malformed answers   {:>6}", c.malformed_answers)
    }
}

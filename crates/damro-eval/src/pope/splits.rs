//! POPE over several splits at once (random, popular, adversarial): one
//! report per split and their average, the mean of each metric over the
//! splits, as the paper reports it.
//!
//! The split names are the caller's (usually `random`, `popular`,
//! `adversarial`). A split with no scored answer is shown but left out of
//! the average ([`PopeSplitsReport::averaged`] names the splits in it), so
//! one missing answers file cannot pull the average towards zero unnoticed.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::score::{PopeMetrics, PopeReport, PopeRule, score_with};
use super::{AnswerSet, QuestionSet, read_answers, read_questions};
use crate::{Result, RunInfo, RunSettings};

/// One split's questions and answers, already read.
#[derive(Debug, Clone, Copy)]
pub struct SplitInput<'a> {
    /// The split's name, e.g. `random`.
    pub name: &'a str,
    /// Its questions.
    pub questions: &'a QuestionSet,
    /// The answers to them.
    pub answers: &'a AnswerSet,
}

/// One split's files, for [`score_split_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitFiles {
    /// The split's name, e.g. `random`.
    pub name: String,
    /// Its question file (`coco_pope_random.json`).
    pub questions: PathBuf,
    /// The answers file for those questions.
    pub answers: PathBuf,
}

impl SplitFiles {
    /// The files of split `name`.
    pub fn new(
        name: impl Into<String>,
        questions: impl Into<PathBuf>,
        answers: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            questions: questions.into(),
            answers: answers.into(),
        }
    }
}

/// One split's name and report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    /// The split's name.
    pub name: String,
    /// Its report.
    pub report: PopeReport,
}

/// The reports of several splits and their average. Serialises to the
/// metrics JSON; `Display` is a table with one row per split and one for
/// the average.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PopeSplitsReport {
    /// The answer rule used for every split.
    pub rule: PopeRule,
    /// Settings, the model ids of all splits, scored and unscored answers
    /// summed over the splits.
    #[serde(flatten)]
    pub info: RunInfo,
    /// One report per split, in the order given.
    pub splits: Vec<SplitReport>,
    /// The mean of each metric over the splits in [`Self::averaged`].
    pub average: PopeMetrics,
    /// The splits the average is taken over: those with a scored answer.
    pub averaged: Vec<String>,
}

impl PopeSplitsReport {
    /// The report with the caller's run settings recorded (in the summary
    /// and in every split's report).
    pub fn with_settings(mut self, settings: RunSettings) -> Self {
        for split in &mut self.splits {
            split.report.info.settings = settings.clone();
        }
        self.info.settings = settings;
        self
    }

    /// Whether no answer was scored in any split.
    pub fn nothing_scored(&self) -> bool {
        self.info.nothing_scored()
    }

    /// The names of the splits with no scored answer.
    pub fn empty_splits(&self) -> Vec<&str> {
        self.splits
            .iter()
            .filter(|s| s.report.nothing_scored())
            .map(|s| s.name.as_str())
            .collect()
    }
}

/// The mean of each metric over `metrics` (all zero for none).
pub fn mean_metrics<'a>(metrics: impl IntoIterator<Item = &'a PopeMetrics>) -> PopeMetrics {
    let mut sum = PopeMetrics::default();
    let mut n = 0usize;
    for m in metrics {
        sum.accuracy += m.accuracy;
        sum.precision += m.precision;
        sum.recall += m.recall;
        sum.f1 += m.f1;
        sum.yes_ratio += m.yes_ratio;
        n += 1;
    }
    if n == 0 {
        return sum;
    }
    let n = n as f64;
    PopeMetrics {
        accuracy: sum.accuracy / n,
        precision: sum.precision / n,
        recall: sum.recall / n,
        f1: sum.f1 / n,
        yes_ratio: sum.yes_ratio / n,
    }
}

/// Scores every split with `rule` and averages them (see the module docs).
pub fn score_splits(inputs: &[SplitInput<'_>], rule: PopeRule) -> PopeSplitsReport {
    let splits: Vec<SplitReport> = inputs
        .iter()
        .map(|input| SplitReport {
            name: input.name.to_owned(),
            report: score_with(input.questions, input.answers, rule),
        })
        .collect();
    let kept: Vec<&SplitReport> = splits
        .iter()
        .filter(|s| !s.report.nothing_scored())
        .collect();
    let mut info = RunInfo::new(
        splits
            .iter()
            .flat_map(|s| s.report.info.model_ids.iter().map(String::as_str)),
        0,
        0,
    );
    for split in &splits {
        info.scored_answers += split.report.info.scored_answers;
        info.unscored_answers += split.report.info.unscored_answers;
    }
    PopeSplitsReport {
        rule,
        info,
        average: mean_metrics(kept.iter().map(|s| &s.report.metrics)),
        averaged: kept.iter().map(|s| s.name.clone()).collect(),
        splits,
    }
}

/// Reads each split's question and answers files and scores them
/// ([`score_splits`]). Errors only when a file cannot be read.
pub fn score_split_files(files: &[SplitFiles], rule: PopeRule) -> Result<PopeSplitsReport> {
    let read: Vec<(QuestionSet, AnswerSet)> = files
        .iter()
        .map(|f| Ok((read_questions(&f.questions)?, read_answers(&f.answers)?)))
        .collect::<Result<_>>()?;
    let inputs: Vec<SplitInput<'_>> = files
        .iter()
        .zip(&read)
        .map(|(f, (questions, answers))| SplitInput {
            name: &f.name,
            questions,
            answers,
        })
        .collect();
    Ok(score_splits(&inputs, rule))
}

/// The five metrics in percent, in table order.
pub(crate) fn percent_cells(m: &PopeMetrics) -> [f64; 5] {
    [m.accuracy, m.precision, m.recall, m.f1, m.yes_ratio].map(|x| 100.0 * x)
}

/// The metric column titles, in table order.
pub(crate) const METRIC_TITLES: [&str; 5] = ["acc", "prec", "recall", "F1", "yes%"];

impl fmt::Display for PopeSplitsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "POPE (rule: {})", self.rule)?;
        let info = self.info.describe();
        if !info.is_empty() {
            writeln!(f, "  {info}")?;
        }
        write!(f, "  {:<12}", "split")?;
        for title in METRIC_TITLES {
            write!(f, " {title:>7}")?;
        }
        writeln!(f, " {:>8} {:>9}", "scored", "unscored")?;
        for split in &self.splits {
            write!(f, "  {:<12}", split.name)?;
            for cell in percent_cells(&split.report.metrics) {
                write!(f, " {cell:>7.2}")?;
            }
            let info = &split.report.info;
            writeln!(
                f,
                " {:>8} {:>9}",
                info.scored_answers, info.unscored_answers
            )?;
        }
        write!(f, "  {:<12}", "average")?;
        for cell in percent_cells(&self.average) {
            write!(f, " {cell:>7.2}")?;
        }
        if self.averaged.len() != self.splits.len() {
            write!(f, "  (over {} only)", self.averaged.join(", "))?;
        }
        Ok(())
    }
}

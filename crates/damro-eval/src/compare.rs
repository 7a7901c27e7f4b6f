//! Side-by-side comparison of several answer files for the same questions
//! (e.g. plain decoding against DAMRO, or two models): each is scored as
//! usual, and the tables put one column group per method next to each
//! other.
//!
//! - [`compare_pope`]: per split and the average over splits, five metrics
//!   per method;
//! - [`compare_mme`]: per sub-task accuracy, accuracy+ and score, and the
//!   perception, cognition and hallucination totals, per method.
//!
//! Both results serialise to JSON (the full per-method reports).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::mme::{self, MmeReport, MmeSet, MmeTask};
use crate::pope::score::{PopeMetrics, PopeRule};
use crate::pope::splits::{
    METRIC_TITLES, PopeSplitsReport, SplitInput, percent_cells, score_splits,
};
use crate::pope::{AnswerSet, QuestionSet, read_answers, read_questions};
use crate::{Error, Result};

/// One POPE split's questions.
#[derive(Debug, Clone, Copy)]
pub struct PopeSplit<'a> {
    /// The split's name (`random`, ...).
    pub name: &'a str,
    /// Its questions.
    pub questions: &'a QuestionSet,
}

/// One method's POPE answers: one answer set per split, in split order.
#[derive(Debug, Clone, Copy)]
pub struct PopeMethod<'a> {
    /// The column group's title (`plain`, `damro`, a file name).
    pub name: &'a str,
    /// The answers, `answers[i]` for split `i`.
    pub answers: &'a [AnswerSet],
}

/// Every method's POPE report over the same splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PopeComparison {
    /// The answer rule used for all.
    pub rule: PopeRule,
    /// The split names, in order.
    pub splits: Vec<String>,
    /// One report per method, in the order given.
    pub methods: Vec<(String, PopeSplitsReport)>,
}

/// Scores each method over the splits with `rule`. Fails when a method
/// does not have one answer set per split.
pub fn compare_pope(
    splits: &[PopeSplit<'_>],
    methods: &[PopeMethod<'_>],
    rule: PopeRule,
) -> Result<PopeComparison> {
    let mut reports = Vec::with_capacity(methods.len());
    for method in methods {
        if method.answers.len() != splits.len() {
            return Err(Error::Comparison(format!(
                "method `{}` has {} answer file(s) for {} split(s); give one per split, in split order",
                method.name,
                method.answers.len(),
                splits.len()
            )));
        }
        let inputs: Vec<SplitInput<'_>> = splits
            .iter()
            .zip(method.answers)
            .map(|(split, answers)| SplitInput {
                name: split.name,
                questions: split.questions,
                answers,
            })
            .collect();
        reports.push((method.name.to_owned(), score_splits(&inputs, rule)));
    }
    Ok(PopeComparison {
        rule,
        splits: splits.iter().map(|s| s.name.to_owned()).collect(),
        methods: reports,
    })
}

/// [`compare_pope`] over files: `splits` are (name, question file),
/// `methods` are (name, one answers file per split).
pub fn compare_pope_files(
    splits: &[(String, PathBuf)],
    methods: &[(String, Vec<PathBuf>)],
    rule: PopeRule,
) -> Result<PopeComparison> {
    let questions: Vec<QuestionSet> = splits
        .iter()
        .map(|(_, path)| read_questions(path))
        .collect::<Result<_>>()?;
    let answers: Vec<Vec<AnswerSet>> = methods
        .iter()
        .map(|(_, files)| files.iter().map(|f| read_answers(f)).collect())
        .collect::<Result<_>>()?;
    let split_refs: Vec<PopeSplit<'_>> = splits
        .iter()
        .zip(&questions)
        .map(|((name, _), questions)| PopeSplit { name, questions })
        .collect();
    let method_refs: Vec<PopeMethod<'_>> = methods
        .iter()
        .zip(&answers)
        .map(|((name, _), answers)| PopeMethod { name, answers })
        .collect();
    compare_pope(&split_refs, &method_refs, rule)
}

/// Every method's MME report over the same questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmeComparison {
    /// One report per method, in the order given.
    pub methods: Vec<(String, MmeReport)>,
}

/// Scores each method's answers against `set` ([`mme::score()`]).
pub fn compare_mme(set: &MmeSet, methods: &[(&str, &AnswerSet)]) -> MmeComparison {
    MmeComparison {
        methods: methods
            .iter()
            .map(|(name, answers)| ((*name).to_owned(), mme::score(set, answers)))
            .collect(),
    }
}

/// [`compare_mme`] over (name, answers file) pairs.
pub fn compare_mme_files(set: &MmeSet, methods: &[(String, PathBuf)]) -> Result<MmeComparison> {
    let answers: Vec<AnswerSet> = methods
        .iter()
        .map(|(_, path)| read_answers(path))
        .collect::<Result<_>>()?;
    let pairs: Vec<(&str, &AnswerSet)> = methods
        .iter()
        .zip(&answers)
        .map(|((name, _), answers)| (name.as_str(), answers))
        .collect();
    Ok(compare_mme(set, &pairs))
}

/// Width of one number cell.
const CELL: usize = 8;
/// Width of the row-title column.
const ROW_TITLE: usize = 22;

/// Writes a two-line header: method names over their groups, then the
/// column titles repeated per group.
fn header(f: &mut fmt::Formatter<'_>, names: &[&str], titles: &[&str]) -> fmt::Result {
    let group = CELL * titles.len();
    write!(f, "  {:<ROW_TITLE$}", "")?;
    for name in names {
        let shown: String = name.chars().take(group - 1).collect();
        write!(f, " | {shown:<width$}", width = group - 1)?;
    }
    writeln!(f)?;
    write!(f, "  {:<ROW_TITLE$}", "")?;
    for _ in names {
        write!(f, " |")?;
        for title in titles {
            write!(f, "{title:>CELL$}")?;
        }
    }
    writeln!(f)
}

/// Writes one row: a title, then each group's cells (`None` shows `-`).
fn row(f: &mut fmt::Formatter<'_>, title: &str, groups: &[Vec<Option<f64>>]) -> fmt::Result {
    write!(f, "  {title:<ROW_TITLE$}")?;
    for cells in groups {
        write!(f, " |")?;
        for cell in cells {
            match cell {
                Some(value) => write!(f, "{value:>CELL$.2}")?,
                None => write!(f, "{:>CELL$}", "-")?,
            }
        }
    }
    writeln!(f)
}

fn pope_cells(metrics: &PopeMetrics) -> Vec<Option<f64>> {
    percent_cells(metrics).into_iter().map(Some).collect()
}

impl fmt::Display for PopeComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "POPE comparison (rule: {}; metrics in %)", self.rule)?;
        let names: Vec<&str> = self.methods.iter().map(|(n, _)| n.as_str()).collect();
        header(f, &names, &METRIC_TITLES)?;
        for (i, split) in self.splits.iter().enumerate() {
            let groups: Vec<Vec<Option<f64>>> = self
                .methods
                .iter()
                .map(|(_, r)| pope_cells(&r.splits[i].report.metrics))
                .collect();
            row(f, split, &groups)?;
        }
        let groups: Vec<Vec<Option<f64>>> = self
            .methods
            .iter()
            .map(|(_, r)| pope_cells(&r.average))
            .collect();
        row(f, "average", &groups)?;
        for (name, report) in &self.methods {
            let empty = report.empty_splits();
            if !empty.is_empty() {
                writeln!(f, "  {name}: no scored answer in {}", empty.join(", "))?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for MmeComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "MME comparison (acc and acc+ in %, score = acc + acc+)")?;
        let names: Vec<&str> = self.methods.iter().map(|(n, _)| n.as_str()).collect();
        header(f, &names, &["acc", "acc+", "score"])?;
        let present = MmeTask::all().filter(|task| {
            self.methods
                .iter()
                .any(|(_, report)| report.task(*task).is_some())
        });
        for task in present {
            let groups: Vec<Vec<Option<f64>>> = self
                .methods
                .iter()
                .map(|(_, report)| match report.task(task) {
                    Some(t) => vec![
                        Some(100.0 * t.accuracy),
                        Some(100.0 * t.accuracy_plus),
                        Some(t.score),
                    ],
                    None => vec![None; 3],
                })
                .collect();
            row(f, task.name(), &groups)?;
        }
        for (i, title) in [
            "perception (/2000)",
            "cognition (/800)",
            "hallucination (/800)",
        ]
        .into_iter()
        .enumerate()
        {
            let groups: Vec<Vec<Option<f64>>> = self
                .methods
                .iter()
                .map(|(_, r)| {
                    let total = [r.perception, r.cognition, r.hallucination][i];
                    vec![None, None, Some(total)]
                })
                .collect();
            row(f, title, &groups)?;
        }
        Ok(())
    }
}

//! What a run did ([`RunSummary`]), why it stopped early ([`StopReason`]),
//! and whether it did nothing useful at all ([`RunProblem`]).

use std::fmt;

use serde::Serialize;

use super::RunOptions;
use crate::BadRecord;
use crate::record::count_by_kind;

/// Why a run ended before its shard was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StopReason {
    /// [`RunOptions::max_records`] was reached.
    RecordLimit,
    /// [`RunOptions::max_consecutive_failures`] failures in a row.
    ConsecutiveFailures,
    /// [`RunOptions::stop`] was set.
    Interrupted,
}

/// A run that produced nothing: a command line should report it and exit
/// non-zero ([`RunSummary::problem`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunProblem {
    /// The shard has no valid job: an empty question file, or one whose
    /// lines are all unusable (`bad_input` of them in this shard).
    NoJobs {
        /// Unusable input lines in this shard.
        bad_input: usize,
    },
    /// The shard has jobs but none is answered, neither before nor by this
    /// run (a missing image folder, a model failing on everything).
    NothingAnswered {
        /// Jobs that failed in this run.
        failed: usize,
        /// Whether the image folder is missing.
        image_dir_missing: bool,
    },
}

impl fmt::Display for RunProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoJobs { bad_input: 0 } => write!(
                f,
                "nothing to answer: the question input has no question in this shard (empty file?)"
            ),
            Self::NoJobs { bad_input } => write!(
                f,
                "nothing to answer: none of the question input is usable ({bad_input} bad line(s) in this shard; is it the right file?)"
            ),
            Self::NothingAnswered {
                failed,
                image_dir_missing,
            } => {
                write!(f, "nothing answered: all {failed} attempted job(s) failed")?;
                if *image_dir_missing {
                    write!(f, "; the image folder does not exist")?;
                }
                Ok(())
            }
        }
    }
}

/// What a run did. Serialises to JSON; `Display` is a plain-text table.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The shard, as `i/N`.
    pub shard: String,
    /// Jobs in this shard.
    pub jobs_in_shard: usize,
    /// Jobs found answered in the answers file at start.
    pub answered_before: usize,
    /// Jobs answered and written by this run.
    pub answered_now: usize,
    /// Jobs of this shard still without an answer.
    pub remaining: usize,
    /// Bytes of a torn last line removed at start (0 if none).
    pub torn_tail_bytes: u64,
    /// Complete answer lines that did not parse (their jobs were redone).
    pub unusable_answer_lines: Vec<BadRecord>,
    /// Answer lines for this shard's ids with a prompt no job has (kept;
    /// the jobs were asked again).
    pub stale_answer_lines: usize,
    /// Whether [`RunOptions::image_dir`] is set but is not a folder.
    pub image_dir_missing: bool,
    /// Problems of the input in this shard (set by the benchmark runs).
    pub bad_input: Vec<BadRecord>,
    /// Jobs that failed in this run (missing image, answer error).
    pub failed: Vec<BadRecord>,
    /// Set when the run stopped early.
    pub stopped: Option<StopReason>,
    /// Wall-clock seconds of the run.
    pub elapsed_s: f64,
}

impl RunSummary {
    /// A summary before any job was run.
    pub(super) fn empty(
        options: &RunOptions,
        jobs_in_shard: usize,
        answered_before: usize,
    ) -> Self {
        Self {
            shard: options.shard.to_string(),
            jobs_in_shard,
            answered_before,
            answered_now: 0,
            remaining: 0,
            torn_tail_bytes: 0,
            unusable_answer_lines: Vec::new(),
            stale_answer_lines: 0,
            image_dir_missing: false,
            bad_input: Vec::new(),
            failed: Vec::new(),
            stopped: None,
            elapsed_s: 0.0,
        }
    }

    /// Whether every job of the shard has an answer (also true for a shard
    /// without jobs: check [`Self::problem`] too).
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    /// Whether the run produced nothing usable: no job in the shard, or no
    /// job answered at all. A command line should exit non-zero then.
    pub fn problem(&self) -> Option<RunProblem> {
        if self.jobs_in_shard == 0 {
            Some(RunProblem::NoJobs {
                bad_input: self.bad_input.len(),
            })
        } else if self.answered_before + self.answered_now == 0 {
            Some(RunProblem::NothingAnswered {
                failed: self.failed.len(),
                image_dir_missing: self.image_dir_missing,
            })
        } else {
            None
        }
    }
}

/// `" (missing_image 2, answer_failed 1)"`, or nothing.
fn kinds(bad: &[BadRecord]) -> String {
    let parts: Vec<String> = count_by_kind(bad)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("  ({})", parts.join(", "))
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "run, shard {}", self.shard)?;
        writeln!(f, "  jobs in shard        {:>8}", self.jobs_in_shard)?;
        writeln!(f, "  answered before      {:>8}", self.answered_before)?;
        writeln!(f, "  answered now         {:>8}", self.answered_now)?;
        let failed = self.failed.len();
        writeln!(
            f,
            "  failed now           {failed:>8}{}",
            kinds(&self.failed)
        )?;
        writeln!(f, "  remaining            {:>8}", self.remaining)?;
        let bad = self.bad_input.len();
        writeln!(
            f,
            "  bad input lines      {bad:>8}{}",
            kinds(&self.bad_input)
        )?;
        let unusable = self.unusable_answer_lines.len();
        writeln!(f, "  unusable answer lines{unusable:>8}")?;
        if self.stale_answer_lines > 0 {
            writeln!(f, "  stale answer lines   {:>8}", self.stale_answer_lines)?;
        }
        writeln!(
            f,
            "  torn tail removed    {:>8} bytes",
            self.torn_tail_bytes
        )?;
        if let Some(reason) = self.stopped {
            let reason = match reason {
                StopReason::RecordLimit => "record limit reached",
                StopReason::ConsecutiveFailures => "too many failures in a row",
                StopReason::Interrupted => "interrupted",
            };
            writeln!(f, "  stopped early: {reason}")?;
        }
        if let Some(problem) = self.problem() {
            writeln!(f, "  PROBLEM: {problem}")?;
        }
        write!(f, "  elapsed              {:>8.1} s", self.elapsed_s)
    }
}

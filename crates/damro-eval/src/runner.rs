//! The evaluation runner: asks an answer function about every job of a
//! shard and appends one [`AnswerRecord`] line per job to an answers file,
//! resumably and crash-safely.
//!
//! The runner knows nothing about models: the caller passes any
//! [`Answerer`], usually a closure `|job: &Job, image: &Path| -> Result<String, E>`
//! that applies the chat template to [`Job::prompt`], loads the image and
//! decodes. Tests pass a fake.
//!
//! # Guarantees
//! - **Append and flush per record.** Each record is serialised to one line
//!   and written with a single `write_all` of the whole line, then (by
//!   default) `sync_data`. A killed process loses at most the record being
//!   answered; a failed write is rolled back by truncating to the previous
//!   length.
//! - **Resume.** On start the answers file is read; every `question_id`
//!   on a complete, parseable line counts as answered and is skipped.
//! - **Torn last line.** Our writer ends every record with `\n`, so bytes
//!   after the last `\n` can only be an interrupted write (or a crash that
//!   left garbage, e.g. NUL bytes after a power cut). They are truncated
//!   away before anything is appended, reported through
//!   [`Progress::note`] and [`RunSummary::torn_tail_bytes`], and the
//!   question is redone. Complete lines that do not parse are left in place,
//!   reported in [`RunSummary::unusable_answer_lines`], and their questions
//!   are redone (scorers and the merge skip such lines and report them).
//! - **One writer per file.** The answers file is locked
//!   (`File::try_lock`, retried for up to 1 s) for the whole run; a second runner on the same
//!   file fails with [`Error::AnswersLocked`](crate::Error::AnswersLocked). File systems without
//!   locking support run unlocked.
//! - **Bad records do not stop the run.** A missing or unreadable image or
//!   an error from the answer function is recorded as a [`BadRecord`] (and
//!   nothing is written, so a later run retries it); the run goes on unless
//!   [`RunOptions::max_consecutive_failures`] says otherwise.
//! - **Sharding** follows [`crate::shard`]: jobs whose position is not in
//!   [`RunOptions::shard`] are ignored.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::answers_file::AnswersFile;
use crate::pope::{AnswerRecord, PopeQuestion, QuestionSet};
use crate::progress::Progress;
use crate::record::count_by_kind;
use crate::{BadRecord, BadRecordKind, QuestionId, Result, Shard};

/// One unit of work: ask about `image` with `prompt`, record it as `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The id written to the answer record.
    pub id: QuestionId,
    /// The image file, relative to [`RunOptions::image_dir`] (or absolute).
    pub image: String,
    /// The prompt text, before any chat template.
    pub prompt: String,
    /// The job's position for sharding: its 0-based line index in the
    /// question file (see [`crate::shard`]).
    pub position: usize,
}

impl Job {
    /// The job for a POPE question, with the authors' prompt.
    pub fn pope(question: &PopeQuestion) -> Self {
        Self {
            id: question.question_id.clone(),
            image: question.image.clone(),
            prompt: question.prompt(),
            position: question.position,
        }
    }
}

/// The jobs of every valid question, in file order.
pub fn pope_jobs(questions: &QuestionSet) -> Vec<Job> {
    questions.questions.iter().map(Job::pope).collect()
}

/// Produces the model's output for one job. Implemented for every
/// `FnMut(&Job, &Path) -> Result<String, E>` with `E: Display`; the path is
/// the image file, already checked to exist and open.
pub trait Answerer {
    /// The answer function's error; it becomes a per-record
    /// [`BadRecordKind::AnswerFailed`], not a run failure.
    type Error: fmt::Display;

    /// Answers `job` about the image at `image`.
    fn answer(&mut self, job: &Job, image: &Path) -> std::result::Result<String, Self::Error>;
}

impl<F, E> Answerer for F
where
    F: FnMut(&Job, &Path) -> std::result::Result<String, E>,
    E: fmt::Display,
{
    type Error = E;

    fn answer(&mut self, job: &Job, image: &Path) -> std::result::Result<String, E> {
        self(job, image)
    }
}

/// How to run; build with [`RunOptions::new`] and set fields.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The answers file (created if absent, appended to otherwise). With
    /// several shards, give each its own file, e.g. [`Shard::file_name`].
    pub answers: PathBuf,
    /// Folder that job images are relative to.
    pub image_dir: PathBuf,
    /// Written to every record's `model_id`.
    pub model_id: String,
    /// Written to every record's `mode` when set (e.g. `"damro"`).
    pub mode: Option<String>,
    /// Which part of the jobs this process does.
    pub shard: Shard,
    /// Stop after attempting this many jobs in this run (answered or
    /// failed); `None` runs to the end.
    pub max_records: Option<usize>,
    /// Stop after this many failed jobs in a row (e.g. a model that fails
    /// on everything); `None` never stops for failures.
    pub max_consecutive_failures: Option<usize>,
    /// `sync_data` after every record (default `true`); without it a record
    /// survives a killed process but not a power cut.
    pub sync_each_record: bool,
    /// Checked before every job; set it (e.g. from a Ctrl-C handler) to stop
    /// cleanly after the record in flight.
    pub stop: Option<Arc<AtomicBool>>,
}

impl RunOptions {
    /// Options for one whole-file run writing to `answers`.
    pub fn new(
        answers: impl Into<PathBuf>,
        image_dir: impl Into<PathBuf>,
        model_id: impl Into<String>,
    ) -> Self {
        Self {
            answers: answers.into(),
            image_dir: image_dir.into(),
            model_id: model_id.into(),
            mode: None,
            shard: Shard::ALL,
            max_records: None,
            max_consecutive_failures: None,
            sync_each_record: true,
            stop: None,
        }
    }
}

/// Why a run ended before its shard was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// [`RunOptions::max_records`] was reached.
    RecordLimit,
    /// [`RunOptions::max_consecutive_failures`] failures in a row.
    ConsecutiveFailures,
    /// [`RunOptions::stop`] was set.
    Interrupted,
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
    /// Problems of the input file in this shard (set by [`run_pope`]).
    pub bad_input: Vec<BadRecord>,
    /// Jobs that failed in this run (missing image, answer error).
    pub failed: Vec<BadRecord>,
    /// Set when the run stopped early.
    pub stopped: Option<StopReason>,
    /// Wall-clock seconds of the run.
    pub elapsed_s: f64,
}

impl RunSummary {
    /// Whether every job of the shard has an answer.
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }
}

/// Runs the POPE questions of `questions` (see [`run`]), adding the
/// question file's bad lines that fall in this shard to
/// [`RunSummary::bad_input`] and reporting them to `progress`.
pub fn run_pope(
    questions: &QuestionSet,
    options: &RunOptions,
    answerer: impl Answerer,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let bad_input: Vec<BadRecord> = questions
        .bad
        .iter()
        .filter(|b| {
            b.line
                .is_none_or(|line| options.shard.contains(line.saturating_sub(1)))
        })
        .cloned()
        .collect();
    run_jobs(
        &pope_jobs(questions),
        bad_input,
        options,
        answerer,
        progress,
    )
}

/// Runs every job of `options.shard` that the answers file does not answer
/// yet, appending one record per answered job (see the module docs).
///
/// Errors only for what stops the whole run: the answers file cannot be
/// opened, locked, read, truncated or written.
pub fn run(
    jobs: &[Job],
    options: &RunOptions,
    answerer: impl Answerer,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    run_jobs(jobs, Vec::new(), options, answerer, progress)
}

/// [`run`], with the input file's problems in this shard reported to
/// `progress` once it has started and kept in the summary.
fn run_jobs(
    jobs: &[Job],
    bad_input: Vec<BadRecord>,
    options: &RunOptions,
    mut answerer: impl Answerer,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let started = Instant::now();
    let (mut out, recovered) = AnswersFile::open(&options.answers, options.sync_each_record)?;
    let mut answered = recovered.answered;
    let shard_jobs: Vec<&Job> = jobs
        .iter()
        .filter(|j| options.shard.contains(j.position))
        .collect();
    let answered_before = shard_jobs
        .iter()
        .filter(|j| answered.contains(&j.id))
        .count();
    let mut summary = RunSummary {
        shard: options.shard.to_string(),
        jobs_in_shard: shard_jobs.len(),
        answered_before,
        answered_now: 0,
        remaining: 0,
        torn_tail_bytes: recovered.torn_tail_bytes,
        unusable_answer_lines: recovered.malformed,
        bad_input,
        failed: Vec::new(),
        stopped: None,
        elapsed_s: 0.0,
    };
    progress.start(shard_jobs.len() - answered_before, answered_before);
    if summary.torn_tail_bytes > 0 {
        progress.note(&format!(
            "removed a torn last line ({} bytes) from `{}`; its question is redone",
            summary.torn_tail_bytes,
            options.answers.display()
        ));
    }
    for bad in &summary.unusable_answer_lines {
        progress.note(&format!(
            "unusable line in `{}` ({bad}); its question is redone",
            options.answers.display()
        ));
    }
    for bad in &summary.bad_input {
        progress.bad_record(bad);
    }

    let mut attempts = 0usize;
    let mut failures_in_a_row = 0usize;
    for job in shard_jobs.iter().copied() {
        if answered.contains(&job.id) {
            continue;
        }
        if options
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            summary.stopped = Some(StopReason::Interrupted);
            break;
        }
        if options.max_records.is_some_and(|max| attempts >= max) {
            summary.stopped = Some(StopReason::RecordLimit);
            break;
        }
        if options
            .max_consecutive_failures
            .is_some_and(|max| max > 0 && failures_in_a_row >= max)
        {
            summary.stopped = Some(StopReason::ConsecutiveFailures);
            break;
        }
        attempts += 1;
        match attempt(job, options, &mut answerer) {
            Ok(record) => {
                out.append(&record)?;
                answered.insert(job.id.clone());
                summary.answered_now += 1;
                failures_in_a_row = 0;
                progress.answered(&record);
            }
            Err(bad) => {
                failures_in_a_row += 1;
                progress.bad_record(&bad);
                summary.failed.push(bad);
            }
        }
    }
    summary.remaining = shard_jobs
        .iter()
        .filter(|j| !answered.contains(&j.id))
        .count();
    summary.elapsed_s = started.elapsed().as_secs_f64();
    progress.finish(&summary);
    Ok(summary)
}

/// Checks the image and asks the answerer; a failure is a bad record.
fn attempt(
    job: &Job,
    options: &RunOptions,
    answerer: &mut impl Answerer,
) -> std::result::Result<AnswerRecord, BadRecord> {
    let image = options.image_dir.join(&job.image);
    let bad = |kind, detail: String| BadRecord {
        line: Some(job.position + 1),
        id: Some(job.id.clone()),
        kind,
        detail,
    };
    check_image(&image).map_err(|(kind, detail)| bad(kind, detail))?;
    let output = answerer
        .answer(job, &image)
        .map_err(|e| bad(BadRecordKind::AnswerFailed, e.to_string()))?;
    Ok(AnswerRecord {
        question_id: job.id.clone(),
        prompt: job.prompt.clone(),
        output,
        model_id: options.model_id.clone(),
        image: job.image.clone(),
        mode: options.mode.clone(),
    })
}

fn check_image(path: &Path) -> std::result::Result<(), (BadRecordKind, String)> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err((
            BadRecordKind::MissingImage,
            format!("`{shown}` does not exist"),
        )),
        Err(e) => Err((BadRecordKind::UnreadableImage, format!("`{shown}`: {e}"))),
        Ok(meta) if !meta.is_file() => Err((
            BadRecordKind::UnreadableImage,
            format!("`{shown}` is not a file"),
        )),
        Ok(_) => File::open(path)
            .map(drop)
            .map_err(|e| (BadRecordKind::UnreadableImage, format!("`{shown}`: {e}"))),
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = |bad: &[BadRecord]| -> String {
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
        };
        writeln!(f, "run, shard {}", self.shard)?;
        writeln!(f, "  jobs in shard        {:>8}", self.jobs_in_shard)?;
        writeln!(f, "  answered before      {:>8}", self.answered_before)?;
        writeln!(f, "  answered now         {:>8}", self.answered_now)?;
        writeln!(
            f,
            "  failed now           {:>8}{}",
            self.failed.len(),
            kinds(&self.failed)
        )?;
        writeln!(f, "  remaining            {:>8}", self.remaining)?;
        writeln!(
            f,
            "  bad input lines      {:>8}{}",
            self.bad_input.len(),
            kinds(&self.bad_input)
        )?;
        writeln!(
            f,
            "  unusable answer lines{:>8}",
            self.unusable_answer_lines.len()
        )?;
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
        write!(f, "  elapsed              {:>8.1} s", self.elapsed_s)
    }
}

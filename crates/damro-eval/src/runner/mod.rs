//! The evaluation runner: asks an answer function about every job of a
//! shard, a batch at a time, and appends one [`AnswerRecord`] line per job
//! to an answers file, resumably and crash-safely.
//!
//! The runner knows nothing about models: the caller passes a
//! [`BatchAnswerer`] (usually a closure
//! `|jobs: &[Job], images: &[PathBuf]| -> Vec<Result<String, E>>` that
//! applies the chat template to each [`Job::prompt`], loads the images and
//! decodes them together) to [`run_batched`], or a one-job [`Answerer`]
//! (`|job: &Job, image: &Path| -> Result<String, E>`) to [`run`]. Tests
//! pass fakes.
//!
//! # Guarantees
//! - **Append and sync per batch.** The records of a batch are serialised
//!   to one line each and written with a single `write_all`, then (by
//!   default) `sync_data`. A killed process loses at most the batch being
//!   answered; a failed write is rolled back by truncating to the previous
//!   length. With [`run`], batches have one job.
//! - **Resume.** On start the answers file is read; a job counts as
//!   answered when a complete, parseable line has its `question_id` and its
//!   prompt (a line without a prompt answers every job with its id). Jobs
//!   are identified by id *and* prompt because MME asks two questions per
//!   `question_id`. Lines for this run's ids whose prompt no job of this
//!   run has (the prompt changed since) are kept, counted in
//!   [`RunSummary::stale_answer_lines`] and warned about.
//! - **Torn last line.** Our writer ends every record with `\n`, so bytes
//!   after the last `\n` can only be an interrupted write (or a crash that
//!   left garbage, e.g. NUL bytes after a power cut). They are truncated
//!   away before anything is appended, reported through
//!   [`Progress::warn`] and [`RunSummary::torn_tail_bytes`], and the jobs
//!   are redone. Complete lines that do not parse are left in place,
//!   reported in [`RunSummary::unusable_answer_lines`], and their jobs are
//!   redone (scorers and the merge skip such lines and report them).
//! - **Not an answers file.** A file with a question line, or one of
//!   binary lines and no answer at all, is refused with
//!   [`Error::NotAnswersFile`](crate::Error::NotAnswersFile) before
//!   anything is appended to it.
//! - **One writer per file.** The answers file is locked
//!   (`File::try_lock`, retried for up to 1 s) for the whole run; a second
//!   runner on the same file fails with
//!   [`Error::AnswersLocked`](crate::Error::AnswersLocked). File systems
//!   without locking support run unlocked.
//! - **Bad records do not stop the run.** A missing or unreadable image or
//!   an error from the answer function is recorded as a [`BadRecord`] (and
//!   nothing is written, so a later run retries it); the run goes on unless
//!   [`RunOptions::max_consecutive_failures`] says otherwise.
//! - **Nothing done is said.** [`RunSummary::problem`] tells when the shard
//!   had no job or nothing was answered at all (an empty question file, a
//!   missing image folder), so a command line can exit non-zero.
//! - **Sharding** follows [`crate::shard`]: jobs whose position is not in
//!   [`RunOptions::shard`] are ignored.

mod engine;
mod summary;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::pope::{AnswerRecord, PopeQuestion, QuestionSet};
use crate::progress::Progress;
use crate::{BadRecord, QuestionId, Result, Shard};

pub use summary::{RunProblem, RunSummary, StopReason};

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

/// Extra fields a benchmark writes into each record (MME's `gt_answer` and
/// `category`), one per job, in job order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordExtras {
    /// The record's `gt_answer`.
    pub gt_answer: Option<String>,
    /// The record's `category`.
    pub category: Option<String>,
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
    /// [`BadRecordKind::AnswerFailed`](crate::BadRecordKind::AnswerFailed),
    /// not a run failure.
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

/// Produces the model's outputs for a batch of jobs. Implemented for every
/// `FnMut(&[Job], &[PathBuf]) -> Vec<Result<String, E>>` with `E: Display`.
pub trait BatchAnswerer {
    /// The answer function's error; it becomes a per-record
    /// [`BadRecordKind::AnswerFailed`](crate::BadRecordKind::AnswerFailed).
    type Error: fmt::Display;

    /// Answers every job of `jobs`; `images[i]` is the image file of
    /// `jobs[i]`, already checked to exist and open. Returns one result per
    /// job, in order (a batch that fails as a whole returns the error for
    /// every job, see [`whole_batch`]). Any other number of results fails
    /// every job of the batch.
    fn answer_batch(
        &mut self,
        jobs: &[Job],
        images: &[PathBuf],
    ) -> Vec<std::result::Result<String, Self::Error>>;
}

impl<F, E> BatchAnswerer for F
where
    F: FnMut(&[Job], &[PathBuf]) -> Vec<std::result::Result<String, E>>,
    E: fmt::Display,
{
    type Error = E;

    fn answer_batch(
        &mut self,
        jobs: &[Job],
        images: &[PathBuf],
    ) -> Vec<std::result::Result<String, E>> {
        self(jobs, images)
    }
}

/// Turns a whole-batch result (e.g. one batched `generate` call) into the
/// per-job results a [`BatchAnswerer`] returns: the outputs as they are, or
/// the error's text for each of `jobs` jobs.
pub fn whole_batch<E: fmt::Display>(
    result: std::result::Result<Vec<String>, E>,
    jobs: usize,
) -> Vec<std::result::Result<String, String>> {
    match result {
        Ok(outputs) => outputs.into_iter().map(Ok).collect(),
        Err(e) => {
            let message = e.to_string();
            (0..jobs).map(|_| Err(message.clone())).collect()
        }
    }
}

/// A one-job answerer used as a batch answerer (batches of one).
struct OneByOne<A>(A);

impl<A: Answerer> BatchAnswerer for OneByOne<A> {
    type Error = A::Error;

    fn answer_batch(
        &mut self,
        jobs: &[Job],
        images: &[PathBuf],
    ) -> Vec<std::result::Result<String, A::Error>> {
        jobs.iter()
            .zip(images)
            .map(|(job, image)| self.0.answer(job, image))
            .collect()
    }
}

/// How to run; build with [`RunOptions::new`] and set fields.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The answers file (created if absent, appended to otherwise). With
    /// several shards, give each its own file, e.g. [`Shard::file_name`].
    pub answers: PathBuf,
    /// Folder that job images are relative to (absolute image paths ignore
    /// it; an empty path means "as given").
    pub image_dir: PathBuf,
    /// Written to every record's `model_id`.
    pub model_id: String,
    /// Written to every record's `mode` when set (e.g. `"damro"`).
    pub mode: Option<String>,
    /// Which part of the jobs this process does.
    pub shard: Shard,
    /// Jobs per call of a [`BatchAnswerer`] in [`run_batched`] (default 1;
    /// 0 counts as 1). [`run`] always uses 1.
    pub batch_size: usize,
    /// Stop after attempting this many jobs in this run (answered or
    /// failed); `None` runs to the end.
    pub max_records: Option<usize>,
    /// Stop after this many failed jobs in a row (e.g. a model that fails
    /// on everything), checked between batches; `None` never stops for
    /// failures.
    pub max_consecutive_failures: Option<usize>,
    /// `sync_data` after every batch (default `true`); without it a record
    /// survives a killed process but not a power cut.
    pub sync_each_record: bool,
    /// Checked before every batch; set it (e.g. from a Ctrl-C handler) to
    /// stop cleanly after the batch in flight.
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
            batch_size: 1,
            max_records: None,
            max_consecutive_failures: None,
            sync_each_record: true,
            stop: None,
        }
    }
}

/// The question file's bad lines that fall in `shard`.
fn bad_input_in_shard(bad: &[BadRecord], shard: Shard) -> Vec<BadRecord> {
    bad.iter()
        .filter(|b| {
            b.line
                .is_none_or(|line| shard.contains(line.saturating_sub(1)))
        })
        .cloned()
        .collect()
}

/// Runs the POPE questions of `questions` one at a time (see [`run`]),
/// adding the question file's bad lines that fall in this shard to
/// [`RunSummary::bad_input`] and reporting them to `progress`.
pub fn run_pope(
    questions: &QuestionSet,
    options: &RunOptions,
    answerer: impl Answerer,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let input = engine::Input {
        jobs: &pope_jobs(questions),
        extras: None,
        bad_input: bad_input_in_shard(&questions.bad, options.shard),
    };
    engine::run_jobs(input, options, 1, OneByOne(answerer), progress)
}

/// [`run_pope`] with a [`BatchAnswerer`], [`RunOptions::batch_size`] jobs
/// per call.
pub fn run_pope_batched(
    questions: &QuestionSet,
    options: &RunOptions,
    answerer: impl BatchAnswerer,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let input = engine::Input {
        jobs: &pope_jobs(questions),
        extras: None,
        bad_input: bad_input_in_shard(&questions.bad, options.shard),
    };
    engine::run_jobs(input, options, options.batch_size, answerer, progress)
}

/// Runs every job of `options.shard` that the answers file does not answer
/// yet, one job at a time, appending one record per answered job (see the
/// module docs).
///
/// Errors only for what stops the whole run: the answers file cannot be
/// opened, locked, read, truncated or written, or is not an answers file.
pub fn run(
    jobs: &[Job],
    options: &RunOptions,
    answerer: impl Answerer,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let input = engine::Input {
        jobs,
        extras: None,
        bad_input: Vec::new(),
    };
    engine::run_jobs(input, options, 1, OneByOne(answerer), progress)
}

/// [`run`] with a [`BatchAnswerer`]: up to [`RunOptions::batch_size`] jobs
/// per call, their records appended (and synced) together once the batch
/// is answered.
pub fn run_batched(
    jobs: &[Job],
    options: &RunOptions,
    answerer: impl BatchAnswerer,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let input = engine::Input {
        jobs,
        extras: None,
        bad_input: Vec::new(),
    };
    engine::run_jobs(input, options, options.batch_size, answerer, progress)
}

/// [`run_batched`] for benchmarks whose records carry extra fields:
/// `extras[i]` goes into the record of `jobs[i]`; `bad_input` (the input's
/// problems in this shard) is reported and kept in the summary. Used by
/// [`crate::mme::run`].
pub fn run_batched_with_extras(
    jobs: &[Job],
    extras: &[RecordExtras],
    bad_input: Vec<BadRecord>,
    options: &RunOptions,
    answerer: impl BatchAnswerer,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let input = engine::Input {
        jobs,
        extras: Some(extras),
        bad_input,
    };
    engine::run_jobs(input, options, options.batch_size, answerer, progress)
}

/// Builds the record of an answered job.
fn record(
    job: &Job,
    output: String,
    options: &RunOptions,
    extras: Option<&RecordExtras>,
) -> AnswerRecord {
    AnswerRecord {
        question_id: job.id.clone(),
        prompt: job.prompt.clone(),
        output,
        model_id: options.model_id.clone(),
        image: job.image.clone(),
        mode: options.mode.clone(),
        gt_answer: extras.and_then(|e| e.gt_answer.clone()),
        category: extras.and_then(|e| e.category.clone()),
    }
}

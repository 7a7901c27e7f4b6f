//! The run loop behind every public run function: open and recover the
//! answers file, then answer the shard's pending jobs a batch at a time.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{BatchAnswerer, Job, RecordExtras, RunOptions, RunSummary, StopReason, record};
use crate::answers_file::{Answered, AnswersFile};
use crate::pope::AnswerRecord;
use crate::progress::Progress;
use crate::{BadRecord, BadRecordKind, Result};

/// What to run.
pub(super) struct Input<'a> {
    /// Every job of the input (all shards).
    pub jobs: &'a [Job],
    /// Extra record fields, indexed like `jobs`.
    pub extras: Option<&'a [RecordExtras]>,
    /// The input's problems in this shard.
    pub bad_input: Vec<BadRecord>,
}

/// Counters the stop conditions read.
#[derive(Default)]
struct Tally {
    attempts: usize,
    failures_in_a_row: usize,
}

/// Runs the pending jobs of `options.shard`, `batch_size` per call.
pub(super) fn run_jobs(
    mut input: Input<'_>,
    options: &RunOptions,
    batch_size: usize,
    mut answerer: impl BatchAnswerer,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let started = Instant::now();
    let (mut out, recovered) = AnswersFile::open(&options.answers, options.sync_each_record)?;
    let mut answered = recovered.answered;
    let shard_jobs: Vec<usize> = (0..input.jobs.len())
        .filter(|&i| options.shard.contains(input.jobs[i].position))
        .collect();
    let in_shard = || shard_jobs.iter().map(|&i| &input.jobs[i]);
    let answered_before = in_shard().filter(|j| answered.contains(j)).count();
    let mut summary = RunSummary::empty(options, shard_jobs.len(), answered_before);
    summary.torn_tail_bytes = recovered.torn_tail_bytes;
    summary.unusable_answer_lines = recovered.malformed;
    summary.stale_answer_lines = answered.stale(in_shard());
    summary.bad_input = std::mem::take(&mut input.bad_input);
    summary.image_dir_missing =
        !options.image_dir.as_os_str().is_empty() && !options.image_dir.is_dir();
    let pending = pending_jobs(input.jobs, &shard_jobs, &answered);
    progress.start(pending.len(), answered_before);
    report_start(&summary, options, progress);

    let mut tally = Tally::default();
    let mut next = 0;
    while next < pending.len() {
        if let Some(reason) = stop_reason(options, &tally) {
            summary.stopped = Some(reason);
            break;
        }
        let room = options
            .max_records
            .map_or(usize::MAX, |max| max - tally.attempts);
        let take = batch_size.max(1).min(room).min(pending.len() - next);
        let batch = &pending[next..next + take];
        next += take;
        tally.attempts += take;
        let outcomes = answer_batch(&input, batch, options, &mut answerer);
        let records: Vec<AnswerRecord> = outcomes.iter().flatten().cloned().collect();
        out.append_all(&records)?;
        for outcome in outcomes {
            match outcome {
                Ok(record) => {
                    answered.insert(record.question_id.clone(), record.prompt.clone());
                    summary.answered_now += 1;
                    tally.failures_in_a_row = 0;
                    progress.answered(&record);
                }
                Err(bad) => {
                    tally.failures_in_a_row += 1;
                    progress.bad_record(&bad);
                    summary.failed.push(bad);
                }
            }
        }
    }
    summary.remaining = in_shard().filter(|j| !answered.contains(j)).count();
    summary.elapsed_s = started.elapsed().as_secs_f64();
    if let Some(problem) = summary.problem() {
        progress.warn(&format!("{problem}"));
    }
    progress.finish(&summary);
    Ok(summary)
}

/// The shard's jobs not answered yet, each (id, prompt) once, in order.
fn pending_jobs(jobs: &[Job], shard_jobs: &[usize], answered: &Answered) -> Vec<usize> {
    let mut seen = HashSet::new();
    shard_jobs
        .iter()
        .copied()
        .filter(|&i| {
            let job = &jobs[i];
            !answered.contains(job) && seen.insert((&job.id, job.prompt.as_str()))
        })
        .collect()
}

/// Tells the reporter what was found in the files before the first job.
fn report_start(summary: &RunSummary, options: &RunOptions, progress: &mut dyn Progress) {
    let answers = options.answers.display();
    if summary.torn_tail_bytes > 0 {
        progress.warn(&format!(
            "removed a torn last line ({} bytes) from `{answers}`; its question is redone",
            summary.torn_tail_bytes
        ));
    }
    for bad in &summary.unusable_answer_lines {
        progress.warn(&format!(
            "unusable line in `{answers}` ({bad}); its question is redone"
        ));
    }
    if summary.stale_answer_lines > 0 {
        progress.warn(&format!(
            "`{answers}` has {} record(s) for this run's questions with a different prompt; they are kept and the questions asked again with the new prompt",
            summary.stale_answer_lines
        ));
    }
    if summary.image_dir_missing {
        progress.warn(&format!(
            "the image folder `{}` does not exist or is not a folder",
            options.image_dir.display()
        ));
    }
    for bad in &summary.bad_input {
        progress.bad_record(bad);
    }
}

/// Why to stop before the next batch, if at all.
fn stop_reason(options: &RunOptions, tally: &Tally) -> Option<StopReason> {
    if options
        .stop
        .as_ref()
        .is_some_and(|s| s.load(Ordering::Relaxed))
    {
        Some(StopReason::Interrupted)
    } else if options.max_records.is_some_and(|max| tally.attempts >= max) {
        Some(StopReason::RecordLimit)
    } else if options
        .max_consecutive_failures
        .is_some_and(|max| max > 0 && tally.failures_in_a_row >= max)
    {
        Some(StopReason::ConsecutiveFailures)
    } else {
        None
    }
}

/// Checks the batch's images, asks the answerer about the jobs whose image
/// is fine, and returns one outcome per job, in batch order.
fn answer_batch(
    input: &Input<'_>,
    batch: &[usize],
    options: &RunOptions,
    answerer: &mut impl BatchAnswerer,
) -> Vec<std::result::Result<AnswerRecord, BadRecord>> {
    let checked: Vec<std::result::Result<(usize, PathBuf), BadRecord>> = batch
        .iter()
        .map(|&index| {
            let job = &input.jobs[index];
            let image = options.image_dir.join(&job.image);
            check_image(&image)
                .map(|()| (index, image))
                .map_err(|(kind, detail)| bad(job, kind, detail))
        })
        .collect();
    let (jobs, images): (Vec<Job>, Vec<PathBuf>) = checked
        .iter()
        .flatten()
        .map(|(index, image)| (input.jobs[*index].clone(), image.clone()))
        .unzip();
    let mut results = if jobs.is_empty() {
        Vec::new()
    } else {
        answerer.answer_batch(&jobs, &images)
    };
    let miscounted = (results.len() != jobs.len()).then(|| {
        format!(
            "the answer function returned {} answers for a batch of {} jobs",
            results.len(),
            jobs.len()
        )
    });
    if miscounted.is_some() {
        results.clear();
    }
    let mut results = results.into_iter();
    checked
        .into_iter()
        .map(|outcome| {
            let (index, _) = outcome?;
            let job = &input.jobs[index];
            let failed = |detail: String| bad(job, BadRecordKind::AnswerFailed, detail);
            match (results.next(), &miscounted) {
                (Some(Ok(output)), None) => {
                    let extras = input.extras.and_then(|e| e.get(index));
                    Ok(record(job, output, options, extras))
                }
                (Some(Err(e)), None) => Err(failed(e.to_string())),
                (_, Some(detail)) => Err(failed(detail.clone())),
                (None, None) => Err(failed("the answer function returned no answer".into())),
            }
        })
        .collect()
}

fn bad(job: &Job, kind: BadRecordKind, detail: String) -> BadRecord {
    BadRecord {
        line: Some(job.position + 1),
        id: Some(job.id.clone()),
        kind,
        detail,
    }
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

//! Batched answering: batches give the same records as one job at a time,
//! records are written per finished batch (a run killed inside a batch
//! resumes with every question answered exactly once), and runs that did
//! nothing or were pointed at the wrong file say so.

#![allow(clippy::unwrap_used)]

mod common;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{Scratch, assert_exactly_once, fake_answer, id_counts};
use damro_eval::runner::{Job, RunProblem, StopReason, run_pope, run_pope_batched, whole_batch};
use damro_eval::{BadRecordKind, Error, RunOptions, Silent, pope};

/// A deterministic model: the answer depends only on the job.
fn deterministic(job: &Job) -> String {
    format!(
        "{} ({} chars asked)",
        fake_answer(&job.id),
        job.prompt.len()
    )
}

/// A batch answerer that records the size of every batch it is given.
fn recording(
    sizes: &RefCell<Vec<usize>>,
) -> impl FnMut(&[Job], &[PathBuf]) -> Vec<Result<String, String>> + '_ {
    move |jobs, images| {
        assert_eq!(jobs.len(), images.len());
        for (job, image) in jobs.iter().zip(images) {
            assert!(image.ends_with(&job.image), "{}", image.display());
        }
        sizes.borrow_mut().push(jobs.len());
        jobs.iter().map(|j| Ok(deterministic(j))).collect()
    }
}

#[test]
fn batches_write_what_one_job_at_a_time_writes() {
    let s = Scratch::new(10);
    let questions = s.read_questions();
    let single = RunOptions::new(s.path("single.jsonl"), &s.images, "fake");
    let answerer = |job: &Job, _: &Path| Ok::<_, String>(deterministic(job));
    run_pope(&questions, &single, answerer, &mut Silent).unwrap();

    let mut batched = RunOptions::new(s.path("batched.jsonl"), &s.images, "fake");
    batched.batch_size = 4;
    let sizes = RefCell::new(Vec::new());
    let summary = run_pope_batched(&questions, &batched, recording(&sizes), &mut Silent).unwrap();
    assert_eq!(summary.answered_now, 10);
    assert_eq!(*sizes.borrow(), [4, 4, 2]);
    // same records, same order, byte for byte
    assert_eq!(
        std::fs::read(&single.answers).unwrap(),
        std::fs::read(&batched.answers).unwrap()
    );
}

#[test]
fn batches_skip_bad_images_and_honour_the_record_limit() {
    let s = Scratch::new(10);
    std::fs::remove_file(s.images.join("img_2.jpg")).unwrap();
    let questions = s.read_questions();
    let mut options = RunOptions::new(s.path("answers.jsonl"), &s.images, "fake");
    options.batch_size = 4;
    options.max_records = Some(6);
    let sizes = RefCell::new(Vec::new());
    let summary = run_pope_batched(&questions, &options, recording(&sizes), &mut Silent).unwrap();
    // batch 1: jobs 1-4, image 2 missing -> 3 asked; batch 2: jobs 5-6 (limit 6)
    assert_eq!(*sizes.borrow(), [3, 2]);
    assert_eq!(summary.failed.len(), 1);
    assert_eq!(summary.failed[0].kind, BadRecordKind::MissingImage);
    assert_eq!(summary.answered_now, 5);
    assert_eq!(summary.stopped, Some(StopReason::RecordLimit));

    // an answer function that miscounts fails its whole batch: left are
    // 2 (image missing), 7, 8, 9 | 10 -> 3 asked, 2 returned; then 1 asked,
    // 0 returned
    options.max_records = None;
    let short = |jobs: &[Job], _: &[PathBuf]| -> Vec<Result<String, String>> {
        jobs.iter().skip(1).map(|j| Ok(deterministic(j))).collect()
    };
    let summary = run_pope_batched(&questions, &options, short, &mut Silent).unwrap();
    assert_eq!(summary.answered_now, 0);
    assert!(
        summary
            .failed
            .iter()
            .any(|b| b.detail.contains("returned 2 answers for a batch of 3"))
    );

    // a batch that fails as a whole: every job gets the error
    let failing = |jobs: &[Job], _: &[PathBuf]| {
        whole_batch(Err::<Vec<String>, _>("CUDA out of memory"), jobs.len())
    };
    let summary = run_pope_batched(&questions, &options, failing, &mut Silent).unwrap();
    assert_eq!(summary.answered_now, 0);
    assert!(
        summary
            .failed
            .iter()
            .filter(|b| b.kind == BadRecordKind::AnswerFailed)
            .all(|b| b.detail == "CUDA out of memory")
    );
    assert_eq!(summary.problem(), None, "5 were answered before");
    let counts = id_counts(&[&options.answers]);
    assert_eq!(counts.len(), 5);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

/// Not a test by itself: the child of `a_run_killed_inside_a_batch_...`,
/// active only when `DAMRO_EVAL_BATCH_CHILD_DIR` is set. Batches of 8;
/// the third batch announces itself in `in_batch_3` and then hangs until
/// the parent kills the process.
#[test]
fn child_batched_runner() {
    let Some(dir) = std::env::var_os("DAMRO_EVAL_BATCH_CHILD_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let questions = pope::read_questions(&dir.join("questions.jsonl")).unwrap();
    let mut options = RunOptions::new(dir.join("answers.jsonl"), dir.join("images"), "fake");
    options.batch_size = 8;
    let mut batches = 0;
    let answerer = |jobs: &[Job], _: &[PathBuf]| -> Vec<Result<String, String>> {
        batches += 1;
        if batches == 3 {
            std::fs::write(dir.join("in_batch_3"), b"").unwrap();
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
        jobs.iter().map(|j| Ok(deterministic(j))).collect()
    };
    run_pope_batched(&questions, &options, answerer, &mut Silent).unwrap();
}

#[test]
fn a_run_killed_inside_a_batch_resumes_with_every_question_once() {
    let s = Scratch::new(40);
    let answers = s.path("answers.jsonl");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_batched_runner",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DAMRO_EVAL_BATCH_CHILD_DIR", s.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !s.path("in_batch_3").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never reached batch 3"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // two whole batches are on disk, nothing of the third
    let written = pope::read_answers(&answers).unwrap();
    assert!(written.bad.is_empty());
    let ids: Vec<String> = written
        .answers
        .iter()
        .map(|(_, r)| r.question_id.to_string())
        .collect();
    let expected: Vec<String> = (1..=16).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected);

    // resume with another batch size: the other 24, each once
    let questions = s.read_questions();
    let mut options = RunOptions::new(&answers, &s.images, "fake");
    options.batch_size = 5;
    let sizes = RefCell::new(Vec::new());
    let summary = run_pope_batched(&questions, &options, recording(&sizes), &mut Silent).unwrap();
    assert_eq!((summary.answered_before, summary.answered_now), (16, 24));
    assert_eq!(*sizes.borrow(), [5, 5, 5, 5, 4]);
    assert_exactly_once(&id_counts(&[&answers]), 40);
}

#[test]
fn a_changed_prompt_is_asked_again_and_warned_about() {
    let s = Scratch::new(3);
    let questions = s.read_questions();
    let options = RunOptions::new(s.path("answers.jsonl"), &s.images, "fake");
    // an earlier run with another prompt for question 2 (and one without a
    // prompt for question 3, which answers it whatever the prompt)
    std::fs::write(
        &options.answers,
        "{\"question_id\": 2, \"prompt\": \"old prompt\", \"output\": \"Yes\"}\n{\"question_id\": 3, \"output\": \"No\"}\n",
    )
    .unwrap();
    let mut warnings = Vec::new();
    let summary = run_pope(
        &questions,
        &options,
        |job: &Job, _: &Path| Ok::<_, String>(deterministic(job)),
        &mut Warnings(&mut warnings),
    )
    .unwrap();
    assert_eq!((summary.answered_before, summary.answered_now), (1, 2));
    assert_eq!(summary.stale_answer_lines, 1);
    assert!(
        warnings.iter().any(|w| w.contains("different prompt")),
        "{warnings:?}"
    );
}

/// Collects warnings.
struct Warnings<'a>(&'a mut Vec<String>);

impl damro_eval::Progress for Warnings<'_> {
    fn warn(&mut self, message: &str) {
        self.0.push(message.to_owned());
    }
}

#[test]
fn a_question_file_or_binary_data_is_not_an_answers_file() {
    let s = Scratch::new(3);
    let questions = s.read_questions();
    let before = std::fs::read(&s.questions).unwrap();
    let options = RunOptions::new(&s.questions, &s.images, "fake");
    let answerer = |job: &Job, _: &Path| Ok::<_, String>(deterministic(job));
    let err = run_pope(&questions, &options, answerer, &mut Silent).unwrap_err();
    assert!(matches!(err, Error::NotAnswersFile { .. }), "{err}");
    assert!(err.to_string().contains("question"), "{err}");
    assert_eq!(
        std::fs::read(&s.questions).unwrap(),
        before,
        "nothing appended"
    );

    let garbage = s.path("garbage.jsonl");
    std::fs::write(
        &garbage,
        [0xff, 0xfe, 0x00, 0x12, b'\n', 0x89, b'P', b'N', b'G', b'\n'],
    )
    .unwrap();
    let options = RunOptions::new(&garbage, &s.images, "fake");
    let err = run_pope(&questions, &options, answerer, &mut Silent).unwrap_err();
    assert!(matches!(err, Error::NotAnswersFile { .. }), "{err}");

    // scoring a question file as answers scores nothing
    let as_answers = pope::read_answers(&s.questions).unwrap();
    assert!(as_answers.answers.is_empty());
    assert!(
        as_answers
            .bad
            .iter()
            .all(|b| b.kind == BadRecordKind::QuestionLine)
    );
    assert!(pope::score::score(&questions, &as_answers).nothing_scored());
}

#[test]
fn runs_that_do_nothing_say_so() {
    let s = Scratch::new(3);
    let answerer = |job: &Job, _: &Path| Ok::<_, String>(deterministic(job));
    // an empty question file
    let empty = pope::parse_questions(b"");
    let options = RunOptions::new(s.path("a.jsonl"), &s.images, "fake");
    let summary = run_pope(&empty, &options, answerer, &mut Silent).unwrap();
    assert_eq!(summary.problem(), Some(RunProblem::NoJobs { bad_input: 0 }));
    assert!(summary.is_complete());
    // a file of garbage lines: "\x89PNG", "\x1a", "rubbish"
    let garbage = pope::parse_questions(b"\x89PNG\r\n\x1a\nrubbish\n");
    let summary = run_pope(&garbage, &options, answerer, &mut Silent).unwrap();
    assert_eq!(summary.problem(), Some(RunProblem::NoJobs { bad_input: 3 }));
    // a missing image folder
    let questions = s.read_questions();
    let options = RunOptions::new(s.path("b.jsonl"), s.path("no-such-folder"), "fake");
    let summary = run_pope(&questions, &options, answerer, &mut Silent).unwrap();
    assert_eq!(
        summary.problem(),
        Some(RunProblem::NothingAnswered {
            failed: 3,
            image_dir_missing: true
        })
    );
    assert!(
        summary.to_string().contains("PROBLEM: nothing answered"),
        "{summary}"
    );
    // a working run has no problem
    let options = RunOptions::new(s.path("c.jsonl"), &s.images, "fake");
    let summary = run_pope(&questions, &options, answerer, &mut Silent).unwrap();
    assert_eq!(summary.problem(), None);
}

/// A writer whose bytes the test can read afterwards.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Scratch questions with a malformed line and a missing image.
fn troubled() -> Scratch {
    let s = Scratch::new(3);
    let mut text = std::fs::read_to_string(&s.questions).unwrap();
    text.push_str("not json\n");
    std::fs::write(&s.questions, text).unwrap();
    std::fs::remove_file(s.images.join("img_2.jpg")).unwrap();
    s
}

#[test]
fn bar_warnings_go_to_a_writer_and_a_log_file() {
    let s = troubled();
    let questions = s.read_questions();
    let options = RunOptions::new(s.path("answers.jsonl"), &s.images, "fake");
    let buffer = Shared::default();
    let log = s.path("warnings.log");
    let mut bar = damro_eval::BarProgress::new("pope")
        .with_warnings_to(buffer.clone())
        .with_log_file(&log)
        .unwrap();
    let answerer = |job: &Job, _: &Path| Ok::<_, String>(deterministic(job));
    run_pope(&questions, &options, answerer, &mut bar).unwrap();
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("bad record: malformed_line at line 4"),
        "{text}"
    );
    assert!(
        text.contains("bad record: missing_image at line 2"),
        "{text}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("pope: bad record: missing_image"),
        "{logged}"
    );
}

/// Not a test by itself: runs the troubled questions with a default
/// `BarProgress` when `DAMRO_EVAL_STDERR_CHILD_DIR` is set.
#[test]
fn child_bar_on_a_pipe() {
    let Some(dir) = std::env::var_os("DAMRO_EVAL_STDERR_CHILD_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let questions = pope::read_questions(&dir.join("questions.jsonl")).unwrap();
    let options = RunOptions::new(dir.join("answers.jsonl"), dir.join("no-images"), "fake");
    let mut bar = damro_eval::BarProgress::new("pope");
    let answerer = |job: &Job, _: &Path| Ok::<_, String>(deterministic(job));
    run_pope(&questions, &options, answerer, &mut bar).unwrap();
}

#[test]
fn bar_warnings_reach_stderr_when_it_is_not_a_terminal() {
    let s = troubled();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_bar_on_a_pipe",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DAMRO_EVAL_STDERR_CHILD_DIR", s.dir.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "bad record: malformed_line at line 4",
        "bad record: missing_image",
        "warning: the image folder",
        "warning: nothing answered",
    ] {
        assert!(
            stderr.contains(needle),
            "{needle:?} not in stderr:\n{stderr}"
        );
    }
}

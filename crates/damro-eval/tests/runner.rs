//! The runner: resume after an interrupted run, torn last lines, bad
//! records, locking, stop conditions. A fake answer function stands in for
//! the model.

#![allow(clippy::unwrap_used)]

mod common;

use std::cell::Cell;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Scratch, assert_exactly_once, fake_answer, id_counts};
use damro_eval::pope::{self, score::score};
use damro_eval::runner::{Job, StopReason, run, run_pope};
use damro_eval::{BadRecordKind, Error, QuestionId, RunOptions, Silent};

/// A fake answerer that counts its calls.
fn counting(calls: &Cell<usize>) -> impl FnMut(&Job, &Path) -> Result<String, String> + '_ {
    move |job, image| {
        calls.set(calls.get() + 1);
        assert!(
            image.is_file(),
            "the runner passes the image path: {}",
            image.display()
        );
        assert!(job.prompt.ends_with(pope::POPE_PROMPT_SUFFIX));
        Ok(fake_answer(&job.id))
    }
}

#[test]
fn an_interrupted_run_resumes_and_answers_every_question_once() {
    let s = Scratch::new(10);
    let questions = s.read_questions();
    let mut options = RunOptions::new(s.path("out/answers.jsonl"), &s.images, "fake-model");
    options.mode = Some("damro".into());
    options.max_records = Some(4);
    let calls = Cell::new(0);

    let first = run_pope(&questions, &options, counting(&calls), &mut Silent).unwrap();
    assert_eq!(first.answered_now, 4);
    assert_eq!(first.remaining, 6);
    assert_eq!(first.stopped, Some(StopReason::RecordLimit));
    assert!(!first.is_complete());
    assert_eq!(id_counts(&[&options.answers]).len(), 4);

    options.max_records = None;
    let second = run_pope(&questions, &options, counting(&calls), &mut Silent).unwrap();
    assert_eq!(second.answered_before, 4);
    assert_eq!(second.answered_now, 6);
    assert!(second.is_complete());
    assert_eq!(second.stopped, None);
    assert_eq!(calls.get(), 10, "no question is asked twice");
    assert_exactly_once(&id_counts(&[&options.answers]), 10);

    // a third run has nothing to do
    let third = run_pope(&questions, &options, counting(&calls), &mut Silent).unwrap();
    assert_eq!((third.answered_before, third.answered_now), (10, 0));
    assert_eq!(calls.get(), 10);

    // the records carry what the issue asks for, and score as expected:
    // labels: even ids yes, odd no; fake answers: even "Yes", odd "No, ..."
    // -> TP 5, TN 5, accuracy 1
    let answers = pope::read_answers(&options.answers).unwrap();
    let (_, first_record) = &answers.answers[0];
    assert_eq!(first_record.model_id, "fake-model");
    assert_eq!(first_record.mode.as_deref(), Some("damro"));
    assert_eq!(first_record.image, "img_1.jpg");
    assert_eq!(
        first_record.prompt,
        "Is there a thing 1? Please answer this question with one word."
    );
    let report = score(&questions, &answers);
    assert_eq!(
        (
            report.counts.tp,
            report.counts.tn,
            report.counts.fp,
            report.counts.fn_
        ),
        (5, 5, 0, 0)
    );
    assert!(second.to_string().contains("answered now"));
}

#[test]
fn a_torn_last_line_is_removed_and_redone() {
    for debris in [
        &b"{\"question_id\": 3, \"prompt\": \"Is th"[..],
        &[0u8; 37][..],
    ] {
        let s = Scratch::new(6);
        let questions = s.read_questions();
        let mut options = RunOptions::new(s.path("answers.jsonl"), &s.images, "fake");
        options.max_records = Some(2);
        let calls = Cell::new(0);
        run_pope(&questions, &options, counting(&calls), &mut Silent).unwrap();
        // simulate a crash in the middle of writing the third record
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&options.answers)
            .unwrap();
        file.write_all(debris).unwrap();
        drop(file);
        assert!(
            pope::read_answers(&options.answers).unwrap().bad.len() == 1,
            "the torn line breaks a naive reader"
        );

        options.max_records = None;
        let summary = run_pope(&questions, &options, counting(&calls), &mut Silent).unwrap();
        assert_eq!(summary.torn_tail_bytes, debris.len() as u64);
        assert_eq!(summary.answered_before, 2);
        assert_eq!(summary.answered_now, 4);
        assert_exactly_once(&id_counts(&[&options.answers]), 6);
        assert_eq!(calls.get(), 6);
    }
}

#[test]
fn an_unparseable_complete_line_is_reported_and_its_question_redone() {
    let s = Scratch::new(3);
    let questions = s.read_questions();
    let options = RunOptions::new(s.path("answers.jsonl"), &s.images, "fake");
    std::fs::write(&options.answers, "{\"question_id\": 2, \"outp\n").unwrap();
    let calls = Cell::new(0);
    let summary = run_pope(&questions, &options, counting(&calls), &mut Silent).unwrap();
    assert_eq!(summary.unusable_answer_lines.len(), 1);
    assert_eq!(summary.unusable_answer_lines[0].line, Some(1));
    assert_eq!(summary.answered_now, 3);
    let answers = pope::read_answers(&options.answers).unwrap();
    assert_eq!(answers.bad.len(), 1);
    assert_eq!(answers.answers.len(), 3);
}

#[test]
fn bad_records_are_reported_and_the_run_goes_on() {
    let s = Scratch::new(6);
    // question file problems: a malformed line, an unknown label, a repeated id
    let mut text = std::fs::read_to_string(&s.questions).unwrap();
    text.push_str("{\"question_id\": 7, \"image\": \"img_7.jpg\"\n");
    text.push_str(
        "{\"question_id\": 8, \"image\": \"img_1.jpg\", \"text\": \"?\", \"label\": \"perhaps\"}\n",
    );
    text.push_str(
        "{\"question_id\": 2, \"image\": \"img_2.jpg\", \"text\": \"?\", \"label\": \"yes\"}\n",
    );
    std::fs::write(&s.questions, text).unwrap();
    // image problems: img_3 missing, img_4 a folder
    std::fs::remove_file(s.images.join("img_3.jpg")).unwrap();
    std::fs::remove_file(s.images.join("img_4.jpg")).unwrap();
    std::fs::create_dir(s.images.join("img_4.jpg")).unwrap();
    let questions = s.read_questions();
    assert_eq!(questions.questions.len(), 6);

    let options = RunOptions::new(s.path("answers.jsonl"), &s.images, "fake");
    // the model fails on question 5 the first time only
    let failed_once = Cell::new(false);
    let answerer = |job: &Job, _: &Path| -> Result<String, String> {
        if job.id == QuestionId::Int(5) && !failed_once.replace(true) {
            return Err("could not decode the image".into());
        }
        Ok(fake_answer(&job.id))
    };
    let summary = run_pope(&questions, &options, answerer, &mut Silent).unwrap();
    let kinds = |bad: &[damro_eval::BadRecord]| {
        bad.iter()
            .map(|b| (b.id.clone(), b.kind))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(&summary.bad_input),
        [
            (None, BadRecordKind::MalformedLine),
            (Some(QuestionId::Int(8)), BadRecordKind::UnknownLabel),
            (Some(QuestionId::Int(2)), BadRecordKind::DuplicateId),
        ]
    );
    assert_eq!(
        kinds(&summary.failed),
        [
            (Some(QuestionId::Int(3)), BadRecordKind::MissingImage),
            (Some(QuestionId::Int(4)), BadRecordKind::UnreadableImage),
            (Some(QuestionId::Int(5)), BadRecordKind::AnswerFailed),
        ]
    );
    assert_eq!(summary.failed[2].detail, "could not decode the image");
    assert_eq!(summary.failed[0].line, Some(3));
    assert_eq!((summary.answered_now, summary.remaining), (3, 3));
    let table = summary.to_string();
    assert!(
        table.contains("missing_image 1") && table.contains("unknown_label 1"),
        "{table}"
    );

    // fix one image and run again: the failed ones are retried
    std::fs::write(s.images.join("img_3.jpg"), b"now here").unwrap();
    let again = run_pope(&questions, &options, answerer, &mut Silent).unwrap();
    assert_eq!(again.answered_now, 2); // 3 and 5
    assert_eq!(again.remaining, 1); // 4 is still a folder
    let counts = id_counts(&[&options.answers]);
    assert_eq!(counts.len(), 5);
    assert!(counts.values().all(|n| *n == 1));
}

#[test]
fn a_second_runner_on_the_same_file_is_refused() {
    let s = Scratch::new(2);
    let questions = s.read_questions();
    let options = RunOptions::new(s.path("answers.jsonl"), &s.images, "fake");
    let inner_result = Cell::new(None);
    let answerer = |job: &Job, _: &Path| -> Result<String, String> {
        if inner_result.get().is_none() {
            let inner = run_pope(
                &questions,
                &options,
                |_: &Job, _: &Path| Ok::<_, String>("x".into()),
                &mut Silent,
            );
            inner_result.set(Some(matches!(inner, Err(Error::AnswersLocked { .. }))));
        }
        Ok(fake_answer(&job.id))
    };
    run_pope(&questions, &options, answerer, &mut Silent).unwrap();
    assert_eq!(inner_result.get(), Some(true));
    assert_exactly_once(&id_counts(&[&options.answers]), 2);
}

#[test]
fn stop_conditions() {
    // a model that always fails stops after 2 failures in a row
    let s = Scratch::new(5);
    let questions = s.read_questions();
    let mut options = RunOptions::new(s.path("answers.jsonl"), &s.images, "fake");
    options.max_consecutive_failures = Some(2);
    let summary = run_pope(
        &questions,
        &options,
        |_: &Job, _: &Path| Err::<String, _>("out of memory"),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(summary.stopped, Some(StopReason::ConsecutiveFailures));
    assert_eq!(summary.failed.len(), 2);

    // the stop flag ends the run after the record in flight
    let stop = Arc::new(AtomicBool::new(false));
    options.max_consecutive_failures = None;
    options.stop = Some(stop.clone());
    let answerer = |job: &Job, _: &Path| -> Result<String, String> {
        if job.id == QuestionId::Int(2) {
            stop.store(true, Ordering::Relaxed);
        }
        Ok(fake_answer(&job.id))
    };
    let summary = run_pope(&questions, &options, answerer, &mut Silent).unwrap();
    assert_eq!(summary.stopped, Some(StopReason::Interrupted));
    assert_eq!(summary.answered_now, 2);
}

#[test]
fn generic_jobs_run_too() {
    // e.g. CHAIR captioning: one job per image, the image id as the record id
    let s = Scratch::new(3);
    let jobs: Vec<Job> = (1..=3)
        .map(|i| Job {
            id: QuestionId::Int(i),
            image: format!("img_{i}.jpg"),
            prompt: "Please describe this image in detail.".into(),
            position: (i - 1) as usize,
        })
        .collect();
    let options = RunOptions::new(s.path("captions.jsonl"), &s.images, "fake");
    let summary = run(
        &jobs,
        &options,
        |_: &Job, _: &Path| Ok::<_, String>("A dog.".into()),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(summary.answered_now, 3);
    let captions = damro_eval::chair::read_captions(&options.answers).unwrap();
    assert_eq!(
        captions
            .captions
            .iter()
            .map(|c| c.image_id)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

/// Records the progress calls in order.
#[derive(Default)]
struct Recorder(Vec<String>);

impl damro_eval::Progress for Recorder {
    fn start(&mut self, to_do: usize, done_before: usize) {
        self.0.push(format!("start {to_do} {done_before}"));
    }
    fn answered(&mut self, record: &pope::AnswerRecord) {
        self.0.push(format!("answered {}", record.question_id));
    }
    fn bad_record(&mut self, bad: &damro_eval::BadRecord) {
        self.0.push(format!("bad {}", bad.kind));
    }
    fn note(&mut self, _message: &str) {
        self.0.push("note".into());
    }
    fn finish(&mut self, summary: &damro_eval::RunSummary) {
        self.0.push(format!("finish {}", summary.answered_now));
    }
}

#[test]
fn progress_is_reported_in_order() {
    let s = Scratch::new(3);
    let mut text = std::fs::read_to_string(&s.questions).unwrap();
    text.push_str("not json\n");
    std::fs::write(&s.questions, text).unwrap();
    std::fs::remove_file(s.images.join("img_2.jpg")).unwrap();
    let questions = s.read_questions();
    let options = RunOptions::new(s.path("answers.jsonl"), &s.images, "fake");
    std::fs::write(
        &options.answers,
        "{\"question_id\": 1, \"output\": \"Yes\"}\n{\"question_id\": 3, \"out",
    )
    .unwrap();
    let mut recorder = Recorder::default();
    let answerer = |job: &Job, _: &Path| Ok::<_, String>(fake_answer(&job.id));
    run_pope(&questions, &options, answerer, &mut recorder).unwrap();
    // 3 jobs, 1 answered before -> 2 to do; then the torn tail note, the bad
    // question line, the missing image of 2, the answer to 3
    assert_eq!(
        recorder.0,
        [
            "start 2 1",
            "note",
            "bad malformed_line",
            "bad missing_image",
            "answered 3",
            "finish 1"
        ]
    );

    // the indicatif reporter runs without a terminal too
    std::fs::write(s.images.join("img_2.jpg"), b"x").unwrap();
    let mut bar = damro_eval::BarProgress::new("pope 0/1");
    let summary = run_pope(&questions, &options, answerer, &mut bar).unwrap();
    assert!(summary.is_complete());
}

/// Not a test by itself: the child process of
/// `a_killed_run_resumes_with_every_question_once`, active only when
/// `DAMRO_EVAL_CHILD_DIR` is set. Answers slowly so the parent can kill it.
#[test]
fn child_slow_runner() {
    let Some(dir) = std::env::var_os("DAMRO_EVAL_CHILD_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let questions = pope::read_questions(&dir.join("questions.jsonl")).unwrap();
    let options = RunOptions::new(dir.join("answers.jsonl"), dir.join("images"), "fake");
    let answerer = |job: &Job, _: &Path| -> Result<String, String> {
        std::thread::sleep(std::time::Duration::from_millis(20));
        Ok(fake_answer(&job.id))
    };
    run_pope(&questions, &options, answerer, &mut Silent).unwrap();
}

#[test]
fn a_killed_run_resumes_with_every_question_once() {
    let s = Scratch::new(200);
    let answers = s.path("answers.jsonl");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_slow_runner",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DAMRO_EVAL_CHILD_DIR", s.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // wait for a few records, then SIGKILL the child mid-run
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read(&answers).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count()) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the child wrote nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let written = pope::read_answers(&answers).unwrap().answers.len();
    assert!(
        (5..200).contains(&written),
        "killed part-way: {written} records"
    );

    let questions = s.read_questions();
    let options = RunOptions::new(&answers, &s.images, "fake");
    let summary = run_pope(
        &questions,
        &options,
        |job: &Job, _: &Path| Ok::<_, String>(fake_answer(&job.id)),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(summary.answered_before, written);
    assert_eq!(summary.answered_before + summary.answered_now, 200);
    assert_exactly_once(&id_counts(&[&answers]), 200);
}

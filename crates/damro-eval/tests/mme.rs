//! MME: both readers on the synthetic data of `tools/make_mme_fixture.py`,
//! the answer rule, hand-computed scores, and runs through the batched
//! runner (sharded, merged, resumed).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use damro_eval::mme::{self, MmeAnswer, MmeImage, MmeSet, MmeTask, parse_mme_answer};
use damro_eval::pope::{self, AnswerSet, Label};
use damro_eval::runner::Job;
use damro_eval::{BadRecordKind, RunOptions, Shard, Silent};

fn folder_set() -> MmeSet {
    mme::read_folder(&common::data("mme_folder")).unwrap()
}

fn parquet_set() -> MmeSet {
    mme::read_parquet(&[common::data("mme_fixture.parquet")]).unwrap()
}

/// (question_id, question, answer, task) of every question, sorted.
fn content(set: &MmeSet) -> BTreeSet<(String, String, Label, MmeTask)> {
    set.questions
        .iter()
        .map(|q| (q.question_id.clone(), q.question.clone(), q.answer, q.task))
        .collect()
}

#[test]
fn the_answer_rule() {
    let cases = [
        ("Yes", MmeAnswer::Yes),
        ("no", MmeAnswer::No),
        ("NO", MmeAnswer::No),                 // lower-cased, then exactly "no"
        ("yes.", MmeAnswer::Yes),              // "yes." contains "yes"
        (" yes", MmeAnswer::Yes),              // " yes" is the first 4 characters
        ("  yes", MmeAnswer::Other),           // "  ye": nothing stripped
        ("Not at all", MmeAnswer::No),         // "not " contains "no"
        ("There is no cat", MmeAnswer::Other), // "ther"
        ("I don't know", MmeAnswer::Other),    // "i do"
        ("Eyes", MmeAnswer::Yes),              // "eyes" contains "yes"
        ("", MmeAnswer::Other),
        ("Nope", MmeAnswer::No),
    ];
    for (output, expected) in cases {
        assert_eq!(parse_mme_answer(output), expected, "{output:?}");
    }
    assert_eq!(MmeTask::from_name("ocr"), Some(MmeTask::Ocr));
    assert_eq!(MmeTask::Ocr.name(), "OCR");
    assert_eq!(MmeTask::from_name("not_a_task"), None);
    assert_eq!(MmeTask::all().count(), 14);
}

#[test]
fn the_folder_reader_takes_both_forms() {
    let set = folder_set();
    // folders in name order: code_reasoning (e), count (c in the
    // three-field form, d), existence (images/ + questions_answers_YN/: a, b)
    let ids: Vec<&str> = set
        .questions
        .iter()
        .map(|q| q.question_id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "code_reasoning/e.png",
            "code_reasoning/e.png",
            "count/c.png",
            "count/c.png",
            "count/d.png",
            "count/d.png",
            "existence/a.png",
            "existence/a.png",
            "existence/b.png",
            "existence/b.png"
        ]
    );
    let positions: Vec<usize> = set.questions.iter().map(|q| q.position).collect();
    assert_eq!(positions, (0..10).collect::<Vec<_>>());
    let c = &set.questions[2];
    assert_eq!(c.question, "Are there two cats?");
    assert_eq!(c.answer, Label::Yes);
    assert_eq!(c.prompt(), "Are there two cats?");
    let a = &set.questions[6];
    assert_eq!(a.task, MmeTask::Existence);
    assert_eq!(
        a.image,
        MmeImage::File(common::data("mme_folder/existence/images/a.png"))
    );
    // d.txt: "Maybe" and a line without a tab; z.txt has no image; a
    // folder that is not a sub-task
    let kinds: Vec<BadRecordKind> = set.bad.iter().map(|b| b.kind).collect();
    assert_eq!(
        kinds,
        [
            BadRecordKind::UnknownLabel,
            BadRecordKind::MalformedLine,
            BadRecordKind::MissingImage,
            BadRecordKind::UnknownCategory
        ]
    );
    assert!(
        set.bad[0].detail.contains("d.txt` line 3"),
        "{}",
        set.bad[0]
    );
    assert_eq!(
        set.tasks(),
        [MmeTask::Existence, MmeTask::Count, MmeTask::CodeReasoning]
    );
}

#[test]
fn the_parquet_reader_reads_what_pyarrow_wrote() {
    let parquet = parquet_set();
    let folder = folder_set();
    assert_eq!(content(&parquet), content(&folder));
    // rows in the script's order: existence a, b, count c, d, code e, then
    // the row with a null answer (row 11)
    assert_eq!(parquet.questions[0].question_id, "existence/a.png");
    assert_eq!(parquet.questions[9].position, 9);
    assert_eq!(parquet.bad.len(), 1);
    assert_eq!(parquet.bad[0].line, Some(11));
    assert!(
        parquet.bad[0].detail.contains("`answer` is null"),
        "{}",
        parquet.bad[0]
    );
    // the image bytes are the PNG files of the folder form
    for question in &parquet.questions {
        let MmeImage::Bytes(bytes) = &question.image else {
            panic!("parquet images are bytes")
        };
        let twin = folder
            .questions
            .iter()
            .find(|q| q.question_id == question.question_id)
            .unwrap();
        let MmeImage::File(path) = &twin.image else {
            panic!("folder images are files")
        };
        assert_eq!(
            bytes,
            &std::fs::read(path).unwrap(),
            "{}",
            question.question_id
        );
    }
}

#[test]
fn parquet_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let not_parquet = dir.path().join("x.parquet");
    std::fs::write(&not_parquet, b"not a parquet file").unwrap();
    let err = mme::read_parquet(&[not_parquet]).unwrap_err();
    assert!(matches!(err, damro_eval::Error::Parquet { .. }), "{err}");
    let err = mme::read_parquet(&[dir.path().join("missing.parquet")]).unwrap_err();
    assert!(matches!(err, damro_eval::Error::Io { .. }), "{err}");
}

/// Hand-made outputs, keyed by question (see `scores_by_hand`).
fn output_for(question: &str) -> Option<&'static str> {
    Some(match question {
        "Is there a cat in this image?" => "Yes", // truth Yes: right
        "Is there a dog in this image?" => "No",  // No: right
        "Is there a car in this image?" => "yes.", // Yes: right
        "Is there a bus in this image?" => "There is no bus", // No: other, wrong
        "Are there two cats?" => "No",            // Yes: wrong
        "Are there three cats?" => "Not at all",  // No: right
        "Is there one apple?" => "NO",            // No: right
        "Are there two apples?" => " yes",        // Yes: right
        "Does the code print 3?" => "Yes",        // Yes: right
        "Does the code print 4?" => return None,  // unanswered
        _ => return None,
    })
}

fn answers_for(set: &MmeSet, extra: &str) -> AnswerSet {
    let mut lines: Vec<String> = set
        .questions
        .iter()
        .filter_map(|q| {
            let output = output_for(&q.question)?;
            Some(
                serde_json::json!({"question_id": q.question_id, "prompt": q.question, "output": output, "model_id": "fake"})
                    .to_string(),
            )
        })
        .collect();
    lines.push(extra.to_owned());
    pope::parse_answers(lines.join("\n").as_bytes())
}

#[test]
fn scores_by_hand() {
    let set = folder_set();
    let extra = concat!(
        r#"{"question_id": "existence/a.png", "prompt": "Is there a cat in this image?", "output": "No"}"#,
        "\n",
        r#"{"question_id": "existence/zzz.png", "prompt": "?", "output": "Yes"}"#,
        "\nnot json"
    );
    let report = mme::score(&set, &answers_for(&set, extra));
    // existence: a right/right, b right/other -> acc 3/4, acc+ 1/2 -> 75 + 50
    let existence = report.task(MmeTask::Existence).unwrap();
    assert_eq!(
        (existence.correct, existence.questions, existence.other),
        (3, 4, 1)
    );
    assert_eq!((existence.images_all_right, existence.images), (1, 2));
    assert!((existence.score - 125.0).abs() < 1e-9);
    // count: c wrong/right, d right/right -> acc 3/4, acc+ 1/2 -> 125
    assert!((report.task(MmeTask::Count).unwrap().score - 125.0).abs() < 1e-9);
    // code reasoning: 1 of 1 answered right; image e is incomplete -> no
    // image for acc+ -> 100 + 0
    let code = report.task(MmeTask::CodeReasoning).unwrap();
    assert_eq!((code.questions, code.images), (1, 0));
    assert!((code.score - 100.0).abs() < 1e-9);
    assert!((report.perception - 250.0).abs() < 1e-9);
    assert!((report.hallucination - 250.0).abs() < 1e-9);
    assert!((report.cognition - 100.0).abs() < 1e-9);
    assert_eq!(report.missing_tasks.len(), 11);
    let c = report.counts;
    assert_eq!((c.unanswered, c.incomplete_images), (1, 1));
    assert_eq!(
        (
            c.unmatched_answers,
            c.duplicate_answers,
            c.malformed_answers
        ),
        (1, 1, 1)
    );
    assert_eq!(c.bad_questions, 4);
    assert_eq!(
        (report.info.scored_answers, report.info.unscored_answers),
        (9, 3)
    );
    assert_eq!(report.info.model_ids, ["fake"]);
    let table = report.to_string();
    assert!(
        table.contains("existence") && table.contains("125.00"),
        "{table}"
    );
    assert!(table.contains("250.00 / 800"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&damro_eval::to_json_pretty(&report).unwrap()).unwrap();
    assert_eq!(json["tasks"][0]["task"], "existence");
    assert_eq!(json["scored_answers"], 9);
}

/// The fake model for runs: the hand-made outputs, and "No" for the one
/// question `output_for` leaves unanswered.
fn fake_batch(jobs: &[Job], images: &[PathBuf]) -> Vec<Result<String, String>> {
    jobs.iter()
        .zip(images)
        .map(|(job, image)| {
            assert!(
                image.is_file() && image.is_absolute(),
                "{}",
                image.display()
            );
            Ok(output_for(&job.prompt).unwrap_or("No").to_owned())
        })
        .collect()
}

#[test]
fn runs_write_the_authors_fields_and_score_the_same_from_either_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    for (name, set) in [("folder", folder_set()), ("parquet", parquet_set())] {
        let mut options = RunOptions::new(dir.path().join(format!("{name}.jsonl")), "", "fake");
        options.batch_size = 3;
        let cache = dir.path().join("cache");
        let summary = mme::run(&set, &cache, &options, fake_batch, &mut Silent).unwrap();
        assert_eq!(summary.answered_now, 10, "{name}");
        assert_eq!(summary.bad_input.len(), set.bad.len());
        let answers = pope::read_answers(&options.answers).unwrap();
        let (_, record) = answers
            .answers
            .iter()
            .find(|(_, r)| r.prompt == "Is there a bus in this image?")
            .unwrap();
        assert_eq!(record.question_id, "existence/b.png".into());
        assert_eq!(record.gt_answer.as_deref(), Some("No"));
        assert_eq!(record.category.as_deref(), Some("existence"));
        assert_eq!(record.output, "There is no bus");
        // every question answered: code reasoning is now 2/2 and its image
        // complete -> 200; perception 250, cognition 200
        let report = mme::score(&set, &answers);
        assert!((report.cognition - 200.0).abs() < 1e-9, "{report}");
        assert!((report.perception - 250.0).abs() < 1e-9, "{report}");
        // the answers file scores the same on its own
        let alone = mme::score_answers(&answers);
        assert_eq!(alone.tasks, report.tasks);
        reports.push(report.tasks);
    }
    assert_eq!(reports[0], reports[1]);
    // the parquet images were written to the cache
    assert!(dir.path().join("cache/existence/a.png").is_file());
}

#[test]
fn sharded_runs_merge_into_every_question_once() {
    let dir = tempfile::tempdir().unwrap();
    let set = folder_set();
    let base = dir.path().join("answers.jsonl");
    let mut files = Vec::new();
    for shard in Shard::all_of(3).unwrap() {
        let mut options = RunOptions::new(shard.file_name(&base), "", "fake");
        options.shard = shard;
        options.batch_size = 2;
        let summary = mme::run(&set, dir.path(), &options, fake_batch, &mut Silent).unwrap();
        assert!(summary.is_complete());
        files.push(options.answers);
    }
    let merged = dir.path().join("merged.jsonl");
    let report = mme::merge(&set, &files, &merged).unwrap();
    assert_eq!(report.records, 10);
    let answers = pope::read_answers(&merged).unwrap();
    assert_eq!(answers.answers.len(), 10);
    let keys: BTreeSet<(String, String)> = answers
        .answers
        .iter()
        .map(|(_, r)| (r.question_id.to_string(), r.prompt.clone()))
        .collect();
    assert_eq!(keys.len(), 10, "two questions per image, each once");

    // a shard missing one question of an image is refused, naming the prompt
    let shard0 = std::fs::read_to_string(&files[0]).unwrap();
    let first = shard0.lines().next().unwrap().to_owned();
    let rest: Vec<&str> = shard0.lines().skip(1).collect();
    std::fs::write(&files[0], format!("{}\n", rest.join("\n"))).unwrap();
    let err = mme::merge(&set, &files, &merged).unwrap_err();
    let damro_eval::Error::Merge(mismatch) = &err else {
        panic!("{err}")
    };
    assert_eq!(mismatch.missing.len(), 1);
    assert!(first.contains(mismatch.missing[0].prompt.as_deref().unwrap()));
    assert!(err.to_string().contains("prompt"), "{err}");
}

#[test]
fn an_interrupted_run_resumes_both_questions_of_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let set = parquet_set();
    let mut options = RunOptions::new(dir.path().join("answers.jsonl"), "", "fake");
    options.batch_size = 2;
    // 3 jobs: existence/a.png (both questions) and the first of b
    options.max_records = Some(3);
    let first = mme::run(&set, dir.path(), &options, fake_batch, &mut Silent).unwrap();
    assert_eq!((first.answered_now, first.remaining), (3, 7));
    options.max_records = None;
    let second = mme::run(&set, dir.path(), &options, fake_batch, &mut Silent).unwrap();
    assert_eq!((second.answered_before, second.answered_now), (3, 7));
    let answers = pope::read_answers(&options.answers).unwrap();
    let keys: BTreeSet<(String, String)> = answers
        .answers
        .iter()
        .map(|(_, r)| (r.question_id.to_string(), r.prompt.clone()))
        .collect();
    assert_eq!((answers.answers.len(), keys.len()), (10, 10));
}

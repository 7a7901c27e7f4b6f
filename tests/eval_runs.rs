//! The `eval` run commands on the tiny fixture models, as a user runs
//! them: batched answers equal batch-1 answers under greedy decoding, a run
//! killed in the middle of a batch resumes without losing or repeating a
//! question, three POPE splits in one command, MME from the folder and the
//! parquet shards, the contrast views, CHAIR captions, and the reports of
//! bad input on a stderr that is not a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod eval_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use eval_common::{
    Args, answers_by_question, assert_close, eval_data, file_names, fixtures, question_ids,
    read_json, read_jsonl,
};

fn pope_run(family: &str, questions: &Path, answers: &Path, tokens: usize) -> Args {
    Args::new("pope-run")
        .flag("--questions", questions)
        .flag("--images", fixtures().join("images"))
        .flag("--answers", answers)
        .tiny_model(family, tokens)
}

/// Complete lines of a file that is being appended to.
fn complete_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// LLaVA, greedy: the batch-1 answers; then a batch-3 run killed once its
/// first batch is written (the second batch is in flight), resumed, ends
/// with every question answered once and the batch-1 answers.
#[test]
fn a_run_killed_in_a_batch_resumes_to_the_batch_one_answers() {
    let dir = tempfile::tempdir().unwrap();
    let questions = fixtures().join("pope/questions.jsonl");
    let reference = dir.path().join("batch1.jsonl");
    let metrics = dir.path().join("batch1.json");
    pope_run("llava", &questions, &reference, 6)
        .arg("--greedy")
        .flag("--metrics", &metrics)
        .run()
        .ok();
    let report = read_json(&metrics);
    let settings = &report["settings"];
    assert_eq!(report["rule"], "damro");
    assert_eq!(report["scored_answers"], 6);
    assert_eq!(report["model_ids"], serde_json::json!(["hub"]));
    assert_eq!(settings["mode"], "damro");
    assert_eq!(settings["contrast"], "damro");
    assert_eq!(settings["alpha"], 2.0, "LLaVA-1.5 preset");
    assert_eq!(settings["beta"], 0.1);
    assert_eq!(settings["top_k"], 10);
    assert_eq!(settings["decoding"], "greedy");
    assert_eq!(settings["seed"], serde_json::Value::Null);
    assert_eq!(settings["batch_size"], 1);
    let expected = answers_by_question(&reference);
    assert_eq!(expected.len(), 6);

    let answers = dir.path().join("batch3.jsonl");
    let run = pope_run("llava", &questions, &answers, 6)
        .arg("--greedy")
        .flag("--batch-size", "3");
    let mut child = run
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while complete_lines(&answers) < 3 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before the kill"
        );
        assert!(start.elapsed() < Duration::from_secs(300), "no first batch");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let bytes = std::fs::read(&answers).unwrap();
    assert_eq!(complete_lines(&answers), 3, "one whole batch, no more");
    assert_eq!(bytes.last(), Some(&b'\n'), "no torn line");

    let out = run.run().ok();
    assert!(
        out.stdout.contains("answered before             3"),
        "{out}"
    );
    assert_eq!(answers_by_question(&answers), expected);
    assert_eq!(read_jsonl(&answers).len(), 6);
}

/// InstructBLIP (answers that differ by question), greedy: one batch of 4
/// and one of 2, questions of three images and several lengths, give the
/// batch-1 answers.
#[test]
fn batched_greedy_answers_equal_batch_one_answers() {
    let dir = tempfile::tempdir().unwrap();
    let questions = fixtures().join("pope/questions.jsonl");
    let one = dir.path().join("one.jsonl");
    let four = dir.path().join("four.jsonl");
    pope_run("instructblip", &questions, &one, 4)
        .arg("--greedy")
        .run()
        .ok();
    pope_run("instructblip", &questions, &four, 4)
        .arg("--greedy")
        .flag("--batch-size", "4")
        .run()
        .ok();
    let batch_one = answers_by_question(&one);
    assert_eq!(batch_one.len(), 6);
    assert_eq!(answers_by_question(&four), batch_one);
    let settings = read_json(&dir.path().join("four.jsonl.settings.json"));
    assert_eq!(settings["batch_size"], 4);
    assert_eq!(settings["alpha"], 0.5, "InstructBLIP POPE preset");
    assert_eq!(settings["top_k"], 4);
}

/// random, popular and adversarial in one command: one answers file per
/// split, one report per split and the average of their metrics.
#[test]
fn three_pope_splits_run_and_score_in_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let pope = fixtures().join("pope");
    let answers = dir.path().join("answers.jsonl");
    let metrics = dir.path().join("metrics.json");
    let mut run = Args::new("pope-run")
        .flag("--images", fixtures().join("images"))
        .flag("--answers", &answers)
        .flag("--metrics", &metrics)
        .flag("--batch-size", "2")
        .arg("--greedy")
        .tiny_model("instructblip", 3);
    for name in ["random", "popular", "adversarial"] {
        run = run.flag(
            "--split",
            format!("{name}={}", pope.join(format!("{name}.jsonl")).display()),
        );
    }
    let out = run.run().ok();
    for name in ["random", "popular", "adversarial"] {
        assert!(out.stdout.contains(&format!("== split {name} ==")), "{out}");
        let file = dir.path().join(format!("answers.{name}.jsonl"));
        let ids: Vec<String> = answers_by_question(&file)
            .keys()
            .map(|k| k.0.clone())
            .collect();
        assert_eq!(ids, question_ids(&pope.join(format!("{name}.jsonl"))));
    }
    let report = read_json(&metrics);
    assert_eq!(report["scored_answers"], 6);
    assert_eq!(report["settings"]["batch_size"], 2);
    let splits = report["splits"].as_array().unwrap();
    assert_eq!(splits.len(), 3);
    for key in ["accuracy", "precision", "recall", "f1", "yes_ratio"] {
        let mean = splits
            .iter()
            .map(|s| s["report"]["metrics"][key].as_f64().unwrap())
            .sum::<f64>()
            / 3.0;
        assert_close(report["average"][key].as_f64().unwrap(), mean, key);
    }
    for split in splits {
        let c = &split["report"]["counts"];
        let n = ["tp", "fp", "tn", "fn"].map(|k| c[k].as_f64().unwrap());
        assert_eq!(n.iter().sum::<f64>(), 2.0);
        let accuracy = (n[0] + n[2]) / 2.0;
        assert_close(
            split["report"]["metrics"]["accuracy"].as_f64().unwrap(),
            accuracy,
            "acc",
        );
    }
}

/// MME from the release folder in two shards, merged and scored; MME from
/// the parquet shard with its images cached as files.
#[test]
fn mme_runs_from_the_folder_and_the_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let folder = eval_data().join("mme_folder");
    let answers = dir.path().join("mme.jsonl");
    let run = |shard: &str| {
        Args::new("mme-run")
            .flag("--folder", &folder)
            .flag("--answers", &answers)
            .flag("--shard", shard)
            .flag("--batch-size", "4")
            .arg("--greedy")
            .tiny_model("llava", 2)
            .run()
            .ok()
    };
    let out = run("0/2");
    assert!(out.stderr.contains("Maybe"), "bad input reported:\n{out}");
    run("1/2");
    Args::new("mme-merge")
        .flag("--folder", &folder)
        .flag("--answers", &answers)
        .flag("--shard-count", "2")
        .run()
        .ok();
    let records = read_jsonl(&answers);
    assert_eq!(answers_by_question(&answers).len(), 10);
    for record in &records {
        for field in ["question_id", "prompt", "gt_answer", "output", "category"] {
            assert!(record.get(field).is_some(), "{field} missing: {record}");
        }
        let id = record["question_id"].as_str().unwrap();
        assert!(
            id.starts_with(record["category"].as_str().unwrap()),
            "{record}"
        );
    }
    let metrics = dir.path().join("mme_metrics.json");
    Args::new("mme-score")
        .flag("--folder", &folder)
        .flag("--answers", &answers)
        .flag("--metrics", &metrics)
        .run()
        .ok();
    let report = read_json(&metrics);
    assert_eq!(report["scored_answers"], 10);
    assert_eq!(report["settings"]["mode"], "damro");
    assert_eq!(report["settings"]["template"], "llava_v1");

    let parquet_answers = dir.path().join("parquet.jsonl");
    Args::new("mme-run")
        .flag("--parquet", eval_data().join("mme_fixture.parquet"))
        .flag("--answers", &parquet_answers)
        .flag("--limit", "3")
        .arg("--greedy")
        .tiny_model("llava", 2)
        .run()
        .ok();
    assert_eq!(read_jsonl(&parquet_answers).len(), 3);
    // every parquet image is written out once, as <category>/<image>
    let cache = dir.path().join("parquet.images");
    assert_eq!(file_names(&cache), ["code_reasoning", "count", "existence"]);
    assert_eq!(file_names(&cache.join("existence")), ["a.png", "b.png"]);
}

/// Plain, VCD, no-image and cutoff-only on the same questions, then
/// `compare` over the four answer files.
#[test]
fn every_contrast_view_runs_and_compares() {
    let dir = tempfile::tempdir().unwrap();
    let questions = fixtures().join("pope/random.jsonl");
    let views: [(&str, &[&str]); 4] = [
        ("plain", &["--mode", "plain"]),
        ("vcd", &["--contrast", "vcd", "--noise-step", "400"]),
        ("no-image", &["--contrast", "no-image"]),
        (
            "cutoff-only",
            &["--contrast", "cutoff-only", "--beta", "0.2"],
        ),
    ];
    let mut compare = Args::new("compare").flag("--questions", &questions);
    for (name, flags) in views {
        let answers = dir.path().join(format!("{name}.jsonl"));
        let metrics = dir.path().join(format!("{name}.json"));
        let mut run = pope_run("llava", &questions, &answers, 2)
            .flag("--metrics", &metrics)
            .flag("--seed", "3");
        for flag in flags {
            run = run.arg(flag);
        }
        run.run().ok();
        for record in read_jsonl(&answers) {
            assert_eq!(record["mode"], name);
        }
        let settings = read_json(&metrics)["settings"].clone();
        assert_eq!(settings["mode"], name);
        assert_eq!(settings["seed"], 3);
        assert_eq!(settings["decoding"], "sampled");
        compare = compare.arg(&answers);
    }
    let settings =
        |name: &str| read_json(&dir.path().join(format!("{name}.json")))["settings"].clone();
    assert_eq!(settings("vcd")["contrast"], "vcd");
    assert_eq!(settings("vcd")["alpha"], 1.0);
    assert_eq!(settings("vcd")["noise_step"], 400);
    assert_eq!(settings("no-image")["alpha"], 2.0);
    assert_eq!(settings("cutoff-only")["beta"], 0.2);
    assert_eq!(settings("plain")["contrast"], "plain");
    let out = compare.run().ok();
    for (name, _) in views {
        assert!(out.stdout.contains(name), "{out}");
    }
}

/// CHAIR captions with InstructBLIP's CHAIR preset (alpha 1.5), scored.
#[test]
fn chair_run_captions_coco_images_with_the_chair_preset() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("val2014");
    std::fs::create_dir(&images).unwrap();
    for (id, source) in [(1, "small_grey.png"), (2, "wide_rgb.png")] {
        let name = format!("COCO_val2014_{id:012}.png");
        std::fs::copy(fixtures().join("images").join(source), images.join(name)).unwrap();
    }
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let captions = dir.path().join("captions.jsonl");
    Args::new("chair-run")
        .flag("--images", &images)
        .flag("--answers", &captions)
        .flag("--batch-size", "2")
        .tiny_model("instructblip", 3)
        .run()
        .ok();
    let ids: Vec<i64> = read_jsonl(&captions)
        .iter()
        .map(|r| r["question_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2]);
    let settings = read_json(&dir.path().join("captions.jsonl.settings.json"));
    assert_eq!(settings["alpha"], 1.5, "InstructBLIP CHAIR preset");
    assert_eq!(settings["max_new_tokens"], 3);
    let metrics = dir.path().join("chair.json");
    Args::new("chair")
        .flag("--captions", &captions)
        .flag("--synonyms", eval_data().join("synonyms.txt"))
        .flag("--instances", eval_data().join("instances_synth.json"))
        .flag("--metrics", &metrics)
        .run()
        .ok();
    let report = read_json(&metrics);
    assert_eq!(report["scored_answers"], 2);
    assert_eq!(report["settings"]["alpha"], 1.5);
}

/// Bad question lines and missing images reach a stderr that is not a
/// terminal (and the --log file); runs that answer nothing fail and leave
/// no file behind; a question file given as the answers file is refused
/// untouched.
#[test]
fn bad_input_is_reported_and_empty_runs_fail() {
    let dir = tempfile::tempdir().unwrap();
    let questions = dir.path().join("questions.jsonl");
    std::fs::write(
        &questions,
        concat!(
            "{\"question_id\": 1, \"image\": \"small_grey.png\", \"text\": \"Is there a dog?\", \"label\": \"yes\"}\n",
            "{\"question_id\": 2, \"image\": \"gone.png\", \"text\": \"Is there a cat?\", \"label\": \"no\"}\n",
            "this is not json\n",
        ),
    )
    .unwrap();
    let answers = dir.path().join("answers.jsonl");
    let log = dir.path().join("run.log");
    let out = pope_run("llava", &questions, &answers, 1)
        .flag("--log", &log)
        .run()
        .ok();
    assert!(out.stderr.contains("gone.png"), "{out}");
    assert!(out.stderr.contains("line 3"), "{out}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("gone.png") && logged.contains("line 3"),
        "{logged}"
    );
    assert_eq!(read_jsonl(&answers).len(), 1);

    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let none = fresh.join("none.jsonl");
    Args::new("pope-run")
        .flag("--questions", &questions)
        .flag("--images", dir.path().join("no-such-folder"))
        .flag("--answers", &none)
        .tiny_model("llava", 1)
        .run()
        .fails_with(&["nothing answered", "image folder does not exist"]);
    assert!(file_names(&fresh).is_empty(), "{:?}", file_names(&fresh));

    let before = std::fs::read(&questions).unwrap();
    pope_run("llava", &questions, &questions, 1)
        .run()
        .fails_with(&["not an answers file"]);
    assert_eq!(std::fs::read(&questions).unwrap(), before);
    assert!(!dir.path().join("questions.jsonl.settings.json").exists());

    // answers made with other settings are not mixed with new ones
    pope_run("llava", &questions, &answers, 1)
        .flag("--alpha", "0.7")
        .run()
        .fails_with(&["other settings", "alpha"]);
    let by_question: BTreeMap<_, _> = answers_by_question(&answers);
    assert_eq!(by_question.len(), 1);
}

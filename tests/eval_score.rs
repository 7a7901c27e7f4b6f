//! The `eval` scoring commands as a user runs them, on hand-written answer
//! files whose metrics are derived by hand in the comments; and the
//! command-line errors (unknown flags, empty or wrong files, failed
//! writes, non-UTF-8 arguments). No model is loaded here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod eval_common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use eval_common::{Args, assert_close, eval_data, file_names, fixtures, read_json};

/// The five POPE metrics of a report's JSON, as fractions.
fn metrics(report: &serde_json::Value) -> [f64; 5] {
    let m = &report["metrics"];
    ["accuracy", "precision", "recall", "f1", "yes_ratio"].map(|k| m[k].as_f64().unwrap())
}

fn assert_metrics(report: &serde_json::Value, expected: [f64; 5], what: &str) {
    for (i, (got, want)) in metrics(report).iter().zip(expected).enumerate() {
        assert_close(*got, want, &format!("{what} metric {i}"));
    }
}

fn split_flags(args: Args) -> Args {
    let pope = fixtures().join("pope");
    ["random", "popular", "adversarial"]
        .into_iter()
        .fold(args, |args, name| {
            let mut value = OsStr::new(name).to_os_string();
            value.push("=");
            value.push(pope.join(format!("{name}.jsonl")));
            args.flag("--split", value)
        })
}

/// Labels (questions.jsonl): 1 yes, 2 no, 3 no, 4 yes, 5 yes, 6 no.
/// Answers (answers_rules.jsonl) and what each rule makes of them:
///
/// | id | label | answer                  | damro (substring) | pope (first sentence words) |
/// |----|-------|-------------------------|-------------------|-----------------------------|
/// | 1  | yes   | Yes, there is a dog.    | yes  TP           | yes  TP                     |
/// | 2  | no    | I know there is a car.  | no   TN ("know")  | yes  FP                     |
/// | 3  | no    | There is no person.     | no   TN           | no   TN                     |
/// | 4  | yes   | No, wait, yes.          | yes  TP           | no   FN ("No")              |
/// | 5  | yes   | Sure.                   | no   FN           | yes  TP                     |
/// | 6  | no    | Yes                     | yes  FP           | yes  FP                     |
///
/// damro: TP 2, FP 1, TN 2, FN 1: acc 4/6, prec 2/3, rec 2/3, F1 2/3, yes 3/6.
/// pope:  TP 2, FP 2, TN 1, FN 1: acc 3/6, prec 2/4, rec 2/3,
///        F1 2·(1/2)(2/3)/(1/2+2/3) = 4/7, yes 4/6.
#[test]
fn the_two_pope_rules_score_the_same_answers_differently() {
    let dir = tempfile::tempdir().unwrap();
    let pope = fixtures().join("pope");
    let score = |rule: Option<&str>, metrics: &str| {
        let mut args = Args::new("pope-score")
            .flag("--questions", pope.join("questions.jsonl"))
            .flag("--answers", pope.join("answers_rules.jsonl"))
            .flag("--metrics", dir.path().join(metrics));
        if let Some(rule) = rule {
            args = args.flag("--rule", rule);
        }
        args.run().ok();
        read_json(&dir.path().join(metrics))
    };
    let default = score(None, "default.json");
    let damro = score(Some("damro"), "damro.json");
    let common = score(Some("pope"), "pope.json");
    assert_eq!(default, damro, "the authors' rule is the default");
    assert_eq!(damro["rule"], "damro");
    assert_eq!(common["rule"], "pope");
    assert_metrics(
        &damro,
        [4.0 / 6.0, 2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 0.5],
        "damro",
    );
    assert_metrics(&common, [0.5, 0.5, 2.0 / 3.0, 4.0 / 7.0, 4.0 / 6.0], "pope");
    for report in [&damro, &common] {
        assert_eq!(report["scored_answers"], 6);
        assert_eq!(report["unscored_answers"], 0);
        assert_eq!(report["model_ids"], serde_json::json!(["hand"]));
        assert!(report["settings"].is_object());
    }
    assert_eq!(damro["counts"]["tp"], 2);
    assert_eq!(common["counts"]["fp"], 2);
}

/// Split answers (answers_splits.<split>.jsonl), question 1 yes, 2 no in
/// each split:
/// - random: Yes, No → TP, TN: acc 1, prec 1, rec 1, F1 1, yes 1/2
/// - popular: No, No → FN, TN: acc 1/2, prec 0 (0/0), rec 0, F1 0, yes 0
/// - adversarial: Yes, Yes → TP, FP: acc 1/2, prec 1/2, rec 1, F1 2/3, yes 1
///
/// average: acc 2/3, prec 1/2, rec 2/3, F1 5/9, yes 1/2.
#[test]
fn three_splits_give_one_report_each_and_their_average() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("splits.json");
    let out = split_flags(Args::new("pope-score"))
        .flag("--answers", fixtures().join("pope/answers_splits.jsonl"))
        .flag("--metrics", &metrics)
        .run()
        .ok();
    for name in ["random", "popular", "adversarial"] {
        assert!(out.stdout.contains(&format!("== split {name} ==")), "{out}");
    }
    assert!(out.stdout.contains("average"), "{out}");
    let report = read_json(&metrics);
    assert_eq!(report["rule"], "damro");
    assert_eq!(report["scored_answers"], 6);
    let splits = report["splits"].as_array().unwrap();
    let names: Vec<&str> = splits.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["random", "popular", "adversarial"]);
    assert_metrics(&splits[0]["report"], [1.0, 1.0, 1.0, 1.0, 0.5], "random");
    assert_metrics(&splits[1]["report"], [0.5, 0.0, 0.0, 0.0, 0.0], "popular");
    assert_metrics(
        &splits[2]["report"],
        [0.5, 0.5, 1.0, 2.0 / 3.0, 1.0],
        "adversarial",
    );
    let average = serde_json::json!({"metrics": report["average"]});
    assert_metrics(
        &average,
        [2.0 / 3.0, 0.5, 2.0 / 3.0, 5.0 / 9.0, 0.5],
        "average",
    );
}

/// damro-eval's MME folder (existence a, b; count c, d; code_reasoning e;
/// two questions per image) against answers_hand.jsonl, MME's rule:
/// - existence: a Yes ✓, "No, there is not." ✓ ("no, " has "no"); b "yes." ✓,
///   "Yes" ✗ → acc 3/4, acc+ 1/2 → 125
/// - count: c "There are two." ✗ (other), "no" ✓; d "Not really" ✓ ("not "),
///   "YES" ✓ → acc 3/4, acc+ 1/2 → 125
/// - code_reasoning: "I think yes" ✗ (first four "i th"), "No" ✓ → acc 1/2,
///   acc+ 0 → 50
///
/// perception 250, cognition 50, hallucination subset 250.
#[test]
fn mme_scores_by_hand_against_the_folder_the_parquet_and_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let answers = fixtures().join("mme/answers_hand.jsonl");
    let score = |input: Option<(&str, std::path::PathBuf)>, name: &str| {
        let metrics = dir.path().join(name);
        let mut args = Args::new("mme-score")
            .flag("--answers", &answers)
            .flag("--metrics", &metrics);
        if let Some((flag, path)) = input {
            args = args.flag(flag, path);
        }
        args.run().ok();
        read_json(&metrics)
    };
    let folder = score(Some(("--folder", eval_data().join("mme_folder"))), "f.json");
    let parquet = score(
        Some(("--parquet", eval_data().join("mme_fixture.parquet"))),
        "p.json",
    );
    let records = score(None, "r.json");
    for report in [&folder, &parquet, &records] {
        let task = |name: &str| {
            report["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["task"] == name)
                .unwrap_or_else(|| panic!("no {name} in {report}"))
                .clone()
        };
        assert_close(
            task("existence")["score"].as_f64().unwrap(),
            125.0,
            "existence",
        );
        assert_close(
            task("count")["accuracy"].as_f64().unwrap(),
            0.75,
            "count acc",
        );
        assert_close(
            task("count")["accuracy_plus"].as_f64().unwrap(),
            0.5,
            "count acc+",
        );
        assert_close(
            task("code_reasoning")["score"].as_f64().unwrap(),
            50.0,
            "code",
        );
        assert_close(report["perception"].as_f64().unwrap(), 250.0, "perception");
        assert_close(report["cognition"].as_f64().unwrap(), 50.0, "cognition");
        assert_close(
            report["hallucination"].as_f64().unwrap(),
            250.0,
            "hallucination",
        );
        assert_eq!(report["scored_answers"], 10);
    }
}

/// captions_hand.jsonl against damro-eval's synonyms and instances:
/// image 1 (GT person, dog, bicycle): "A man and a dog." → person, dog;
/// image 2 (GT dining table, toilet): "A cat on a toilet." → cat (not in
/// GT), toilet. CHAIR_s 1/2, CHAIR_i 1/4, recall 3/5.
#[test]
fn chair_scores_hand_captions_and_refuses_annotations_without_objects() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("chair.json");
    let details = dir.path().join("details.json");
    let base = Args::new("chair")
        .flag("--captions", fixtures().join("chair/captions_hand.jsonl"))
        .flag("--synonyms", eval_data().join("synonyms.txt"));
    base.clone()
        .flag("--instances", eval_data().join("instances_synth.json"))
        .flag("--metrics", &metrics)
        .flag("--details", &details)
        .run()
        .ok();
    let report = read_json(&metrics);
    assert_close(
        report["metrics"]["chair_s"].as_f64().unwrap(),
        0.5,
        "CHAIR_s",
    );
    assert_close(
        report["metrics"]["chair_i"].as_f64().unwrap(),
        0.25,
        "CHAIR_i",
    );
    assert_close(report["metrics"]["recall"].as_f64().unwrap(), 0.6, "recall");
    assert!(
        report.get("captions").is_none(),
        "details stay out of the metrics"
    );
    assert_eq!(read_json(&details).as_array().unwrap().len(), 2);

    let empty = dir.path().join("instances_empty.json");
    std::fs::write(
        &empty,
        r#"{"images": [], "annotations": [], "categories": []}"#,
    )
    .unwrap();
    let refused = dir.path().join("refused.json");
    base.flag("--instances", &empty)
        .flag("--metrics", &refused)
        .run()
        .fails_with(&["annotation"]);
    assert!(!refused.exists());
}

#[test]
fn compare_puts_methods_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let all_yes = dir.path().join("all_yes.jsonl");
    let lines: String = (1..=6)
        .map(|id| format!("{{\"question_id\": {id}, \"output\": \"Yes\"}}\n"))
        .collect();
    std::fs::write(&all_yes, lines).unwrap();
    let metrics = dir.path().join("compare.json");
    let out = Args::new("compare")
        .flag("--questions", fixtures().join("pope/questions.jsonl"))
        .arg(fixtures().join("pope/answers_rules.jsonl"))
        .arg(&all_yes)
        .flag("--metrics", &metrics)
        .run()
        .ok();
    assert!(
        out.stdout.contains("answers_rules") && out.stdout.contains("all_yes"),
        "{out}"
    );
    let methods = read_json(&metrics)["methods"].clone();
    // all "Yes": TP 3 (ids 1, 4, 5), FP 3: acc 1/2, yes ratio 1.
    let yes = &methods[1][1]["average"];
    assert_close(yes["accuracy"].as_f64().unwrap(), 0.5, "all-yes acc");
    assert_close(yes["yes_ratio"].as_f64().unwrap(), 1.0, "all-yes yes ratio");
    let hand = &methods[0][1]["average"];
    assert_close(hand["accuracy"].as_f64().unwrap(), 4.0 / 6.0, "hand acc");

    let out = Args::new("compare")
        .flag("--folder", eval_data().join("mme_folder"))
        .arg(fixtures().join("mme/answers_hand.jsonl"))
        .run()
        .ok();
    assert!(out.stdout.contains("hallucination"), "{out}");
}

#[test]
fn unknown_flags_are_errors_that_name_the_flag() {
    Args::new("pope-score")
        .flag("--questions", fixtures().join("pope/questions.jsonl"))
        .flag("--answers", fixtures().join("pope/answers_rules.jsonl"))
        .flag("--ruel", "pope")
        .run()
        .fails_with(&["--ruel"]);
    Args::new("pope-run")
        .flag("--questions", fixtures().join("pope/questions.jsonl"))
        .flag("--images", fixtures().join("images"))
        .flag("--answers", "unused.jsonl")
        .tiny_model("llava", 2)
        .arg("--batch-sise")
        .arg("4")
        .run()
        .fails_with(&["--batch-sise"]);
    Args::new("pope-score")
        .flag("--questions", fixtures().join("pope/questions.jsonl"))
        .flag("--answers", fixtures().join("pope/answers_rules.jsonl"))
        .flag("--rule", "common")
        .run()
        .fails_with(&["common"]);
}

#[test]
fn empty_or_wrong_files_fail_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let answers = dir.path().join("answers.jsonl");
    Args::new("pope-run")
        .flag("--questions", &empty)
        .flag("--images", fixtures().join("images"))
        .flag("--answers", &answers)
        .tiny_model("llava", 2)
        .run()
        .fails_with(&["empty.jsonl", "no usable POPE question"]);
    assert_eq!(file_names(dir.path()), ["empty.jsonl"]);

    let questions = fixtures().join("pope/questions.jsonl");
    let score = |answers: &std::path::Path| {
        Args::new("pope-score")
            .flag("--questions", &questions)
            .flag("--answers", answers)
            .flag("--metrics", dir.path().join("metrics.json"))
            .run()
    };
    score(&questions).fails_with(&["not an answers file", "question"]);
    let binary = dir.path().join("binary.jsonl");
    std::fs::write(&binary, [0u8, 159, 146, 150, 10, 255, 254, 10]).unwrap();
    score(&binary).fails_with(&["not an answers file"]);
    score(&empty).fails_with(&["no answer"]);
    let unmatched = dir.path().join("unmatched.jsonl");
    std::fs::write(&unmatched, "{\"question_id\": 99, \"output\": \"Yes\"}\n").unwrap();
    score(&unmatched).fails_with(&["no answer", "matches"]);
    assert!(!dir.path().join("metrics.json").exists());
    Args::new("mme-score")
        .flag("--answers", fixtures().join("pope/answers_rules.jsonl"))
        .run()
        .fails_with(&["could be scored"]);
}

#[test]
fn a_failed_metrics_write_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let occupied = dir.path().join("metrics.json");
    std::fs::create_dir(&occupied).unwrap();
    let score = |metrics: &std::path::Path| {
        Args::new("pope-score")
            .flag("--questions", fixtures().join("pope/questions.jsonl"))
            .flag("--answers", fixtures().join("pope/answers_rules.jsonl"))
            .flag("--metrics", metrics)
            .run()
    };
    score(&occupied).fails_with(&["metrics.json"]);
    score(&dir.path().join("missing/metrics.json")).fails_with(&["missing"]);
    assert_eq!(file_names(dir.path()), ["metrics.json"]);
    assert!(occupied.is_dir());
}

#[test]
fn non_utf8_arguments_are_paths_or_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir
        .path()
        .join(OsStr::from_bytes(b"answers-\xff\xfe.jsonl"));
    std::fs::copy(fixtures().join("pope/answers_rules.jsonl"), &odd).unwrap();
    let metrics = dir.path().join(OsStr::from_bytes(b"metrics-\xff.json"));
    Args::new("pope-score")
        .flag("--questions", fixtures().join("pope/questions.jsonl"))
        .flag("--answers", &odd)
        .flag("--metrics", &metrics)
        .run()
        .ok();
    assert_eq!(read_json(&metrics)["scored_answers"], 6);
    let mut split = OsStr::new("random=").to_os_string();
    split.push(OsStr::from_bytes(b"/nonexistent/\xff.jsonl"));
    Args::new("pope-score")
        .flag("--split", split)
        .flag("--answers", &odd)
        .run()
        .fails_with(&["nonexistent"]);
    Args::new("pope-score")
        .flag("--split", OsStr::from_bytes(b"r\xff=x.jsonl"))
        .flag("--answers", &odd)
        .run()
        .fails_with(&["--split"]);
    Args::new("pope-run")
        .flag("--questions", fixtures().join("pope/questions.jsonl"))
        .flag("--images", fixtures().join("images"))
        .flag("--answers", dir.path().join("a.jsonl"))
        .flag("--model-id", OsStr::from_bytes(b"m\xff"))
        .tiny_model("llava", 2)
        .run()
        .fails_with(&["--model-id"]);
}

//! Side-by-side comparison of several answer files: POPE per split and
//! average, MME per sub-task and totals. Expected numbers by hand.

#![allow(clippy::unwrap_used)]

mod common;

use damro_eval::compare::{
    PopeMethod, PopeSplit, compare_mme, compare_mme_files, compare_pope, compare_pope_files,
};
use damro_eval::mme::{self, MmeTask};
use damro_eval::pope::score::PopeRule;
use damro_eval::pope::{AnswerSet, parse_answers, parse_questions};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn answers(outputs: &[&str]) -> AnswerSet {
    let lines: Vec<String> = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| format!(r#"{{"question_id": {}, "output": "{o}"}}"#, i + 1))
        .collect();
    parse_answers(lines.join("\n").as_bytes())
}

#[test]
fn pope_methods_side_by_side() {
    // both splits: q1 yes, q2 no
    let q = parse_questions(
        br#"{"question_id": 1, "image": "x.jpg", "text": "?", "label": "yes"}
{"question_id": 2, "image": "x.jpg", "text": "?", "label": "no"}"#,
    );
    let splits = [
        PopeSplit {
            name: "random",
            questions: &q,
        },
        PopeSplit {
            name: "popular",
            questions: &q,
        },
    ];
    // plain: random Yes/Yes (TP, FP: acc 50), popular Yes/No (acc 100)
    // damro: random Yes/No (acc 100), popular Yes/No (acc 100)
    let plain = [answers(&["Yes", "Yes"]), answers(&["Yes", "No"])];
    let damro = [answers(&["Yes", "No"]), answers(&["Yes", "No"])];
    let methods = [
        PopeMethod {
            name: "plain",
            answers: &plain,
        },
        PopeMethod {
            name: "damro",
            answers: &damro,
        },
    ];
    let cmp = compare_pope(&splits, &methods, PopeRule::Damro).unwrap();
    assert_eq!(cmp.methods.len(), 2);
    // plain average accuracy (1/2 + 1)/2 = 3/4; damro 1
    assert!(close(cmp.methods[0].1.average.accuracy, 0.75));
    assert!(close(cmp.methods[1].1.average.accuracy, 1.0));
    let table = cmp.to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[1].contains("plain") && lines[1].contains("damro"),
        "{table}"
    );
    let random = lines
        .iter()
        .find(|l| l.trim_start().starts_with("random"))
        .unwrap();
    // plain random: acc 50, prec 50, recall 100, F1 66.67, yes 100;
    // damro random: 100, 100, 100, 100, 50
    let numbers: Vec<&str> = random
        .split(|c: char| c == '|' || c.is_whitespace())
        .filter(|t| t.parse::<f64>().is_ok())
        .collect();
    assert_eq!(
        numbers,
        [
            "50.00", "50.00", "100.00", "66.67", "100.00", "100.00", "100.00", "100.00", "100.00",
            "50.00"
        ],
        "{table}"
    );
    assert!(table.contains("average"));

    // a method with the wrong number of answer sets is refused
    let short = [answers(&["Yes"])];
    let err = compare_pope(
        &splits,
        &[PopeMethod {
            name: "short",
            answers: &short,
        }],
        PopeRule::Pope,
    )
    .unwrap_err();
    assert!(matches!(err, damro_eval::Error::Comparison(_)), "{err}");
    assert!(err.to_string().contains("short"), "{err}");
}

#[test]
fn pope_comparison_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q.jsonl");
    std::fs::write(
        &q,
        r#"{"question_id": 1, "image": "x.jpg", "text": "?", "label": "no"}"#,
    )
    .unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    std::fs::write(&a, r#"{"question_id": 1, "output": "I know"}"#).unwrap();
    std::fs::write(&b, r#"{"question_id": 1, "output": "Yes"}"#).unwrap();
    let splits = [("random".to_string(), q)];
    let methods = [("a".to_string(), vec![a]), ("b".to_string(), vec![b])];
    // "I know" to a "no" question: right under the authors' rule, wrong
    // under the common one; "Yes" is wrong under both
    let damro = compare_pope_files(&splits, &methods, PopeRule::Damro).unwrap();
    let pope = compare_pope_files(&splits, &methods, PopeRule::Pope).unwrap();
    assert!(close(damro.methods[0].1.average.accuracy, 1.0));
    assert!(close(pope.methods[0].1.average.accuracy, 0.0));
    assert!(close(damro.methods[1].1.average.accuracy, 0.0));
    let json = damro_eval::to_json_pretty(&damro).unwrap();
    assert!(json.contains("\"rule\": \"damro\""), "{json}");
}

#[test]
fn mme_methods_side_by_side() {
    let set = mme::read_folder(&common::data("mme_folder")).unwrap();
    let record = |id: &str, prompt: &str, output: &str| {
        serde_json::json!({"question_id": id, "prompt": prompt, "output": output}).to_string()
    };
    let all_yes: Vec<String> = set
        .questions
        .iter()
        .map(|q| record(&q.question_id, &q.question, "Yes"))
        .collect();
    let all_right: Vec<String> = set
        .questions
        .iter()
        .map(|q| record(&q.question_id, &q.question, q.gt_answer()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let yes_file = dir.path().join("yes.jsonl");
    let right_file = dir.path().join("right.jsonl");
    std::fs::write(&yes_file, all_yes.join("\n")).unwrap();
    std::fs::write(&right_file, all_right.join("\n")).unwrap();
    let cmp = compare_mme_files(
        &set,
        &[
            ("always-yes".into(), yes_file),
            ("oracle".into(), right_file),
        ],
    )
    .unwrap();
    // always "Yes": each image has one yes and one no question -> acc 1/2,
    // acc+ 0 -> 50 per sub-task; perception = existence + count = 100,
    // cognition = code reasoning = 50
    let yes = &cmp.methods[0].1;
    assert!(close(yes.task(MmeTask::Existence).unwrap().score, 50.0));
    assert!(close(yes.perception, 100.0) && close(yes.cognition, 50.0));
    // all right: 200 per sub-task
    let oracle = &cmp.methods[1].1;
    assert!(close(oracle.perception, 400.0) && close(oracle.hallucination, 400.0));
    let table = cmp.to_string();
    let existence = table
        .lines()
        .find(|l| l.trim_start().starts_with("existence"))
        .unwrap();
    let numbers: Vec<&str> = existence
        .split(|c: char| c == '|' || c.is_whitespace())
        .filter(|t| t.parse::<f64>().is_ok())
        .collect();
    assert_eq!(
        numbers,
        ["50.00", "0.00", "50.00", "100.00", "100.00", "200.00"],
        "{table}"
    );
    assert!(
        table.contains("always-yes") && table.contains("oracle"),
        "{table}"
    );
    assert!(table.contains("hallucination (/800)"), "{table}");
    // the in-memory form gives the same
    let yes_set = damro_eval::pope::read_answers(&dir.path().join("yes.jsonl")).unwrap();
    assert_eq!(compare_mme(&set, &[("x", &yes_set)]).methods[0].1, *yes);
}

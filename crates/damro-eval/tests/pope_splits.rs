//! POPE over several splits in one call: per-split reports, the average
//! over splits, the table. Every number is worked out by hand below.

#![allow(clippy::unwrap_used)]

use damro_eval::pope::score::PopeRule;
use damro_eval::pope::splits::{SplitFiles, SplitInput, score_split_files, score_splits};
use damro_eval::pope::{AnswerSet, QuestionSet, parse_answers, parse_questions};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn questions(labels: &[&str]) -> QuestionSet {
    let lines: Vec<String> = labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            format!(
                r#"{{"question_id": {}, "image": "x.jpg", "text": "?", "label": "{label}"}}"#,
                i + 1
            )
        })
        .collect();
    parse_questions(lines.join("\n").as_bytes())
}

fn answers(outputs: &[&str], model: &str) -> AnswerSet {
    let lines: Vec<String> = outputs
        .iter()
        .enumerate()
        .map(|(i, output)| {
            format!(
                r#"{{"question_id": {}, "output": "{output}", "model_id": "{model}"}}"#,
                i + 1
            )
        })
        .collect();
    parse_answers(lines.join("\n").as_bytes())
}

/// random: yes/"Yes" TP, yes/"No" FN, no/"No" TN, no/"No" TN
///   -> acc 3/4, prec 1/1, recall 1/2, F1 2/3, yes 1/4
/// popular: yes/"Yes" TP, no/"Yes" FP
///   -> acc 1/2, prec 1/2, recall 1/1, F1 2/3, yes 2/2
/// adversarial: no/"I know", yes/"Yes"
///   common rule: "I know" -> yes: FP, TP -> acc 1/2, prec 1/2, recall 1, F1 2/3, yes 1
///   authors' rule: "know" has "no" -> TN, TP -> acc 1, prec 1, recall 1, F1 1, yes 1/2
fn three_splits() -> Vec<(QuestionSet, AnswerSet)> {
    vec![
        (
            questions(&["yes", "yes", "no", "no"]),
            answers(&["Yes", "No", "No", "No"], "m1"),
        ),
        (questions(&["yes", "no"]), answers(&["Yes", "Yes"], "m1")),
        (questions(&["no", "yes"]), answers(&["I know", "Yes"], "m2")),
    ]
}

fn inputs<'a>(data: &'a [(QuestionSet, AnswerSet)], names: &[&'a str]) -> Vec<SplitInput<'a>> {
    data.iter()
        .zip(names)
        .map(|((questions, answers), name)| SplitInput {
            name,
            questions,
            answers,
        })
        .collect()
}

#[test]
fn each_split_and_the_mean_over_splits() {
    let data = three_splits();
    let names = ["random", "popular", "adversarial"];
    let report = score_splits(&inputs(&data, &names), PopeRule::Pope);
    assert_eq!(report.splits.len(), 3);
    assert_eq!(report.splits[1].name, "popular");
    let r = &report.splits[0].report.metrics;
    assert!(close(r.accuracy, 0.75) && close(r.recall, 0.5) && close(r.f1, 2.0 / 3.0));
    // mean over the three: acc (3/4 + 1/2 + 1/2)/3 = 7/12;
    // prec (1 + 1/2 + 1/2)/3 = 2/3; recall (1/2 + 1 + 1)/3 = 5/6;
    // F1 2/3; yes (1/4 + 1 + 1)/3 = 3/4
    let a = report.average;
    assert!(close(a.accuracy, 7.0 / 12.0), "{a:?}");
    assert!(close(a.precision, 2.0 / 3.0), "{a:?}");
    assert!(close(a.recall, 5.0 / 6.0), "{a:?}");
    assert!(close(a.f1, 2.0 / 3.0), "{a:?}");
    assert!(close(a.yes_ratio, 0.75), "{a:?}");
    assert_eq!(report.averaged, names);
    assert_eq!(report.info.model_ids, ["m1", "m2"]);
    assert_eq!(report.info.scored_answers, 8);

    // the authors' rule changes only the adversarial split:
    // acc (3/4 + 1/2 + 1)/3 = 3/4; F1 (2/3 + 2/3 + 1)/3 = 7/9
    let damro = score_splits(&inputs(&data, &names), PopeRule::Damro);
    assert!(close(damro.average.accuracy, 0.75), "{:?}", damro.average);
    assert!(close(damro.average.f1, 7.0 / 9.0), "{:?}", damro.average);
    assert_eq!(damro.splits[2].report.counts.tn, 1);

    let table = report.to_string();
    for needle in [
        "random",
        "popular",
        "adversarial",
        "average",
        "58.33",
        "83.33",
    ] {
        assert!(table.contains(needle), "{needle} missing from\n{table}");
    }
}

#[test]
fn a_split_without_answers_is_shown_but_not_averaged() {
    let mut data = three_splits();
    data[2].1 = AnswerSet::default();
    let report = score_splits(&inputs(&data, &["r", "p", "a"]), PopeRule::Pope);
    // mean over r and p: acc (3/4 + 1/2)/2 = 5/8, yes (1/4 + 1)/2 = 5/8
    assert!(
        close(report.average.accuracy, 0.625),
        "{:?}",
        report.average
    );
    assert!(
        close(report.average.yes_ratio, 0.625),
        "{:?}",
        report.average
    );
    assert_eq!(report.averaged, ["r", "p"]);
    assert_eq!(report.empty_splits(), ["a"]);
    assert!(!report.nothing_scored());
    assert!(report.to_string().contains("over r, p only"));
}

#[test]
fn splits_from_files_with_settings_in_the_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, q, a) in [
        (
            "random",
            r#"{"question_id": 1, "image": "x.jpg", "text": "?", "label": "yes"}"#,
            r#"{"question_id": 1, "output": "Yes"}"#,
        ),
        (
            "popular",
            r#"{"question_id": 1, "image": "x.jpg", "text": "?", "label": "no"}"#,
            r#"{"question_id": 1, "output": "Yes"}"#,
        ),
    ] {
        let qp = dir.path().join(format!("{name}_q.jsonl"));
        let ap = dir.path().join(format!("{name}_a.jsonl"));
        std::fs::write(&qp, q).unwrap();
        std::fs::write(&ap, a).unwrap();
        files.push(SplitFiles::new(name, qp, ap));
    }
    // random: TP -> acc 1; popular: FP -> acc 0; average 1/2
    let report = score_split_files(&files, PopeRule::Damro)
        .unwrap()
        .with_settings(damro_eval::RunSettings::new().with("mode", "plain"));
    assert!(close(report.average.accuracy, 0.5));
    let json: serde_json::Value =
        serde_json::from_str(&damro_eval::to_json_pretty(&report).unwrap()).unwrap();
    assert_eq!(json["rule"], "damro");
    assert_eq!(json["settings"]["mode"], "plain");
    assert_eq!(json["splits"][1]["report"]["settings"]["mode"], "plain");
    assert_eq!(json["splits"][0]["name"], "random");

    files[1].answers = dir.path().join("missing.jsonl");
    assert!(matches!(
        score_split_files(&files, PopeRule::Damro),
        Err(damro_eval::Error::Io { .. })
    ));
}

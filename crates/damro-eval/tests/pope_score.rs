//! POPE scorer tests on hand-made cases; every expected number is worked out
//! by hand in the comments, not computed by the code under test.

#![allow(clippy::unwrap_used)]

mod common;

use damro_eval::pope::score::{
    PopeCounts, PopeMetrics, PopeReport, PopeRule, parse_damro, parse_yes_no, score, score_with,
};
use damro_eval::pope::{self, AnswerSet, Label, QuestionSet, parse_answers, parse_questions};
use damro_eval::{BadRecordKind, QuestionId};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn yes_no_parsing_follows_the_standard_rule() {
    let cases = [
        ("Yes", Label::Yes),
        ("No", Label::No),
        ("no", Label::No),
        ("No.", Label::No),                    // first sentence "No"
        ("No, there is no dog.", Label::No),   // comma dropped -> word "No"
        ("There is not a dog.", Label::No),    // word "not"
        ("Yes. There is no dog.", Label::Yes), // only the first sentence counts
        ("NO", Label::Yes),                    // exact words: "NO" is not "No"
        ("Not at all", Label::Yes),            // "Not" is not "not"
        ("No!", Label::Yes),                   // "No!" is not a word of the list
        ("No\nthere is one", Label::Yes),      // only ' ' splits: "No\nthere"
        (" No", Label::No),                    // split(' ') -> ["", "No"]
        ("nope, not really", Label::No),       // "not"
        ("I cannot tell", Label::Yes),         // "cannot" is not "not"
        ("", Label::Yes),                      // empty -> yes
        ("Yes, it's not", Label::No),          // no '.', so the whole text counts
        ("No,there is", Label::Yes),           // "No,there" -> "Nothere"
    ];
    for (answer, expected) in cases {
        assert_eq!(parse_yes_no(answer), expected, "answer {answer:?}");
    }
}

#[test]
fn the_two_rules_disagree_where_the_authors_script_reads_substrings() {
    // (answer, label, authors' rule, common rule); each worked out by hand:
    // the authors' rule looks for "yes" (label yes) or "no" (label no) as a
    // lower-cased substring; the common rule looks for the words
    // "No"/"not"/"no" in the first sentence.
    let cases = [
        // "know" contains "no"; the words are "I", "know"
        ("I know", Label::No, Label::No, Label::Yes),
        // contains "yes"; the words include "no"
        ("Yes, there is no dog", Label::Yes, Label::Yes, Label::No),
        // the same answer to a "no" question: "no" is in it for both
        ("Yes, there is no dog", Label::No, Label::No, Label::No),
        // "not" contains "no"; the word "not" is in the list too
        ("not sure", Label::No, Label::No, Label::No),
        // no "yes" in it; the word "not" -> no for both
        ("not sure", Label::Yes, Label::No, Label::No),
        // lower-cased "no"; "NO" is not one of the words
        ("NO", Label::No, Label::No, Label::Yes),
        // "nope" contains "no"; "Nope" is not a word of the list
        ("Nope", Label::No, Label::No, Label::Yes),
        // "unknown" contains "no"
        ("Unknown", Label::No, Label::No, Label::Yes),
        // no "yes" in "I don't know" -> wrong for a yes label
        ("I don't know", Label::Yes, Label::No, Label::Yes),
        // "eyes" contains "yes"
        ("Two eyes", Label::Yes, Label::Yes, Label::Yes),
        // a "no" label and no "no" substring -> counted as yes
        ("There is a dog.", Label::No, Label::Yes, Label::Yes),
        // empty: wrong under the authors' rule whatever the label
        ("", Label::Yes, Label::No, Label::Yes),
        ("", Label::No, Label::Yes, Label::Yes),
        // stripped and lower-cased
        ("  YES \n", Label::Yes, Label::Yes, Label::Yes),
    ];
    for (answer, label, damro, pope) in cases {
        assert_eq!(
            parse_damro(answer, label),
            damro,
            "damro: {answer:?} / {label}"
        );
        assert_eq!(PopeRule::Damro.judge(answer, label), damro, "{answer:?}");
        assert_eq!(
            PopeRule::Pope.judge(answer, label),
            pope,
            "pope: {answer:?} / {label}"
        );
    }
    assert_eq!("DAMRO".parse::<PopeRule>().unwrap(), PopeRule::Damro);
    assert_eq!(" pope".parse::<PopeRule>().unwrap(), PopeRule::Pope);
    assert!(matches!(
        "vcd".parse::<PopeRule>(),
        Err(damro_eval::Error::InvalidChoice { .. })
    ));
}

#[test]
fn the_authors_rule_on_the_fixture_files() {
    let questions = pope::read_questions(&common::data("pope_questions.jsonl")).unwrap();
    let answers = pope::read_answers(&common::data("pope_answers.jsonl")).unwrap();
    let report = score_with(&questions, &answers, PopeRule::Damro);
    // label / answer -> authors' rule -> cell
    // q1  yes / "Yes, there is a dog ..."  -> has "yes"    -> TP
    // q2  yes / "No."                      -> no "yes"     -> FN
    // q3  no  / "No, there is no cat."     -> has "no"     -> TN
    // q4  no  / "Yes"                      -> no "no"      -> FP
    // q5  no  / "There is not a bus ..."   -> "not" has no -> TN
    // q6  yes / "Yes. It is not blue."     -> has "yes"    -> TP
    // q7  no  / "NO"                       -> "no"         -> TN (common rule: FP)
    // q8  yes / "No\nthere is a motorcycle"-> no "yes"     -> FN (common rule: TP)
    // q9  yes / "I don't know"             -> no "yes"     -> FN (common rule: TP)
    // q10 no  / "nope, not at all"         -> has "no"     -> TN
    // TP 2, FP 1, TN 4, FN 3
    let c = report.counts;
    assert_eq!((c.tp, c.fp, c.tn, c.fn_), (2, 1, 4, 3));
    // accuracy 6/10; precision 2/3; recall 2/5; F1 = (8/15)/(16/15) = 1/2;
    // yes ratio 3/10
    let m = report.metrics;
    assert!(close(m.accuracy, 0.6), "{m:?}");
    assert!(close(m.precision, 2.0 / 3.0), "{m:?}");
    assert!(close(m.recall, 0.4), "{m:?}");
    assert!(close(m.f1, 0.5), "{m:?}");
    assert!(close(m.yes_ratio, 0.3), "{m:?}");
    assert_eq!(report.rule, PopeRule::Damro);
}

#[test]
fn scores_the_fixture_files() {
    let questions = pope::read_questions(&common::data("pope_questions.jsonl")).unwrap();
    let answers = pope::read_answers(&common::data("pope_answers.jsonl")).unwrap();

    // Question file: ids 1..=10 and 12 are valid (q9's "Yes" label is read
    // case-insensitively); q11 ("maybe") and q13 (no label) are unknown
    // labels; the second q3 is a duplicate; q14 lacks `image`.
    assert_eq!(questions.questions.len(), 11);
    let kinds: Vec<_> = questions.bad.iter().map(|b| (b.line, b.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (Some(11), BadRecordKind::UnknownLabel),
            (Some(14), BadRecordKind::DuplicateId),
            (Some(15), BadRecordKind::UnknownLabel),
            (Some(16), BadRecordKind::MalformedLine),
        ]
    );

    let report = score(&questions, &answers);
    // label / answer -> parsed -> cell
    // q1  yes / "Yes, there is a dog in the image."  -> yes -> TP
    // q2  yes / "No."                                -> no  -> FN
    // q3  no  / "No, there is no cat."               -> no  -> TN
    // q4  no  / "Yes"                                -> yes -> FP
    // q5  no  / "There is not a bus ..." (`text`)    -> no  -> TN
    // q6  yes / "Yes. It is not blue." (`answer`)    -> yes -> TP
    // q7  no  / "NO"                                 -> yes -> FP
    // q8  yes / "No\nthere is a motorcycle"          -> yes -> TP
    // q9  yes / "I don't know"                       -> yes -> TP
    // q10 no  / "nope, not at all"                   -> no  -> TN
    // TP = 4 (q1 q6 q8 q9), FP = 2 (q4 q7), TN = 3 (q3 q5 q10), FN = 1 (q2)
    // q12: no answer -> unanswered 1
    // answers to q11 (invalid question) and q99 -> unmatched 2
    // second answer to q1 -> duplicate 1; torn last line -> malformed 1
    let expected_counts = PopeCounts {
        tp: 4,
        fp: 2,
        tn: 3,
        fn_: 1,
        unknown_labels: 2,
        unanswered: 1,
        unmatched_answers: 2,
        duplicate_answers: 1,
        malformed_answers: 1,
    };
    assert_eq!(report.counts, expected_counts);
    // accuracy  = (TP + TN) / 10 = 7 / 10 = 0.7
    // precision = TP / (TP + FP) = 4 / 6 = 2/3
    // recall    = TP / (TP + FN) = 4 / 5 = 0.8
    // F1        = 2 * (2/3) * (4/5) / (2/3 + 4/5) = (16/15) / (22/15) = 8/11
    // yes ratio = (TP + FP) / 10 = 6 / 10 = 0.6
    let m = report.metrics;
    assert!(close(m.accuracy, 0.7), "{m:?}");
    assert!(close(m.precision, 2.0 / 3.0), "{m:?}");
    assert!(close(m.recall, 0.8), "{m:?}");
    assert!(close(m.f1, 8.0 / 11.0), "{m:?}");
    assert!(close(m.yes_ratio, 0.6), "{m:?}");

    // The report serialises with `fn` (not `fn_`) and prints a table.
    let json: serde_json::Value =
        serde_json::from_str(&damro_eval::to_json_pretty(&report).unwrap()).unwrap();
    assert_eq!(json["counts"]["fn"], 1);
    assert_eq!(json["counts"]["tp"], 4);
    // rule, model ids and answer tallies: 10 scored; unscored = 2 unmatched
    // + 1 duplicate + 1 malformed; only the first record names a model
    assert_eq!(json["rule"], "pope");
    assert_eq!(json["model_ids"], serde_json::json!(["fake"]));
    assert_eq!(json["scored_answers"], 10);
    assert_eq!(json["unscored_answers"], 4);
    assert!(!report.nothing_scored());
    let with = report.clone().with_settings(
        damro_eval::RunSettings::new()
            .with("alpha", 0.5)
            .with("mode", "damro"),
    );
    let json: serde_json::Value =
        serde_json::from_str(&damro_eval::to_json_pretty(&with).unwrap()).unwrap();
    assert_eq!(
        json["settings"],
        serde_json::json!({"alpha": 0.5, "mode": "damro"})
    );
    let back: PopeReport =
        serde_json::from_str(&damro_eval::to_json_pretty(&with).unwrap()).unwrap();
    assert_eq!(back, with);
    let table = report.to_string();
    assert!(
        table.contains("accuracy") && table.contains("70.00"),
        "{table}"
    );
}

#[test]
fn all_no_answers_give_zero_precision_without_dividing_by_zero() {
    // 2 questions labelled yes, 1 no, every answer "No":
    // TP = 0, FP = 0, TN = 1, FN = 2
    // accuracy = 1/3; precision = 0/0 -> 0; recall = 0/2 = 0; F1 -> 0; yes ratio = 0/3 = 0
    let questions = parse_questions(
        br#"{"question_id": "a", "image": "x.jpg", "text": "?", "label": "yes"}
{"question_id": "b", "image": "x.jpg", "text": "?", "label": "yes"}
{"question_id": "c", "image": "x.jpg", "text": "?", "label": "no"}"#,
    );
    let answers = parse_answers(
        br#"{"question_id": "a", "output": "No"}
{"question_id": "b", "output": "no"}
{"question_id": "c", "output": "No."}
"#,
    );
    let report = score(&questions, &answers);
    assert_eq!(
        (
            report.counts.tp,
            report.counts.fp,
            report.counts.tn,
            report.counts.fn_
        ),
        (0, 0, 1, 2)
    );
    let m = report.metrics;
    assert!(close(m.accuracy, 1.0 / 3.0));
    assert_eq!(
        (m.precision, m.recall, m.f1, m.yes_ratio),
        (0.0, 0.0, 0.0, 0.0)
    );
}

#[test]
fn string_and_integer_ids_are_distinct() {
    // Question "1" (string) is answered by id 1 (integer): no match.
    let questions =
        parse_questions(br#"{"question_id": "1", "image": "x.jpg", "text": "?", "label": "yes"}"#);
    let answers = parse_answers(b"{\"question_id\": 1, \"output\": \"Yes\"}\n");
    let report = score(&questions, &answers);
    assert_eq!(report.counts.scored(), 0);
    assert_eq!(report.counts.unanswered, 1);
    assert_eq!(report.counts.unmatched_answers, 1);
    assert_eq!(questions.questions[0].question_id, QuestionId::from("1"));
}

#[test]
fn empty_inputs_score_to_zero() {
    let report = score(&QuestionSet::default(), &AnswerSet::default());
    assert_eq!(report, PopeReport::from_counts(PopeCounts::default()));
    assert!(report.nothing_scored());
    assert_eq!(report.metrics, PopeMetrics::default());
}

#[test]
fn the_prompt_is_the_question_plus_the_authors_suffix() {
    assert_eq!(
        pope::pope_prompt("Is there a dog in the image?"),
        "Is there a dog in the image? Please answer this question with one word."
    );
}

//! `--shard i/N` and the merge: three shard runs answer every question
//! exactly once between them, and the merge refuses anything else.

#![allow(clippy::unwrap_used)]

mod common;

use std::cell::Cell;
use std::path::{Path, PathBuf};

use common::{Scratch, assert_exactly_once, fake_answer, id_counts};
use damro_eval::pope::{self, score::score};
use damro_eval::runner::{Job, run_pope};
use damro_eval::{Error, QuestionId, RunOptions, Shard, Silent, merge_answers};

/// Runs every shard of `count` over the scratch questions, each into its
/// own file, and returns the files.
fn run_shards(s: &Scratch, count: usize) -> Vec<PathBuf> {
    let questions = s.read_questions();
    let base = s.path("answers.jsonl");
    let calls = Cell::new(0);
    let files: Vec<PathBuf> = Shard::all_of(count)
        .unwrap()
        .into_iter()
        .map(|shard| {
            let mut options = RunOptions::new(shard.file_name(&base), &s.images, "fake");
            options.shard = shard;
            let summary = run_pope(
                &questions,
                &options,
                |job: &Job, _: &Path| -> Result<String, String> {
                    calls.set(calls.get() + 1);
                    Ok(fake_answer(&job.id))
                },
                &mut Silent,
            )
            .unwrap();
            assert!(summary.is_complete());
            options.answers
        })
        .collect();
    assert_eq!(calls.get(), questions.questions.len());
    files
}

#[test]
fn three_shards_merge_into_every_question_once() {
    let s = Scratch::new(10);
    let files = run_shards(&s, 3);
    assert_eq!(
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "answers.shard-0-of-3.jsonl",
            "answers.shard-1-of-3.jsonl",
            "answers.shard-2-of-3.jsonl"
        ]
    );
    // the rule: line p goes to shard p % 3 -> shard 0 has ids 1, 4, 7, 10
    let shard0: Vec<_> = pope::read_answers(&files[0])
        .unwrap()
        .answers
        .into_iter()
        .map(|(_, r)| r.question_id)
        .collect();
    assert_eq!(shard0, [1, 4, 7, 10].map(QuestionId::Int));
    // the union of the shard files has every question exactly once
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    assert_exactly_once(&id_counts(&refs), 10);

    let questions = s.read_questions();
    let merged = s.path("merged.jsonl");
    let report = merge_answers(questions.ids(), &files, &merged).unwrap();
    assert_eq!(report.records, 10);
    assert!(report.malformed.is_empty());
    assert_exactly_once(&id_counts(&[&merged]), 10);
    // in question order
    let order: Vec<_> = pope::read_answers(&merged)
        .unwrap()
        .answers
        .into_iter()
        .map(|(_, r)| r.question_id)
        .collect();
    assert_eq!(order, (1..=10).map(QuestionId::Int).collect::<Vec<_>>());
    // and it scores like a single run would: labels even yes / odd no, fake
    // answers even "Yes" / odd "No, ..." -> TP 5, TN 5
    let report = score(&questions, &pope::read_answers(&merged).unwrap());
    assert_eq!(
        (report.counts.tp, report.counts.tn, report.counts.scored()),
        (5, 5, 10)
    );
}

#[test]
fn the_merge_lists_duplicates_missing_and_unexpected_ids() {
    let s = Scratch::new(6);
    let files = run_shards(&s, 3);
    // shard 0 holds ids 1 and 4, shard 1 ids 2 and 5, shard 2 ids 3 and 6.
    // Drop id 5 from shard 1, copy id 1 into shard 2, add an unknown id 42
    // and an unparseable line to shard 2.
    let shard1 = std::fs::read_to_string(&files[1]).unwrap();
    let kept: Vec<&str> = shard1
        .lines()
        .filter(|l| !l.starts_with("{\"question_id\":5,"))
        .collect();
    assert_eq!(kept.len(), 1);
    std::fs::write(&files[1], format!("{}\n", kept.join("\n"))).unwrap();
    let first_of_shard0 = std::fs::read_to_string(&files[0])
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let mut shard2 = std::fs::read_to_string(&files[2]).unwrap();
    shard2.push_str(&format!(
        "{first_of_shard0}\n{{\"question_id\": 42, \"output\": \"Yes\"}}\nnot json\n"
    ));
    std::fs::write(&files[2], shard2).unwrap();

    let questions = s.read_questions();
    let merged = s.path("merged.jsonl");
    let err = merge_answers(questions.ids(), &files, &merged).unwrap_err();
    let Error::Merge(mismatch) = &err else {
        panic!("expected a merge error, got {err}")
    };
    assert_eq!(mismatch.missing, [QuestionId::Int(5)]);
    assert_eq!(mismatch.missing[0].prompt, None);
    assert_eq!(mismatch.duplicates.len(), 1);
    let (dup_id, places) = &mismatch.duplicates[0];
    assert_eq!(*dup_id, QuestionId::Int(1));
    assert_eq!(
        places
            .iter()
            .map(|p| (p.file.clone(), p.line))
            .collect::<Vec<_>>(),
        [(files[0].clone(), 1), (files[2].clone(), 3)]
    );
    assert_eq!(mismatch.unexpected.len(), 1);
    assert_eq!(mismatch.unexpected[0].0, QuestionId::Int(42));
    assert!(!merged.exists(), "nothing is written on a mismatch");
    let message = err.to_string();
    assert!(
        message.contains("1 missing") && message.contains("duplicate 1"),
        "{message}"
    );
}

#[test]
fn unparseable_lines_do_not_block_a_complete_merge() {
    let s = Scratch::new(4);
    let files = run_shards(&s, 2);
    let mut shard0 = std::fs::read_to_string(&files[0]).unwrap();
    shard0.insert_str(0, "{\"question_id\": 1, \"outp\n");
    std::fs::write(&files[0], shard0).unwrap();
    let merged = s.path("merged.jsonl");
    let report = merge_answers(s.read_questions().ids(), &files, &merged).unwrap();
    assert_eq!(report.records, 4);
    assert_eq!(report.malformed.len(), 1);
    assert_exactly_once(&id_counts(&[&merged]), 4);
}

#[test]
fn shard_specs() {
    let shard: Shard = "1/3".parse().unwrap();
    assert_eq!((shard.index(), shard.count()), (1, 3));
    assert_eq!(shard.to_string(), "1/3");
    assert!(shard.contains(1) && shard.contains(4) && !shard.contains(3));
    for bad in ["3/3", "0/0", "a/3", "1", "-1/3", "1/x"] {
        let err = bad.parse::<Shard>().unwrap_err();
        assert!(matches!(err, Error::InvalidShard { .. }), "{bad}: {err}");
    }
    assert_eq!(
        Shard::ALL.file_name(Path::new("a/b.jsonl")),
        Path::new("a/b.jsonl")
    );
    assert_eq!(
        shard.file_name(Path::new("a/answers")),
        Path::new("a/answers.shard-1-of-3")
    );
}

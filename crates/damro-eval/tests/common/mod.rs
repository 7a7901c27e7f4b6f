//! Helpers shared by the integration tests: fixture paths, a scratch folder
//! with a POPE question file and images, and answer-file inspection.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use damro_eval::QuestionId;
use damro_eval::pope::{self, QuestionSet};

/// A file under `tests/data/`.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A scratch folder with `n` POPE questions (ids 1..=n, alternating labels)
/// in `questions.jsonl` and one dummy image per question in `images/`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub questions: PathBuf,
    pub images: PathBuf,
}

impl Scratch {
    pub fn new(n: i64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let mut lines = String::new();
        for id in 1..=n {
            let image = format!("img_{id}.jpg");
            std::fs::write(images.join(&image), b"not really a jpeg").unwrap();
            let label = if id % 2 == 0 { "yes" } else { "no" };
            lines.push_str(&format!(
                "{{\"question_id\": {id}, \"image\": \"{image}\", \"text\": \"Is there a thing {id}?\", \"label\": \"{label}\"}}\n"
            ));
        }
        let questions = dir.path().join("questions.jsonl");
        std::fs::write(&questions, lines).unwrap();
        Self {
            dir,
            questions,
            images,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read_questions(&self) -> QuestionSet {
        pope::read_questions(&self.questions).unwrap()
    }
}

/// How many times each question id occurs among the parseable lines of
/// answer files; panics on a line that does not parse.
pub fn id_counts(files: &[&Path]) -> HashMap<QuestionId, usize> {
    let mut counts = HashMap::new();
    for file in files {
        let set = pope::read_answers(file).unwrap();
        assert!(
            set.bad.is_empty(),
            "unparseable lines in {}: {:?}",
            file.display(),
            set.bad
        );
        for (_, record) in set.answers {
            *counts.entry(record.question_id).or_insert(0) += 1;
        }
    }
    counts
}

/// Asserts that `counts` holds exactly the ids 1..=n, once each.
pub fn assert_exactly_once(counts: &HashMap<QuestionId, usize>, n: i64) {
    for id in 1..=n {
        assert_eq!(
            counts.get(&QuestionId::Int(id)),
            Some(&1),
            "question {id}: {counts:?}"
        );
    }
    assert_eq!(counts.len(), n as usize, "unexpected ids: {counts:?}");
}

/// The fake model: "Yes" for even ids, "No, ..." for odd ones.
pub fn fake_answer(id: &QuestionId) -> String {
    match id {
        QuestionId::Int(i) if i % 2 == 0 => "Yes".into(),
        _ => "No, there is none.".into(),
    }
}

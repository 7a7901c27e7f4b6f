//! The POPE pipeline over a real (tiny) model: the runner answers the
//! synthetic question file with the InstructBLIP fixture model, is stopped
//! part-way, resumes, and every question ends up answered exactly once, with
//! the answer the model gives that question on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use damro::{
    AutoDecoder, DamroDecoder, DamroSettings, GenerationConfig, ImageSource, Mode, ModelOptions,
    Request, generate,
};
use damro_eval::{RunOptions, Silent, pope, runner};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn pope_run_resumes_and_answers_every_question_once() {
    let decoder = AutoDecoder::load(
        fixtures().join("instructblip/models/hub"),
        ModelOptions::cpu_f32(),
    )
    .unwrap();
    let template = decoder.default_template();
    let config =
        GenerationConfig::sampled(Mode::Damro(DamroSettings::new(0.5, 0.1, 4).unwrap()), 8, 42);
    let answer = |job: &runner::Job, image: &Path| -> Result<String, damro::Error> {
        let request = Request::new(
            ImageSource::File(image.to_path_buf()),
            &job.prompt,
            template,
        );
        Ok(generate(&decoder, &[request], &config)?.remove(0).text)
    };
    let questions = pope::read_questions(&fixtures().join("pope/questions.jsonl")).unwrap();
    assert_eq!(questions.questions.len(), 6);
    let dir = tempfile::tempdir().unwrap();
    let mut options = RunOptions::new(
        dir.path().join("answers.jsonl"),
        fixtures().join("images"),
        "tiny-instructblip",
    );
    options.max_records = Some(4);
    let first = runner::run_pope(&questions, &options, answer, &mut Silent).unwrap();
    assert!(!first.is_complete());
    options.max_records = None;
    let second = runner::run_pope(&questions, &options, answer, &mut Silent).unwrap();
    assert!(second.is_complete());

    let answers = pope::read_answers(&options.answers).unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (_, record) in &answers.answers {
        *seen.entry(record.question_id.to_string()).or_default() += 1;
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");

    // Each stored answer is what the model says to that question alone.
    for q in &questions.questions {
        let (_, record) = answers
            .answers
            .iter()
            .find(|(_, r)| r.question_id == q.question_id)
            .unwrap();
        let image = fixtures().join("images").join(&q.image);
        let request = Request::new(ImageSource::File(image), q.prompt(), template);
        let expected = generate(&decoder, &[request], &config).unwrap().remove(0);
        assert_eq!(record.output, expected.text, "question {}", q.question_id);
        assert!(!expected.token_ids.is_empty());
    }
    let report = pope::score::score(&questions, &answers);
    assert_eq!(report.counts.scored(), 6);
    let _ = decoder.device();
}

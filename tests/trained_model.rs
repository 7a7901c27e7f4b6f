//! The trained tiny LLaVA (`tests/fixtures/trained/llava`, made by
//! `tools/train_tiny_llava.py`) answers POPE-style questions about held-out
//! synthetic scenes correctly with plain greedy decoding.
//!
//! The questions are every distinct question of the three synthetic POPE
//! files (`tests/fixtures/trained/pope/*.jsonl`: about as many present as
//! absent shapes); whether the shape is in the image is read from the scene
//! generator's ground truth (`scenes/ground_truth.json`), and the files'
//! labels must agree with it. An answer counts as right only when it is
//! exactly `Yes` for a present shape or `No` for an absent one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use damro::llm::PromptTemplate;
use damro::{GenerationConfig, ImageSource, LlavaDecoder, Mode, ModelOptions, Request, generate};
use serde_json::Value;

/// The authors' POPE answer-format suffix.
const POPE_SUFFIX: &str = " Please answer this question with one word.";
/// The bar the issue sets for held-out yes/no answers.
const MIN_ACCURACY: f64 = 0.9;
/// Requests per `generate` call.
const BATCH: usize = 64;

/// The fixture folder, or `DAMRO_TRAINED_DIR` (to check a new training run's
/// output before it replaces the fixtures).
fn root() -> PathBuf {
    match std::env::var_os("DAMRO_TRAINED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trained"),
    }
}

/// Image file name -> the shapes present in it, from the generator.
fn ground_truth() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("scenes/ground_truth.json")).unwrap();
    let scenes: Vec<Value> = serde_json::from_str(&text).unwrap();
    scenes
        .iter()
        .map(|s| {
            let shapes = s["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["shape"].as_str().unwrap().to_string())
                .collect();
            (s["image"].as_str().unwrap().to_string(), shapes)
        })
        .collect()
}

/// "Is there a star in the image?" -> "star".
fn asked_shape(question: &str) -> String {
    let rest = question
        .strip_prefix("Is there a ")
        .or_else(|| question.strip_prefix("Is there an "))
        .unwrap();
    rest.strip_suffix(" in the image?").unwrap().to_string()
}

/// Distinct (image, question) pairs of the three splits, each with whether
/// the asked shape is present (checked against the file's label).
fn questions(truth: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String, bool)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for split in ["random", "popular", "adversarial"] {
        let path = root().join(format!("pope/{split}.jsonl"));
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let q: Value = serde_json::from_str(line).unwrap();
            let image = q["image"].as_str().unwrap().to_string();
            let text = q["text"].as_str().unwrap().to_string();
            let present = truth[&image].contains(&asked_shape(&text));
            let label = q["label"].as_str().unwrap();
            assert_eq!(
                label == "yes",
                present,
                "{split}: {image} {text} labelled {label}"
            );
            if seen.insert((image.clone(), text.clone())) {
                out.push((image, text, present));
            }
        }
    }
    out
}

#[test]
fn heldout_yes_no_answers_are_mostly_right_with_plain_greedy_decoding() {
    let truth = ground_truth();
    let questions = questions(&truth);
    let yes = questions.iter().filter(|q| q.2).count();
    assert!(
        questions.len() >= 200 && yes * 3 >= questions.len() && yes * 3 <= 2 * questions.len(),
        "{} questions, {yes} about present shapes: expected a balanced set of at least 200",
        questions.len()
    );
    let decoder = LlavaDecoder::load(root().join("llava"), ModelOptions::cpu_f32()).unwrap();
    let config = GenerationConfig::greedy(Mode::Plain, 4);
    let mut right = 0;
    let mut wrong = Vec::new();
    for chunk in questions.chunks(BATCH) {
        let requests: Vec<Request> = chunk
            .iter()
            .map(|(image, text, _)| {
                let file = ImageSource::File(root().join("scenes").join(image));
                Request::new(
                    file,
                    format!("{text}{POPE_SUFFIX}"),
                    PromptTemplate::LlavaV1,
                )
            })
            .collect();
        for (out, (image, text, present)) in generate(&decoder, &requests, &config)
            .unwrap()
            .iter()
            .zip(chunk)
        {
            let expected = if *present { "Yes" } else { "No" };
            if out.text == expected {
                right += 1;
            } else {
                wrong.push(format!(
                    "{image}: {text} -> {:?} (truth {expected})",
                    out.text
                ));
            }
        }
    }
    let accuracy = right as f64 / questions.len() as f64;
    let shown = &wrong[..wrong.len().min(20)];
    println!(
        "{right}/{} right ({accuracy:.3}); first wrong answers: {shown:#?}",
        questions.len()
    );
    assert!(
        accuracy >= MIN_ACCURACY,
        "held-out yes/no accuracy {accuracy:.3} < {MIN_ACCURACY}; first wrong answers: {shown:#?}"
    );
}

//! The contrastive sampler against the reference fixtures
//! (`tests/fixtures/README.md`): each case's first-step logits of both
//! branches must give the case's first generated token.
#![allow(clippy::unwrap_used)]

use damro::sampler::{
    Contrast, DamroParams, Sampler, StepLogits, TokenChoice, TorchRng, ids_to_vec,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

fn fixtures(family: &str) -> (Value, HashMap<String, Tensor>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family);
    let json = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let tensors = Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap();
    (
        serde_json::from_str(&json).unwrap(),
        tensors.into_iter().collect(),
    )
}

/// `[vocab]` fixture logits as a `[1, vocab]` batch.
fn step_logits(tensors: &HashMap<String, Tensor>, case: &str, branch: &str) -> Tensor {
    let name = format!("cases/{case}/logits_{branch}_step0");
    tensors
        .get(&name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .view([1, -1])
}

/// Returns how many cases were checked.
fn check_first_tokens(family: &str) -> usize {
    let (reference, tensors) = fixtures(family);
    let mut checked = 0;
    for case in reference["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let expected = case["generated_ids"][0].as_i64().unwrap();
        let full = step_logits(&tensors, name, "full");
        let outlier;
        let (contrast, step) = match case["mode"].as_str().unwrap() {
            "plain" => (Contrast::Plain, StepLogits::plain(&full)),
            "damro" => {
                outlier = step_logits(&tensors, name, "outlier");
                let params = DamroParams::new(
                    case["alpha"].as_f64().unwrap(),
                    case["beta"].as_f64().unwrap(),
                )
                .unwrap();
                (Contrast::Damro(params), StepLogits::damro(&full, &outlier))
            }
            mode => panic!("{name}: unknown mode {mode}"),
        };
        let choice = match case["decoding"].as_str().unwrap() {
            "greedy" => TokenChoice::Greedy,
            // `torch.manual_seed(seed)` right before generation; the first
            // step is the first draw.
            "sample" => TokenChoice::Sample(TorchRng::seeded(case["seed"].as_u64().unwrap())),
            other => panic!("{name}: unknown decoding {other}"),
        };
        let ids = Sampler::new(contrast, choice).step(step).unwrap();
        assert_eq!(ids_to_vec(&ids).unwrap(), [expected], "{family} {name}");
        checked += 1;
    }
    checked
}

// One test per family binary-wide would race on libtorch's global generator
// if two sampled at once; the families run in one test for that reason.
#[test]
fn first_step_logits_give_the_fixtures_first_tokens() {
    assert_eq!(check_first_tokens("llava"), 9);
    assert_eq!(check_first_tokens("instructblip"), 7);
}

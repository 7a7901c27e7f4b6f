//! InstructBLIP vision side against `tests/fixtures/instructblip` (HF
//! transformers 5.23, fp32 CPU): the EVA tower's output, DAMRO [CLS] scores
//! and their top-k ranking, the Q-Former's query outputs for the reference
//! instruction, the projection, and the outlier branch's image prefix of
//! the DAMRO cases (reference and corrected indexing), for the sharded fp32
//! and the fp16 checkpoints.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Reference, TOL, TOL_FUSED, Tol, assert_close, ids, topk};
use damro_nn::LoadOptions;
use damro_nn::attention::AttentionImpl;
use damro_vision::{InstructBlipConfig, InstructBlipVision, QFormerInput, QFormerTokenizer};
use tch::{Device, Kind, Tensor};

const EAGER: AttentionImpl = AttentionImpl::Eager;
const FUSED: AttentionImpl = AttentionImpl::Sdpa;

fn load(dir: &std::path::Path, kernel: AttentionImpl, kind: Kind) -> InstructBlipVision {
    let mut config = InstructBlipConfig::from_dir(dir).unwrap();
    config.set_attention(kernel);
    let options = LoadOptions {
        kind,
        device: Device::Cpu,
    };
    InstructBlipVision::load_with_config(dir, &config, options).unwrap()
}

fn check(
    variant: &str,
    prefix: &str,
    outlier_variant: Option<&str>,
    kernel: AttentionImpl,
    kind: Kind,
    tol: Tol,
) -> f64 {
    let r = Reference::load("instructblip");
    let dir = r.model_dir(variant);
    let model = load(&dir, kernel, kind);
    let prompt = r.json["qformer_reference_prompt"].as_str().unwrap();
    let tokenizer = QFormerTokenizer::from_model_dir(&dir).unwrap();
    let text = tokenizer
        .encode(
            r.json["prompts"][prompt]["question"].as_str().unwrap(),
            Device::Cpu,
        )
        .unwrap();
    let mut worst: f64 = 0.0;
    for image in r.images() {
        let pixels = r.pixels(&image);
        let what = |t: &str| format!("{variant} {image} {t}");
        let out = model.encode(pixels, &text).unwrap();
        let cls = out.cls_attention.as_ref().unwrap();
        let cases = [
            (
                "vision",
                &out.image_embeds,
                format!("{prefix}vision/hidden/{image}"),
            ),
            (
                "cls attention",
                cls,
                format!("{prefix}vision/cls_attention/{image}"),
            ),
            (
                "qformer",
                &out.query_output,
                format!("{prefix}qformer/{image}"),
            ),
            (
                "projection",
                &out.embeds,
                format!("{prefix}projector/{image}"),
            ),
        ];
        for (name, actual, reference) in cases {
            worst = worst.max(assert_close(&what(name), actual, r.tensor(&reference), tol));
        }
        assert_eq!(cls.kind(), Kind::Float);
        if let Some(recorded) = outlier_variant {
            assert_eq!(
                topk(cls, 4),
                r.outliers(&image, recorded),
                "{variant} {image}: outlier ranking"
            );
        }
    }
    eprintln!("{variant} ({kernel:?}, {kind:?}): max error / scale {worst:e}");
    worst
}

#[test]
fn sharded_hub_checkpoint_matches_reference() {
    check("hub", "", Some("hub"), EAGER, Kind::Float, TOL);
    check("hub", "", Some("hub"), FUSED, Kind::Float, TOL_FUSED);
}

#[test]
fn f16_checkpoint_matches_its_rounded_reference() {
    let (prefix, variant) = ("variant/hub-f16/", "hub-f16");
    check(variant, prefix, Some(variant), EAGER, Kind::Float, TOL);
    check(
        variant,
        prefix,
        Some(variant),
        FUSED,
        Kind::Float,
        TOL_FUSED,
    );
}

#[test]
fn f16_checkpoint_is_close_to_the_fp32_model() {
    // The weight rounding alone moves the Q-Former output by up to ~3.3%.
    check("hub-f16", "", None, FUSED, Kind::Float, Tol::relative(5e-2));
}

#[test]
fn reduced_precision_compute_is_close_to_the_fp32_model() {
    // Observed: bf16 13% (Q-Former output), f16 6% of the output scale.
    check("hub", "", None, FUSED, Kind::BFloat16, Tol::relative(0.25));
    check("hub", "", None, FUSED, Kind::Half, Tol::relative(0.12));
}

#[test]
fn qformer_tokenizer_matches_reference_ids() {
    let r = Reference::load("instructblip");
    let tokenizer = QFormerTokenizer::from_model_dir(r.model_dir("hub")).unwrap();
    for (name, prompt) in r.json["prompts"].as_object().unwrap() {
        let question = prompt["question"].as_str().unwrap();
        assert_eq!(
            tokenizer.ids(question).unwrap(),
            ids(&prompt["qformer_ids_as_written"]),
            "{name}"
        );
    }
    let batch = tokenizer
        .encode_batch(&["is there a dog?", "describe"], Device::Cpu)
        .unwrap();
    assert_eq!(batch.input_ids.size()[0], 2);
    assert_eq!(
        tokenizer.pad_id(),
        r.json["tokens"]["qformer"]["pad"].as_i64().unwrap()
    );
}

#[test]
fn outlier_prefixes_match_damro_cases() {
    let r = Reference::load("instructblip");
    let model = load(&r.model_dir("hub"), EAGER, Kind::Float);
    let mut checked = 0;
    for case in r.cases().iter().filter(|c| c["mode"] == "damro") {
        let name = case["name"].as_str().unwrap();
        let image = case["image"].as_str().unwrap();
        let vision = model.encode_image(r.pixels(image)).unwrap();
        let k = case["k"].as_i64().unwrap();
        let outliers = ids(&case["outlier_indices"]);
        assert_eq!(
            topk(vision.cls_attention.as_ref().unwrap(), k),
            outliers,
            "{name}"
        );
        // Reference indexing takes row `idx` of the [CLS]-first output,
        // corrected indexing row `idx + 1`.
        let shift = i64::from(case["indexing"] == "corrected");
        let rows: Vec<i64> = outliers.iter().map(|i| i + shift).collect();
        assert_eq!(rows, ids(&case["gathered_rows"]), "{name}");
        let picked = vision
            .last_hidden_state
            .index_select(1, &Tensor::from_slice(&rows));
        let text = QFormerInput::from_ids(&[ids(&case["qformer_ids"])], 0, Device::Cpu).unwrap();
        let prefix = model.image_prefix(&picked, &text).unwrap();
        assert_close(
            name,
            &prefix,
            r.tensor(&format!("cases/{name}/prefix_outlier")),
            TOL,
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} DAMRO cases");
}

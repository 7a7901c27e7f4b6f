//! LLaVA-1.5 vision side against `tests/fixtures/llava` (HF transformers
//! 5.23, fp32 CPU): vision hidden state at `vision_feature_layer`, DAMRO
//! [CLS] scores, their top-k ranking, projector outputs, the projected
//! outlier tokens of the DAMRO cases, in every key layout and on-disk dtype.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Reference, TOL, TOL_FUSED, Tol, assert_close, ids, topk};
use damro_nn::LoadOptions;
use damro_nn::attention::AttentionImpl;
use damro_vision::{ClipRequest, LlavaConfig, LlavaVision};
use tch::{Device, Kind, Tensor};

const EAGER: AttentionImpl = AttentionImpl::Eager;
const FUSED: AttentionImpl = AttentionImpl::Sdpa;

fn load(dir: &std::path::Path, kernel: AttentionImpl, kind: Kind) -> LlavaVision {
    let mut config = LlavaConfig::from_dir(dir).unwrap();
    config.set_attention(kernel);
    LlavaVision::load_with_config(
        dir,
        &config,
        LoadOptions {
            kind,
            device: Device::Cpu,
        },
    )
    .unwrap()
}

/// Compares one model directory with the reference tensors under `prefix`
/// and, when given, the outlier ranking recorded for `outlier_variant`;
/// returns the largest
/// error seen (relative to the reference's scale).
fn check(
    variant: &str,
    prefix: &str,
    outlier_variant: Option<&str>,
    kernel: AttentionImpl,
    kind: Kind,
    tol: Tol,
) -> f64 {
    let r = Reference::load("llava");
    let model = load(&r.model_dir(variant), kernel, kind);
    let mut worst: f64 = 0.0;
    for image in r.images() {
        let pixels = r.pixels(&image);
        let hidden = r.tensor(&format!("{prefix}vision/hidden/{image}"));
        let cls = r.tensor(&format!("{prefix}vision/cls_attention/{image}"));
        let projected = r.tensor(&format!("{prefix}projector/{image}"));
        let what = |t: &str| format!("{variant} {image} {t}");

        // The whole selected hidden state, [CLS] row included.
        let out = model
            .vision_tower
            .forward(
                pixels,
                &ClipRequest {
                    hidden_states: &[-2],
                    cls_attention_layer: None,
                },
            )
            .unwrap();
        worst = worst.max(assert_close(
            &what("hidden"),
            &out.hidden_states[0],
            hidden,
            tol,
        ));

        let features = model.encode(pixels).unwrap();
        let patches = hidden.narrow(1, 1, 576);
        worst = worst.max(assert_close(
            &what("features"),
            &features.features,
            &patches,
            tol,
        ));
        let scores = features.cls_attention.as_ref().unwrap();
        assert_eq!(scores.kind(), Kind::Float);
        worst = worst.max(assert_close(&what("cls attention"), scores, cls, tol));
        worst = worst.max(assert_close(
            &what("projector"),
            &features.embeds,
            projected,
            tol,
        ));
        if let Some(recorded) = outlier_variant {
            let k = r.json["images"][&image]["outliers"][recorded]["k"]
                .as_i64()
                .unwrap();
            assert_eq!(
                topk(scores, k),
                r.outliers(&image, recorded),
                "{variant} {image}: outlier ranking"
            );
        }
    }
    eprintln!("{variant} ({kernel:?}, {kind:?}): max error / scale {worst:e}");
    worst
}

#[test]
fn hub_layout_matches_reference() {
    check("hub", "", Some("hub"), EAGER, Kind::Float, TOL);
    check("hub", "", Some("hub"), FUSED, Kind::Float, TOL_FUSED);
}

#[test]
fn tf5_layout_matches_reference() {
    check("tf5", "", Some("hub"), EAGER, Kind::Float, TOL);
    check("tf5", "", Some("hub"), FUSED, Kind::Float, TOL_FUSED);
}

#[test]
fn grouped_query_variant_matches_reference() {
    check("gqa", "variant/gqa/", Some("gqa"), EAGER, Kind::Float, TOL);
    check(
        "gqa",
        "variant/gqa/",
        Some("gqa"),
        FUSED,
        Kind::Float,
        TOL_FUSED,
    );
}

#[test]
fn sharded_bf16_checkpoint_matches_its_rounded_reference() {
    // bf16 on disk, loaded into f32: the same numbers as the fp32 reference
    // computed from the bf16-rounded weights.
    let (prefix, variant) = ("variant/hub-sharded-bf16/", "hub-sharded-bf16");
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
fn sharded_bf16_checkpoint_is_close_to_the_fp32_model() {
    // The weight rounding alone moves outputs by up to ~2.3% of their scale.
    check(
        "hub-sharded-bf16",
        "",
        None,
        FUSED,
        Kind::Float,
        Tol::relative(5e-2),
    );
}

#[test]
fn reduced_precision_compute_is_close_to_the_fp32_model() {
    // Observed: bf16 4.4%, f16 0.4% of the output scale.
    check("hub", "", None, FUSED, Kind::BFloat16, Tol::relative(0.1));
    check("hub", "", None, FUSED, Kind::Half, Tol::relative(2e-2));
}

#[test]
fn projected_outlier_tokens_match_damro_cases() {
    let r = Reference::load("llava");
    let mut checked = 0;
    for case in r.cases().iter().filter(|c| c["mode"] == "damro") {
        let name = case["name"].as_str().unwrap();
        let variant = case["variant"].as_str().unwrap();
        let image = case["image"].as_str().unwrap();
        let model = load(&r.model_dir(variant), EAGER, Kind::Float);
        let features = model.encode(r.pixels(image)).unwrap();
        let indices = ids(&case["outlier_indices"]);
        let k = case["k"].as_i64().unwrap();
        assert_eq!(
            topk(features.cls_attention.as_ref().unwrap(), k),
            indices,
            "{name}"
        );
        let picked = features
            .features
            .index_select(1, &Tensor::from_slice(&indices));
        let projected = model.project(&picked).unwrap();
        assert_close(
            name,
            &projected,
            r.tensor(&format!("cases/{name}/projector_outlier")),
            TOL,
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} DAMRO cases");
}

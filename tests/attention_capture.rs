//! Attention capture against HF transformers' `output_attentions` (eager)
//! on the tiny fixtures (`tools/make_attention_fixture.py`): the last
//! query's attention averaged over all heads and layers, and for layer 1
//! head 0 alone, at the prompt and at each decode step of plain greedy
//! decoding, within 1e-4 of the map's peak; the tokens equal HF's.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use damro::llm::PromptTemplate;
use damro::{
    AttentionCapture, DamroDecoder, GenerationConfig, ImageSource, InstructBlipDecoder,
    LlavaDecoder, Mode, ModelOptions, Request, Selection, generate,
};
use serde_json::Value;
use tch::Tensor;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tensors(path: PathBuf) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn options() -> ModelOptions {
    let mut options = ModelOptions::cpu_f32();
    options.preprocessing = damro::vision::preprocess::ProcessorOptions::transformers5_pil();
    options
}

struct Reference {
    meta: Value,
    attn: HashMap<String, Tensor>,
}

fn reference() -> Reference {
    let dir = fixtures().join("attention");
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    Reference {
        meta: serde_json::from_str(&text).unwrap(),
        attn: tensors(dir.join("reference.safetensors")),
    }
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn request(family: &str, case: &Value, template: PromptTemplate) -> Request {
    let pixels = tensors(fixtures().join(family).join("reference.safetensors"));
    let image = case["image"].as_str().unwrap();
    let px = pixels[&format!("pixel_values/pil/{image}")].shallow_clone();
    Request::new(
        ImageSource::Pixels(px),
        case["question"].as_str().unwrap(),
        template,
    )
}

/// Generates with a capture and compares each token's image map with the
/// reference's `[start, start + len)` slice.
fn check<D: DamroDecoder>(decoder: &D, family: &str, template: PromptTemplate) -> usize {
    let r = reference();
    let case = &r.meta["cases"][family];
    let want_tokens = ids(&case["tokens"]);
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for (capture, key) in [
        (AttentionCapture::default(), "mean"),
        (
            AttentionCapture {
                layers: Selection::Only(vec![1]),
                heads: Selection::Only(vec![0]),
            },
            "layer1_head0",
        ),
    ] {
        let mut config = GenerationConfig::greedy(Mode::Plain, want_tokens.len());
        config.attention = Some(capture);
        let out = generate(decoder, &[request(family, case, template)], &config).unwrap();
        let g = &out[0];
        let n = g.token_ids.len();
        assert_eq!(g.token_ids, want_tokens[..n], "{family} {key}: tokens");
        assert_eq!(g.attention.len(), n, "{family} {key}: one map per token");
        let start = image_start(family, &ids(&case["prompt_ids"]), case);
        for (step, map) in g.attention.iter().enumerate() {
            let full = &r.attn[&format!("attn/{family}/step{step}/{key}")];
            let want = full.narrow(0, start as i64, map.len() as i64);
            // Attention weights are ~1/len: the bound is relative to the
            // map's own peak, not to the floor of 1 that logits use.
            let got = Tensor::from_slice(map);
            let peak = want.abs().max().double_value(&[]);
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(
                err <= 1e-4 * peak,
                "{family} step {step} {key}: max abs error {err:e} > 1e-4 x peak {peak:e}"
            );
            worst = worst.max(err / peak);
            checked += 1;
        }
    }
    eprintln!("{family}: worst relative error {worst:e} over {checked} maps");
    checked
}

/// Where the image tokens start in the full input: LLaVA's placeholder
/// position, InstructBLIP's query prefix at 0.
fn image_start(family: &str, prompt_ids: &[i64], _case: &Value) -> usize {
    match family {
        "llava" => prompt_ids.iter().position(|&i| i == 535).unwrap(),
        _ => 0,
    }
}

#[test]
fn llava_capture_equals_hf_attention() {
    let dir = fixtures().join("llava/models/hub");
    let decoder = LlavaDecoder::load(dir, options()).unwrap();
    assert_eq!(check(&decoder, "llava", PromptTemplate::LlavaV1), 2 * 4);
}

#[test]
fn instructblip_capture_equals_hf_attention_over_the_queries() {
    let dir = fixtures().join("instructblip/models/hub");
    let decoder = InstructBlipDecoder::load(dir, options()).unwrap();
    assert!(check(&decoder, "instructblip", PromptTemplate::InstructBlip) >= 2 * 3);
}

#[test]
fn llava_metrics_follow_from_the_captured_maps() {
    let dir = fixtures().join("llava/models/hub");
    let decoder = LlavaDecoder::load(dir, options()).unwrap();
    let r = reference();
    let case = &r.meta["cases"]["llava"];
    let mut config = GenerationConfig::greedy(Mode::Plain, 3);
    config.attention = Some(AttentionCapture::default());
    let out = generate(
        &decoder,
        &[request("llava", case, PromptTemplate::LlavaV1)],
        &config,
    )
    .unwrap();
    let metrics = damro::analysis::token_metrics(&out[0], 10, 3).unwrap();
    assert_eq!(metrics.len(), 3);
    let cls = out[0].cls_attention.as_ref().unwrap();
    assert_eq!(cls.len(), 576);
    for (m, map) in metrics.iter().zip(&out[0].attention) {
        assert_eq!(m.overlap.len(), 10);
        assert!(m.overlap.iter().all(|h| (0.0..=1.0).contains(h)));
        // F by hand: the map's share on the ViT's top-3 patches.
        let mut order: Vec<usize> = (0..cls.len()).collect();
        order.sort_by(|&a, &b| cls[b].total_cmp(&cls[a]).then(a.cmp(&b)));
        let top: f64 = order[..3].iter().map(|&p| f64::from(map[p])).sum();
        let total: f64 = map.iter().map(|&v| f64::from(v)).sum();
        assert!((m.influence - top / total).abs() < 1e-9, "{m:?}");
    }
    // Without a capture nothing is recorded.
    let plain = GenerationConfig::greedy(Mode::Plain, 2);
    let out = generate(
        &decoder,
        &[request("llava", case, PromptTemplate::LlavaV1)],
        &plain,
    )
    .unwrap();
    assert!(out[0].attention.is_empty() && out[0].cls_attention.is_none());
}

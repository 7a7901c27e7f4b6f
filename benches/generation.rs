//! Full-generation benchmark: per-token decode time of plain decoding vs
//! DAMRO with batched branches (one forward per step) vs DAMRO with
//! sequential branches (two forwards per step, the reference's way), on a
//! random LLaVA-1.5-shaped model (LLaMA hidden 768, 8 layers, 12 heads,
//! intermediate 2048, vocab 32000: ~106M parameters in the LLM; a small
//! CLIP tower at 336 px / patch 14, so the LLaVA prompt has 576 + ~64
//! tokens and the outlier branch 10 + ~64).
//!
//! Per-token time = (time of a 65-token generation - time of a 1-token
//! generation) / 64, so prefill and image encoding cancel out; all three
//! variants run interleaved in one process, several rounds, and the medians
//! are reported with their ratios to plain decoding.
//!
//! Run with: `scripts/libtorch-env.sh cargo bench --bench generation`
//! (`DAMRO_BENCH_ROUNDS`, default 5; `DAMRO_BENCH_DEVICE=cuda` on a GPU).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use damro::llm::testing::random_llama_tensors;
use damro::llm::{LlamaConfigJson, PromptTemplate};
use damro::{
    BranchExecution, DamroSettings, GenerationConfig, ImageSource, LlavaDecoder, Mode,
    ModelOptions, Request, generate,
};
use serde_json::json;
use tch::{Device, Kind, Tensor};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/llava/models/hub"
);
const IMAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/images/wide_rgb.png"
);

fn text_config() -> serde_json::Value {
    json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 8,
        "num_attention_heads": 12, "vocab_size": 32000, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096
    })
}

/// Writes a random LLaVA-1.5-shaped checkpoint (hub layout) with the
/// fixture's tokenizer and image processor.
fn write_model(dir: &Path) {
    let (vh, vi, layers) = (256i64, 1024i64, 4i64);
    let config = json!({
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "image_token_index": 535, "pad_token_id": 536, "projector_hidden_act": "gelu",
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "text_config": text_config(),
        "vision_config": {"hidden_size": vh, "intermediate_size": vi, "image_size": 336,
            "patch_size": 14, "num_attention_heads": 4, "num_hidden_layers": layers,
            "model_type": "clip_vision_model"}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(Path::new(FIXTURE).join(f), dir.join(f)).unwrap();
    }
    let cfg = LlamaConfigJson::from_value(text_config())
        .unwrap()
        .into_config()
        .unwrap();
    let mut tensors = random_llama_tensors(&cfg, "language_model", 7).unwrap();
    // EOS (id 2) never wins, so every generation runs to its limit.
    for (name, t) in tensors.iter_mut() {
        if name == "language_model.lm_head.weight" {
            let _ = t.get(2).fill_(0.0);
        }
    }
    let opts = (Kind::Float, Device::Cpu);
    let rand = |shape: &[i64], std: f64| Tensor::randn(shape, opts) * std;
    let v = "vision_tower.vision_model";
    let mut add = |name: String, t: Tensor| tensors.push((name, t));
    add(format!("{v}.embeddings.class_embedding"), rand(&[vh], 1.0));
    add(
        format!("{v}.embeddings.patch_embedding.weight"),
        rand(&[vh, 3, 14, 14], 0.05),
    );
    add(
        format!("{v}.embeddings.position_embedding.weight"),
        rand(&[577, vh], 1.0),
    );
    for n in ["pre_layrnorm", "post_layernorm"] {
        add(format!("{v}.{n}.weight"), Tensor::ones([vh], opts));
        add(format!("{v}.{n}.bias"), Tensor::zeros([vh], opts));
    }
    for l in 0..layers {
        let p = format!("{v}.encoder.layers.{l}");
        for n in ["layer_norm1", "layer_norm2"] {
            add(format!("{p}.{n}.weight"), Tensor::ones([vh], opts));
            add(format!("{p}.{n}.bias"), Tensor::zeros([vh], opts));
        }
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{p}.self_attn.{n}.weight"), rand(&[vh, vh], 0.06));
            add(format!("{p}.self_attn.{n}.bias"), rand(&[vh], 0.02));
        }
        add(format!("{p}.mlp.fc1.weight"), rand(&[vi, vh], 0.06));
        add(format!("{p}.mlp.fc1.bias"), rand(&[vi], 0.02));
        add(format!("{p}.mlp.fc2.weight"), rand(&[vh, vi], 0.03));
        add(format!("{p}.mlp.fc2.bias"), rand(&[vh], 0.02));
    }
    add(
        "multi_modal_projector.linear_1.weight".into(),
        rand(&[768, vh], 0.06),
    );
    add(
        "multi_modal_projector.linear_1.bias".into(),
        rand(&[768], 0.02),
    );
    add(
        "multi_modal_projector.linear_2.weight".into(),
        rand(&[768, 768], 0.036),
    );
    add(
        "multi_modal_projector.linear_2.bias".into(),
        rand(&[768], 0.02),
    );
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, dir.join("model.safetensors")).unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs bench binaries with no arguments but
    // `--bench` absent: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("generation bench: skipped (run with `cargo bench --bench generation`)");
        return;
    }
    let rounds: usize = std::env::var("DAMRO_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let device = match std::env::var("DAMRO_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path());
    let mut options = ModelOptions::cpu_f32();
    options.device = device;
    let decoder = LlavaDecoder::load(dir.path(), options).unwrap();
    let damro = DamroSettings::new(2.0, 0.1, 10).unwrap();
    let variants = [
        ("plain", Mode::Plain, BranchExecution::Batched),
        (
            "damro-batched",
            Mode::Damro(damro),
            BranchExecution::Batched,
        ),
        (
            "damro-sequential",
            Mode::Damro(damro),
            BranchExecution::Sequential,
        ),
    ];
    let run = |mode: Mode, branches: BranchExecution, tokens: usize| -> f64 {
        let mut config = GenerationConfig::greedy(mode, tokens);
        config.branches = branches;
        let request = Request::new(
            ImageSource::File(IMAGE.into()),
            "Describe this image in detail.",
            PromptTemplate::LlavaV1,
        );
        let start = Instant::now();
        let out = generate(&decoder, &[request], &config).unwrap();
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        assert_eq!(out[0].token_ids.len(), tokens, "generation ended early");
        start.elapsed().as_secs_f64()
    };
    // Warm up every path once.
    for (_, mode, branches) in &variants {
        run(mode.clone(), *branches, 2);
    }
    let mut per_token: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut prefill: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..rounds {
        for (i, (_, mode, branches)) in variants.iter().enumerate() {
            let one = run(mode.clone(), *branches, 1);
            let full = run(mode.clone(), *branches, 65);
            prefill[i].push(one);
            per_token[i].push((full - one) / 64.0);
        }
    }
    let base = median(per_token[0].clone());
    println!(
        "device {device:?}, threads {}, {rounds} rounds, 64 new tokens (greedy)",
        tch::get_num_threads()
    );
    println!(
        "{:<18} {:>14} {:>12} {:>22}",
        "variant", "ms/token", "vs plain", "prefill+1 token (s)"
    );
    for (i, (name, _, _)) in variants.iter().enumerate() {
        let t = median(per_token[i].clone());
        println!(
            "{name:<18} {:>14.2} {:>12.3} {:>22.3}",
            t * 1e3,
            t / base,
            median(prefill[i].clone())
        );
    }
}

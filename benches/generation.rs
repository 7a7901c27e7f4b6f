//! Full-generation benchmark: first-token and per-token time of plain
//! decoding vs DAMRO with batched branches (both branches as one forward
//! per step over a left-padded cache) vs DAMRO with sequential branches
//! (two forwards per step, the reference's way), at batch 1 and for
//! several requests at once.
//!
//! The model is written by the bench itself with random weights, shaped
//! like a small LLaVA-1.5 (~68.7M parameters): CLIP 336 px / patch 14,
//! hidden 256 x 12 layers (intermediate 1024); a 2-layer projector; LLaMA
//! hidden 512 x 8 layers (8 heads, intermediate 1408), vocab 32064. The
//! LLaVA prompt then holds 576 image tokens + the text, the outlier branch
//! 10 + the text. fp32, greedy, 64 new tokens (the EOS row of `lm_head` is
//! zero, so every run reaches the limit).
//!
//! Timed through `generate_streaming`, as a user sees it: first token =
//! from the call to the first token of every request (image encoding, both
//! prefills, the first sampling step); per token = the time between that
//! and the last token, over the 63 steps in between (each step: one
//! decoding forward of both branches, the contrastive sampling step, the
//! per-step text decoding that streaming does). All variants and batch
//! sizes run interleaved in one process, several rounds; medians are
//! reported, with the median over rounds of each round's ratio to plain
//! decoding.
//!
//! Run with: `scripts/libtorch-env.sh cargo bench -j2 --bench generation`.
//! Environment: `DAMRO_BENCH_ROUNDS` (default 5), `DAMRO_BENCH_THREADS`
//! (libtorch intra-op threads, default 2), `DAMRO_BENCH_BATCHES` (default
//! `1,4`), `DAMRO_BENCH_DEVICE=cuda` on a GPU, `DAMRO_LINEAR_KERNEL` to
//! force a small-batch linear kernel instead of calibrating,
//! `DAMRO_BENCH_RETAIN=0` to leave malloc's defaults (see
//! `damro::memory`), `DAMRO_BENCH_MODEL_DIR` to write the model there and keep it,
//! `DAMRO_BENCH_MODEL=llava7b` for LLaVA-1.5-7B's sizes (6.7B parameters
//! in the LLM: a GPU's job) and `DAMRO_BENCH_DTYPE=f16` for half-precision
//! weights.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use damro::llm::testing::random_llama_tensors;
use damro::llm::{LlamaConfigJson, PromptTemplate};
use damro::{
    BranchExecution, DamroSettings, GenerationConfig, ImageSource, LlavaDecoder, Mode,
    ModelOptions, Request, generate_streaming,
};
use serde_json::json;
use tch::{Device, Kind, Tensor};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/llava/models/hub"
);
const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images");

/// Request `i` of a batch: images and questions vary, so the rows of a
/// batch have different lengths (left padding in both branches).
fn request(i: usize) -> Request {
    const IMAGE_FILES: [&str; 3] = ["wide_rgb.png", "tall_rgba.png", "small_grey.png"];
    const QUESTIONS: [&str; 4] = [
        "Describe this image in detail.",
        "What is in the picture?",
        "Is there a dog in the image? Please answer this question with one word.",
        "List every object you can see, from left to right.",
    ];
    let image = Path::new(IMAGES).join(IMAGE_FILES[i % IMAGE_FILES.len()]);
    Request::new(
        ImageSource::File(image),
        QUESTIONS[i % QUESTIONS.len()],
        PromptTemplate::LlavaV1,
    )
}

/// The bench model's sizes (`DAMRO_BENCH_MODEL`).
#[derive(Debug, Clone, Copy)]
struct Shape {
    vision_hidden: i64,
    vision_intermediate: i64,
    vision_layers: i64,
    vision_heads: i64,
    hidden: i64,
    intermediate: i64,
    layers: i64,
    heads: i64,
}

impl Shape {
    /// `small` (default): the 68.7M model above. `llava7b`: LLaVA-1.5-7B's
    /// sizes (CLIP ViT-L/14 at 336 px, LLaMA-7B), for a GPU in f16.
    fn from_env() -> Self {
        match std::env::var("DAMRO_BENCH_MODEL").as_deref() {
            Ok("llava7b") => Shape {
                vision_hidden: 1024,
                vision_intermediate: 4096,
                vision_layers: 24,
                vision_heads: 16,
                hidden: 4096,
                intermediate: 11008,
                layers: 32,
                heads: 32,
            },
            Ok("small") | Err(_) => Shape {
                vision_hidden: 256,
                vision_intermediate: 1024,
                vision_layers: 12,
                vision_heads: 4,
                hidden: 512,
                intermediate: 1408,
                layers: 8,
                heads: 8,
            },
            Ok(other) => panic!("DAMRO_BENCH_MODEL={other}: expected small or llava7b"),
        }
    }
}

fn text_config(shape: Shape) -> serde_json::Value {
    json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": shape.hidden, "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "vocab_size": 32064, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096
    })
}

/// Writes a random LLaVA-1.5-shaped checkpoint (hub layout, weights in
/// `kind`) with the fixture's tokenizer and image processor; returns its
/// parameter count.
fn write_model(dir: &Path, shape: Shape, kind: Kind) -> i64 {
    let (vh, vi, layers, th) = (
        shape.vision_hidden,
        shape.vision_intermediate,
        shape.vision_layers,
        shape.hidden,
    );
    // Standard deviations scale with 1/sqrt(fan-in) from the small model's.
    let fan = |base: f64, at: i64, inp: i64| base * (at as f64 / inp as f64).sqrt();
    let config = json!({
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "image_token_index": 535, "pad_token_id": 536, "projector_hidden_act": "gelu",
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "text_config": text_config(shape),
        "vision_config": {"hidden_size": vh, "intermediate_size": vi, "image_size": 336,
            "patch_size": 14, "num_attention_heads": shape.vision_heads,
            "num_hidden_layers": layers,
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
    let cfg = LlamaConfigJson::from_value(text_config(shape))
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
            add(
                format!("{p}.self_attn.{n}.weight"),
                rand(&[vh, vh], fan(0.06, 256, vh)),
            );
            add(format!("{p}.self_attn.{n}.bias"), rand(&[vh], 0.02));
        }
        add(
            format!("{p}.mlp.fc1.weight"),
            rand(&[vi, vh], fan(0.06, 256, vh)),
        );
        add(format!("{p}.mlp.fc1.bias"), rand(&[vi], 0.02));
        add(
            format!("{p}.mlp.fc2.weight"),
            rand(&[vh, vi], fan(0.03, 1024, vi)),
        );
        add(format!("{p}.mlp.fc2.bias"), rand(&[vh], 0.02));
    }
    add(
        "multi_modal_projector.linear_1.weight".into(),
        rand(&[th, vh], fan(0.06, 256, vh)),
    );
    add(
        "multi_modal_projector.linear_1.bias".into(),
        rand(&[th], 0.02),
    );
    add(
        "multi_modal_projector.linear_2.weight".into(),
        rand(&[th, th], fan(0.044, 512, th)),
    );
    add(
        "multi_modal_projector.linear_2.bias".into(),
        rand(&[th], 0.02),
    );
    if kind != Kind::Float {
        for (_, t) in tensors.iter_mut() {
            *t = t.to_kind(kind);
        }
    }
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, dir.join("model.safetensors")).unwrap();
    tensors.iter().map(|(_, t)| t.numel() as i64).sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Medians over rounds for one (batch, variant) cell.
#[derive(Default, Clone)]
struct Cell {
    first: Vec<f64>,
    per_token: Vec<f64>,
    /// Per-token time over the same round's plain per-token time.
    ratio: Vec<f64>,
}

fn main() {
    // `cargo test --benches` runs bench binaries with no arguments but
    // `--bench` absent: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("generation bench: skipped (run with `cargo bench --bench generation`)");
        return;
    }
    // As a program that generates repeatedly should (`damro::memory`);
    // `DAMRO_BENCH_RETAIN=0` leaves malloc as it is, to measure the gain.
    let retained = std::env::var("DAMRO_BENCH_RETAIN").as_deref() != Ok("0")
        && damro::memory::retain_freed_memory();
    let rounds: usize = env_or("DAMRO_BENCH_ROUNDS", 5);
    tch::set_num_threads(env_or("DAMRO_BENCH_THREADS", 2));
    let batches: Vec<usize> = std::env::var("DAMRO_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,4".into())
        .split(',')
        .map(|b| b.trim().parse().expect("DAMRO_BENCH_BATCHES: e.g. 1,4"))
        .collect();
    let device = match std::env::var("DAMRO_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let _no_grad = tch::no_grad_guard();
    // `DAMRO_BENCH_MODEL_DIR` keeps the model (e.g. for
    // `tools/bench_reference.py`, which times the Python reference on it).
    let temp = tempfile::tempdir().unwrap();
    let dir = match std::env::var_os("DAMRO_BENCH_MODEL_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            std::path::PathBuf::from(d)
        }
        None => temp.path().to_path_buf(),
    };
    let kind = match std::env::var("DAMRO_BENCH_DTYPE").as_deref() {
        Ok("f16") => Kind::Half,
        Ok("f32") | Err(_) => Kind::Float,
        Ok(other) => panic!("DAMRO_BENCH_DTYPE={other}: expected f32 or f16"),
    };
    let params = write_model(&dir, Shape::from_env(), kind);
    let mut options = ModelOptions::cpu_f32();
    options.device = device;
    options.kind = kind;
    let decoder = LlavaDecoder::load(&dir, options).unwrap();
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
    // One generation; returns (first token, per token) in seconds, read
    // from the streaming callback: the first token is out when every row's
    // first event has arrived, and the per-token time spans the remaining
    // steps, so the prefill's noise stays out of it.
    let run = |mode: &Mode, branches: BranchExecution, batch: usize, tokens: usize| {
        let mut config = GenerationConfig::greedy(mode.clone(), tokens);
        config.branches = branches;
        let requests: Vec<Request> = (0..batch).map(request).collect();
        let mut events = Vec::with_capacity(batch * tokens);
        let start = Instant::now();
        let out = generate_streaming(&decoder, &requests, &config, &mut |_| {
            if device.is_cuda() {
                tch::Cuda::synchronize(0);
            }
            events.push(start.elapsed().as_secs_f64());
        })
        .unwrap();
        for o in &out {
            assert_eq!(o.token_ids.len(), tokens, "generation ended early");
        }
        assert_eq!(events.len(), batch * tokens);
        let first = events[batch - 1];
        let last = events[events.len() - 1];
        (first, (last - first) / (tokens - 1).max(1) as f64)
    };
    // Warm up every path once (the first decoding steps also calibrate the
    // small-batch linear kernels, see `damro_nn::linear_kernel`).
    for &batch in &batches {
        for (_, mode, branches) in &variants {
            run(mode, *branches, batch, 4);
        }
    }
    // With a kept model, the tokens of request 0 (batch 1, 64 new tokens)
    // per variant go next to it, for a reference to compare against.
    if std::env::var_os("DAMRO_BENCH_MODEL_DIR").is_some() {
        let mut tokens = serde_json::Map::new();
        for (name, mode, branches) in &variants {
            let mut config = GenerationConfig::greedy(mode.clone(), 64);
            config.branches = *branches;
            let out = damro::generate(&decoder, &[request(0)], &config).unwrap();
            tokens.insert((*name).into(), json!(out[0].token_ids));
            tokens.insert("prompt_ids".into(), json!(out[0].prompt_ids));
            tokens.insert(format!("{name}-outliers"), json!(out[0].outliers));
        }
        let path = dir.join("bench_tokens.json");
        std::fs::write(path, serde_json::Value::Object(tokens).to_string()).unwrap();
    }
    let mut cells = vec![vec![Cell::default(); variants.len()]; batches.len()];
    for _ in 0..rounds {
        for (b, &batch) in batches.iter().enumerate() {
            for (v, (_, mode, branches)) in variants.iter().enumerate() {
                let (first, per_token) = run(mode, *branches, batch, 64);
                let cell = &mut cells[b][v];
                cell.first.push(first);
                cell.per_token.push(per_token);
            }
            let plain = cells[b][0].per_token.clone();
            for cell in cells[b].iter_mut() {
                let i = cell.per_token.len() - 1;
                cell.ratio.push(cell.per_token[i] / plain[i]);
            }
        }
    }
    println!(
        "{params} parameters, device {device:?}, libtorch threads {}, {rounds} rounds, \
         64 new tokens (greedy), {kind:?}, freed memory retained: {retained}",
        tch::get_num_threads()
    );
    println!("| batch | variant | first token (s) | per token (ms) | vs plain |");
    println!("|---|---|---|---|---|");
    for (b, &batch) in batches.iter().enumerate() {
        for (v, (name, _, _)) in variants.iter().enumerate() {
            let cell = &cells[b][v];
            println!(
                "| {batch} | {name} | {:.3} | {:.2} | {:.3}x |",
                median(cell.first.clone()),
                median(cell.per_token.clone()) * 1e3,
                median(cell.ratio.clone()),
            );
        }
    }
    println!("whole-step confirmation (median ms per step; `per-call` = each call's own winner):");
    let attention_name = |native: bool| if native { "damro-decode" } else { "libtorch" };
    for c in damro::nn::linear_kernel::step_choices() {
        let name =
            |k: Option<damro::nn::linear_kernel::LinearKernel>| k.map_or("per-call", |k| k.name());
        let times: Vec<String> = c
            .seconds
            .iter()
            .map(|(k, t)| format!("{} {:.2}", name(*k), t * 1e3))
            .collect();
        let attention: Vec<String> = c
            .attention_seconds
            .iter()
            .map(|(native, t)| format!("{} {:.2}", attention_name(*native), t * 1e3))
            .collect();
        println!(
            "  {} rows, {} threads: {} ({}); attention {} ({})",
            c.rows,
            c.threads,
            name(c.kernel),
            times.join(", "),
            c.native_attention
                .map_or("libtorch (only offer)", attention_name),
            attention.join(", ")
        );
    }
    println!("small-batch linear kernels (best µs per call of each candidate):");
    for c in damro::nn::linear_kernel::linear_choices() {
        let times: Vec<String> = c
            .seconds
            .iter()
            .map(|(k, t)| format!("{} {:.0}", k.name(), t * 1e6))
            .collect();
        println!(
            "  [{}, {}] x {} rows, {} threads: {} ({})",
            c.key.out_dim,
            c.key.in_dim,
            c.key.rows,
            c.key.threads,
            c.kernel.name(),
            times.join(", ")
        );
    }
}

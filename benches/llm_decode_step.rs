//! One LLaMA decode step on the language model of the generation bench's
//! LLaVA-1.5-shaped model (hidden 512, 8 layers, 8 heads, intermediate
//! 1408, vocab 32064: 58.5M parameters, random weights), f32:
//!
//! - `batch1_640`: one row with 640 cached tokens (LLaVA's full branch:
//!   576 image tokens and the prompt);
//! - `batch2_640_74`: DAMRO's two branches as one batched step, rows of 640
//!   and 74 cached tokens (stacked caches, left padding);
//! - `two_batch1_640_74`: the same two rows as two separate batch-1 steps;
//! - `batch4_640` and `batch8_640_74`: the same for four requests (plain:
//!   four full rows; DAMRO: four full and four outlier rows in one step).
//!
//! The first step of each shape also calibrates the small-batch linear
//! kernels (`damro_nn::linear_kernel`); criterion's warm-up covers it.
//!
//! Run with: `cargo bench --bench llm_decode_step` (set
//! `DAMRO_BENCH_DEVICE=cuda` to run on a GPU, `DAMRO_BENCH_THREADS=n` to
//! set libtorch's CPU threads).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use damro::llm::testing::write_random_llama;
use damro::llm::{KvCache, Llama, LlamaConfigJson, LogitsAt};
use damro::nn::{Checkpoint, KeyMap, LoadOptions, Weights};
use tch::{Device, Kind, Tensor};

fn device() -> Device {
    match std::env::var("DAMRO_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn load_model(device: Device) -> anyhow::Result<Llama> {
    let cfg = LlamaConfigJson::from_value(serde_json::json!({
        "vocab_size": 32064, "hidden_size": 512, "intermediate_size": 1408,
        "num_hidden_layers": 8, "num_attention_heads": 8, "rms_norm_eps": 1e-5,
    }))?
    .into_config()?;
    let dir = std::env::temp_dir().join(format!("damro-bench-llm-{}", std::process::id()));
    write_random_llama(&dir, &cfg, "", 0)?;
    let w = Weights::new(
        Checkpoint::open(&dir, &KeyMap::identity())?,
        LoadOptions {
            kind: Kind::Float,
            device,
        },
    )?;
    let model = Llama::load(&w, &cfg)?;
    w.finish()?;
    drop(w);
    std::fs::remove_dir_all(&dir)?;
    Ok(model)
}

/// A batch-1 cache holding `len` random tokens.
fn prefilled(model: &Llama, len: i64, seed: i64) -> anyhow::Result<KvCache> {
    tch::manual_seed(seed);
    let ids = Tensor::randint(32064, [1, len], (Kind::Int64, model.device()));
    let mut cache = model.new_cache(1, len + 16)?;
    let _logits = model.forward(&model.embed(&ids)?, &mut cache, LogitsAt::Last)?;
    Ok(cache)
}

/// Times `iters` decode steps on `cache`, rolling the cache back after each.
fn time_steps(model: &Llama, cache: &mut KvCache, iters: u64) -> Duration {
    let device = model.device();
    let len = cache.len();
    let x = model
        .embed_ids(&[42])
        .and_then(|x| Ok(x.f_repeat([cache.batch(), 1, 1])?))
        .expect("token embedding");
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let logits = model
            .forward(&x, cache, LogitsAt::Last)
            .expect("decode step");
        sync(device);
        total += start.elapsed();
        drop(logits);
        cache.truncate(len).expect("roll back");
    }
    total
}

fn bench(c: &mut Criterion) {
    if let Some(n) = std::env::var("DAMRO_BENCH_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        tch::set_num_threads(n);
    }
    let device = device();
    let model = load_model(device).expect("random model");
    let mut long = prefilled(&model, 640, 1).expect("prefill 640");
    let mut short = prefilled(&model, 74, 2).expect("prefill 74");
    let mut both = KvCache::stack(&[&long, &short], 720).expect("stack");
    let mut four = KvCache::stack(&[&long, &long, &long, &long], 720).expect("stack");
    let rows8 = [&long, &long, &long, &long, &short, &short, &short, &short];
    let mut eight = KvCache::stack(&rows8, 720).expect("stack");

    let mut group = c.benchmark_group("llm_decode_step");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    group.bench_function("batch1_640", |b| {
        b.iter_custom(|iters| time_steps(&model, &mut long, iters))
    });
    group.bench_function("batch2_640_74", |b| {
        b.iter_custom(|iters| time_steps(&model, &mut both, iters))
    });
    group.bench_function("two_batch1_640_74", |b| {
        b.iter_custom(|iters| {
            time_steps(&model, &mut long, iters) + time_steps(&model, &mut short, iters)
        })
    });
    group.bench_function("batch4_640", |b| {
        b.iter_custom(|iters| time_steps(&model, &mut four, iters))
    });
    group.bench_function("batch8_640_74", |b| {
        b.iter_custom(|iters| time_steps(&model, &mut eight, iters))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

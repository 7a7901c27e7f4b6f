//! Run with: `. scripts/libtorch-env.sh && cargo bench --bench sampler -j2`
//!
//! The DAMRO sampling step (`damro-sampler`) at real vocabulary sizes
//! (LLaVA-1.5/Vicuna 32000, Phi-3-style 32064), batch 1/4/16, fp32 and fp16
//! logits, greedy and seeded sampling, with and without top-p 0.9. Each
//! group also times one `softmax` over the same logits (in their own type),
//! the baseline the results are read against. A step ends with the chosen
//! ids on the device (the host copy of the ids is not included); on CUDA
//! every timing ends with a device synchronisation.

use criterion::{Criterion, criterion_group, criterion_main};
use damro::sampler::{
    Contrast, DamroPreset, LogitsProcessor, LogitsProcessors, Sampler, StepLogits, TokenChoice,
};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// `DAMRO_BENCH_THREADS=n` sets libtorch's intra-op threads (default:
/// libtorch's own choice). On a shared machine, 1 keeps OpenMP barriers
/// from waiting on descheduled threads.
fn set_threads() {
    if let Some(n) = std::env::var("DAMRO_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        tch::set_num_threads(n);
    }
}

fn sync(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// Times `iters` calls of `f`, synchronising the device once at the end.
fn timed(device: Device, iters: u64, mut f: impl FnMut()) -> Duration {
    sync(device);
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync(device);
    start.elapsed()
}

fn sampler(greedy: bool, top_p: bool) -> Sampler {
    let params = DamroPreset::llava_1_5().expect("preset").params;
    let choice = if greedy {
        TokenChoice::Greedy
    } else {
        TokenChoice::sample_seeded(42)
    };
    let sampler = Sampler::new(Contrast::Damro(params), choice);
    if top_p {
        let top_p = LogitsProcessors::new(vec![LogitsProcessor::TopP(0.9)]).expect("top-p");
        sampler.with_processors(top_p)
    } else {
        sampler
    }
}

fn contrastive_step(c: &mut Criterion) {
    set_threads();
    let device = Device::cuda_if_available();
    tch::manual_seed(0);
    for vocab in [32000i64, 32064] {
        for batch in [1i64, 4, 16] {
            for (kind, kind_name) in [(Kind::Float, "f32"), (Kind::Half, "f16")] {
                let logits =
                    (Tensor::randn([batch, vocab], (Kind::Float, device)) * 4.0).to_kind(kind);
                let outlier =
                    (Tensor::randn([batch, vocab], (Kind::Float, device)) * 4.0).to_kind(kind);
                let mut group =
                    c.benchmark_group(format!("damro_step/v{vocab}/b{batch}/{kind_name}"));
                group.bench_function("softmax", |b| {
                    b.iter_custom(|iters| {
                        timed(device, iters, || {
                            let _ = black_box(logits.softmax(-1, None::<Kind>));
                        })
                    })
                });
                let mut plain = Sampler::new(Contrast::Plain, TokenChoice::Greedy);
                group.bench_function("plain_greedy", |b| {
                    b.iter_custom(|iters| {
                        timed(device, iters, || {
                            let _ =
                                black_box(plain.step(StepLogits::plain(&logits)).expect("step"));
                        })
                    })
                });
                for (name, greedy, top_p) in [
                    ("greedy", true, false),
                    ("greedy_top_p", true, true),
                    ("sample", false, false),
                    ("sample_top_p", false, true),
                ] {
                    let mut sampler = sampler(greedy, top_p);
                    group.bench_function(name, |b| {
                        b.iter_custom(|iters| {
                            timed(device, iters, || {
                                let step = StepLogits::damro(&logits, &outlier);
                                let _ = black_box(sampler.step(step).expect("step"));
                            })
                        })
                    });
                }
                group.finish();
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(800))
        .sample_size(20);
    targets = contrastive_step
}
criterion_main!(benches);

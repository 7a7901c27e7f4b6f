//! The attention of one decode step, all 8 layers of the generation bench's
//! LLaMA (8 heads, head_dim 64, f32, each layer its own cache so the keys
//! and values stream from memory as in a real step), one query per row
//! over left-padded rows of different lengths, three ways:
//!
//! - `damro_decode`: damro's own kernel, every row and head in one call
//!   (`damro_nn::attention::decode_attention`);
//! - `sdpa_per_row`: libtorch's SDPA one call per row over its real keys
//!   (`damro_nn::attention::attend_rows`);
//! - `sdpa_masked`: one SDPA call over every row's padded keys under an
//!   additive mask (what other devices than the CPU run).
//!
//! Row lengths: `plain_batch1` 640 (LLaVA's full branch), `damro_batch1`
//! 640 and 74 (DAMRO's two branches), `plain_batch4` 640/630/650/620 and
//! `damro_batch4` those plus 74/70/78/66.
//!
//! Run with: `cargo bench --bench decode_attention` (`DAMRO_BENCH_THREADS=n`
//! sets libtorch's CPU threads, 2 by default).

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use damro::nn::attention::{
    AttentionImpl, AttentionOptions, attend_rows, attention, decode_attention,
    decode_attention_available,
};
use tch::{Device, Kind, Tensor};

const LAYERS: usize = 8;
const HEADS: i64 = 8;
const HEAD_DIM: i64 = 64;

/// One layer's step: the query and the cache's used part.
struct Layer {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

/// Per layer the inputs of a step over rows of these lengths (left-padded
/// to the longest, inside a cache with room for more), the row starts and
/// the additive padding mask.
fn step(lengths: &[i64]) -> (Vec<Layer>, Vec<i64>, Tensor) {
    let opts = (Kind::Float, Device::Cpu);
    let rows = lengths.len() as i64;
    let len = lengths.iter().copied().max().unwrap_or(1);
    let layers = (0..LAYERS)
        .map(|_| {
            let cache = || Tensor::randn([rows, HEADS, len + 64, HEAD_DIM], opts).narrow(2, 0, len);
            let q = Tensor::randn([rows, 1, HEADS, HEAD_DIM], opts).transpose(1, 2);
            Layer {
                q,
                k: cache(),
                v: cache(),
            }
        })
        .collect();
    let first: Vec<i64> = lengths.iter().map(|&l| len - l).collect();
    let columns = Tensor::arange(len, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let starts = Tensor::from_slice(&first).unsqueeze(1);
    let mask = Tensor::zeros([rows, len], opts)
        .masked_fill(&columns.lt_tensor(&starts), f64::NEG_INFINITY)
        .view([rows, 1, 1, len]);
    (layers, first, mask)
}

fn bench(c: &mut Criterion) {
    let threads = std::env::var("DAMRO_BENCH_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let native = decode_attention_available(Kind::Float, Device::Cpu);
    let scale = (HEAD_DIM as f64).powf(-0.5);
    let shapes: [(&str, &[i64]); 4] = [
        ("plain_batch1", &[640]),
        ("damro_batch1", &[640, 74]),
        ("plain_batch4", &[640, 630, 650, 620]),
        ("damro_batch4", &[640, 630, 650, 620, 74, 70, 78, 66]),
    ];
    let mut group = c.benchmark_group("decode_attention");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (name, lengths) in shapes {
        let (layers, first, mask) = step(lengths);
        let opts = AttentionOptions {
            scale: Some(scale),
            ..Default::default()
        };
        if native {
            // The three compute the same attention (to f32 rounding).
            let l = &layers[0];
            let ours = decode_attention(&l.q, &l.k, &l.v, &first, scale).expect("damro");
            let per_row = attend_rows(AttentionImpl::Sdpa, &l.q, &l.k, &l.v, &first, opts);
            let masked = attention(
                &l.q,
                &l.k,
                &l.v,
                AttentionOptions {
                    mask: Some(&mask),
                    ..opts
                },
            );
            for other in [per_row.expect("per row"), masked.expect("masked")] {
                let err = (&ours - other).abs().max().double_value(&[]);
                assert!(err < 1e-5, "{name}: {err}");
            }
            group.bench_function(format!("{name}/damro_decode"), |b| {
                b.iter(|| {
                    for l in &layers {
                        let _out =
                            decode_attention(&l.q, &l.k, &l.v, &first, scale).expect("damro");
                    }
                })
            });
        }
        group.bench_function(format!("{name}/sdpa_per_row"), |b| {
            b.iter(|| {
                for l in &layers {
                    let _out = attend_rows(AttentionImpl::Sdpa, &l.q, &l.k, &l.v, &first, opts)
                        .expect("per row");
                }
            })
        });
        let masked = AttentionOptions {
            mask: Some(&mask),
            ..opts
        };
        group.bench_function(format!("{name}/sdpa_masked"), |b| {
            b.iter(|| {
                for l in &layers {
                    let _out = attention(&l.q, &l.k, &l.v, masked).expect("masked");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

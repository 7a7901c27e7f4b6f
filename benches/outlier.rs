//! Run with: `. scripts/libtorch-env.sh && cargo bench --bench outlier -j2`
//!
//! Top-k outlier selection (`damro-outlier`) over 576 patches (CLIP
//! ViT-L/14 at 336 px, k = 10) and 256 patches (EVA ViT-g/14 at 224 px,
//! k = 4), batch 1 and 16, against libtorch's plain `topk` (whose tie order
//! is unspecified) as the baseline. On CUDA every timing ends with a device
//! synchronisation.

use criterion::{Criterion, criterion_group, criterion_main};
use damro::outlier::{OutlierOrder, select_outliers};
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

fn timed(device: Device, iters: u64, mut f: impl FnMut()) -> Duration {
    let sync = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
    };
    sync();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync();
    start.elapsed()
}

fn outlier_selection(c: &mut Criterion) {
    set_threads();
    let device = Device::cuda_if_available();
    tch::manual_seed(0);
    for (patches, k) in [(576i64, 10usize), (256, 4)] {
        for batch in [1i64, 16] {
            let scores =
                Tensor::randn([batch, patches], (Kind::Float, device)).softmax(-1, None::<Kind>);
            let mut group = c.benchmark_group(format!("outlier_select/p{patches}/b{batch}"));
            group.bench_function("topk", |b| {
                b.iter_custom(|iters| {
                    timed(device, iters, || {
                        let _ = black_box(scores.topk(k as i64, -1, true, true));
                    })
                })
            });
            for (name, order) in [
                ("by_score", OutlierOrder::ByScore),
                ("raster", OutlierOrder::Raster),
            ] {
                group.bench_function(name, |b| {
                    b.iter_custom(|iters| {
                        timed(device, iters, || {
                            let _ = black_box(select_outliers(&scores, k, order).expect("select"));
                        })
                    })
                });
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(800))
        .sample_size(20);
    targets = outlier_selection
}
criterion_main!(benches);

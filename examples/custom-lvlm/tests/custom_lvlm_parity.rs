//! The outside LVLM through damro's generation loop equals a naive
//! implementation written out here: no cache (both branches recomputed in
//! full at every step), the contrast, the cutoff and the token choice by
//! hand. Token for token, greedy and sampled, batched and sequential
//! branches, several requests of different lengths, every contrast view.
#![allow(clippy::unwrap_used)]

use custom_lvlm::{EOS_ID, ToyLvlm};
use damro::sampler::DamroParams;
use damro::{
    BranchExecution, DamroSettings, GenerationConfig, ImageSource, Mode, Request, VcdNoise,
    VcdSettings, generate,
};
use tch::{Device, Kind, Tensor};

const STEPS: usize = 12;
const QUESTIONS: [&str; 3] = [
    "what is it?",
    "a dog",
    "is there a red square in the image?",
];

/// The model is built in f64 so the naive full recompute and the cached
/// steps agree far below any logit gap.
fn model() -> ToyLvlm {
    ToyLvlm::random(7, Kind::Double, Device::Cpu)
}

fn pixels(i: i64) -> Tensor {
    tch::manual_seed(100 + i);
    Tensor::randn([1, 3, 16, 16], (Kind::Double, Device::Cpu))
}

fn requests() -> Vec<Request> {
    QUESTIONS
        .iter()
        .enumerate()
        .map(|(i, q)| {
            Request::new(
                ImageSource::Pixels(pixels(i as i64)),
                *q,
                damro::llm::PromptTemplate::Raw,
            )
        })
        .collect()
}

/// The second branch's image part, built by hand.
enum View {
    None,
    Outliers(i64),
    Noise(VcdNoise),
    NoImage,
}

/// Text embeddings of the question's bytes.
fn text(m: &ToyLvlm, question: &str) -> Tensor {
    let ids: Vec<i64> = question.bytes().map(i64::from).collect();
    m.lm.embed(&Tensor::from_slice(&ids).unsqueeze(0)).unwrap()
}

/// VCD's forward noising, from its formula.
fn noised(x: &Tensor, noise: VcdNoise) -> Tensor {
    let betas = Tensor::linspace(-6.0, 6.0, 1000, (Kind::Float, Device::Cpu)).sigmoid()
        * (0.5e-2 - 1e-5)
        + 1e-5;
    let abar = betas.neg().g_add_scalar(1.0).cumprod(0, Kind::Float);
    let t = noise.step as i64;
    let keep = abar.get(t).sqrt();
    let spread = abar.get(t).neg().g_add_scalar(1.0).sqrt();
    let x32 = x.to_kind(Kind::Float);
    tch::manual_seed(noise.seed as i64);
    let n = x32.randn_like();
    (x32 * keep + n * spread).to_kind(x.kind())
}

/// `[1, len, hidden]` inputs of both branches of request `i`.
fn inputs(m: &ToyLvlm, i: usize, view: &View) -> (Tensor, Option<Tensor>) {
    let px = pixels(i as i64);
    let (features, scores) = m.vision.encode(&px).unwrap();
    let txt = text(m, QUESTIONS[i]);
    let with_image = |image: &Tensor| Tensor::cat(&[image, &txt], 1);
    let full = with_image(&m.vision.project(&features).unwrap());
    let second = match view {
        View::None => None,
        View::Outliers(k) => {
            let (_, idx) = scores.topk(*k, -1, true, true);
            let picked = features.index_select(1, &idx.view([-1]));
            Some(with_image(&m.vision.project(&picked).unwrap()))
        }
        View::Noise(n) => {
            let (f, _) = m.vision.encode(&noised(&px, *n)).unwrap();
            Some(with_image(&m.vision.project(&f).unwrap()))
        }
        View::NoImage => Some(txt.shallow_clone()),
    };
    (full, second)
}

fn last_logits(m: &ToyLvlm, seq: &Tensor) -> Tensor {
    m.lm.forward_full(seq).unwrap().select(1, -1).squeeze_dim(0)
}

/// The naive decoder: per step, recompute every branch from scratch,
/// contrast and cut off by hand, then argmax or one multinomial draw over
/// all rows.
fn naive(view: View, alpha: f64, beta: f64, seed: Option<u64>) -> Vec<Vec<i64>> {
    let m = model();
    let mut seqs: Vec<(Tensor, Option<Tensor>)> =
        (0..QUESTIONS.len()).map(|i| inputs(&m, i, &view)).collect();
    if let Some(s) = seed {
        tch::manual_seed(s as i64);
    }
    let ln_beta = f64::from(DamroParams::new(alpha, beta).unwrap().ln_beta());
    let mut out = vec![Vec::new(); seqs.len()];
    let mut done = vec![false; seqs.len()];
    for _ in 0..STEPS {
        let scores: Vec<Tensor> = seqs
            .iter()
            .map(|(full, second)| {
                let l = last_logits(&m, full);
                let cutoff = l.max().double_value(&[]) + ln_beta;
                let s = match second {
                    Some(second) => &l * (1.0 + alpha) - last_logits(&m, second) * alpha,
                    None => l.shallow_clone(),
                };
                s.masked_fill(&l.lt(cutoff), f64::NEG_INFINITY)
            })
            .collect();
        let scores = Tensor::stack(&scores, 0);
        let ids: Vec<i64> = match seed {
            None => Vec::try_from(scores.argmax(-1, false)).unwrap(),
            Some(_) => Vec::try_from(
                scores
                    .softmax(-1, Kind::Double)
                    .multinomial(1, false)
                    .view([-1]),
            )
            .unwrap(),
        };
        for (r, &id) in ids.iter().enumerate() {
            if !done[r] {
                out[r].push(id);
                done[r] = id == EOS_ID;
            }
            let emb = m.lm.embed(&Tensor::from_slice(&[id]).view([1, 1])).unwrap();
            let (full, second) = &mut seqs[r];
            *full = Tensor::cat(&[&*full, &emb], 1);
            if let Some(s) = second {
                *s = Tensor::cat(&[&*s, &emb], 1);
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    out
}

fn run(mode: Mode, seed: Option<u64>, execution: BranchExecution) -> Vec<Vec<i64>> {
    let m = model();
    let mut config = match seed {
        None => GenerationConfig::greedy(mode, STEPS),
        Some(s) => GenerationConfig::sampled(mode, STEPS, s),
    };
    config.branches = execution;
    generate(&m, &requests(), &config)
        .unwrap()
        .into_iter()
        .map(|g| g.token_ids)
        .collect()
}

/// libtorch's generator is global: one test at a time draws from it.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check(mode: Mode, view: View, alpha: f64, beta: f64, seed: Option<u64>) {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let want = naive(view, alpha, beta, seed);
    assert!(want.iter().all(|t| !t.is_empty()));
    for execution in [BranchExecution::Batched, BranchExecution::Sequential] {
        let got = run(mode.clone(), seed, execution);
        assert_eq!(got, want, "{} {execution:?} seed {seed:?}", mode.name());
    }
}

#[test]
fn damro_greedy_and_sampled_equal_the_naive_decoder() {
    let settings = DamroSettings::new(2.0, 0.1, 4).unwrap();
    check(Mode::Damro(settings), View::Outliers(4), 2.0, 0.1, None);
    check(Mode::Damro(settings), View::Outliers(4), 2.0, 0.1, Some(42));
}

#[test]
fn the_other_views_equal_the_naive_decoder() {
    let p = DamroParams::new(1.0, 0.1).unwrap();
    let noise = VcdNoise::new(500, 3).unwrap();
    let vcd = Mode::Vcd(VcdSettings { params: p, noise });
    check(vcd.clone(), View::Noise(noise), 1.0, 0.1, None);
    check(vcd, View::Noise(noise), 1.0, 0.1, Some(5));
    check(Mode::NoImage(p), View::NoImage, 1.0, 0.1, Some(9));
    check(Mode::CutoffOnly(p), View::None, 0.0, 0.1, Some(11));
    let plain = DamroParams::new(0.0, 1.0).unwrap();
    check(Mode::Plain, View::None, 0.0, 1.0, None);
    check(Mode::CutoffOnly(plain), View::None, 0.0, 1.0, None);
}

/// A binary of a crate with no build script, depending on `damro` as any
/// outside crate does, gets libtorch's CUDA backend: `damro::cuda` loads it
/// at run time (on a machine without a GPU the library still loads and
/// libtorch reports no device).
#[test]
fn the_cuda_backend_is_loaded_without_link_flags() {
    match damro::cuda::load_backend() {
        damro::cuda::Backend::Loaded(path) => {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            assert!(maps.contains(path.to_str().unwrap()), "{path:?} not mapped");
        }
        damro::cuda::Backend::CpuOnly => eprintln!("CPU-only libtorch: nothing to load"),
        other => panic!("CUDA backend not loaded: {other:?}"),
    }
}

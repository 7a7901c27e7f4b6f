//! Decoding tests whose expectations come from the math of DAMRO's step (or
//! from Python torch 2.13 running the reference code), not from this crate.
#![allow(clippy::unwrap_used)]

use damro_sampler::{
    Contrast, DamroParams, Error, LogitsProcessor, LogitsProcessors, Sampler, StepLogits,
    TokenChoice, TorchRng, apply_cutoff, contrastive_logits, damro_scores, greedy, ids_to_vec,
    plausibility_cutoff, sample,
};
use std::sync::{Mutex, MutexGuard};
use tch::{Kind, Tensor};

/// Tests that draw from libtorch's global generator run one at a time.
static RNG: Mutex<()> = Mutex::new(());

fn rng_lock() -> MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Deterministic pseudo-random logits from a host LCG (no torch RNG).
fn logits(batch: usize, vocab: usize, seed: u64) -> (Vec<f32>, Tensor) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..batch * vocab)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 20.0 - 10.0
        })
        .collect();
    let t = Tensor::from_slice(&values).view([batch as i64, vocab as i64]);
    (values, t)
}

fn params(alpha: f64, beta: f64) -> DamroParams {
    DamroParams::new(alpha, beta).unwrap()
}

fn row(values: &[f32]) -> Tensor {
    Tensor::from_slice(values).view([1, -1])
}

fn greedy_ids(contrast: Contrast, l: &Tensor, lo: Option<&Tensor>) -> Vec<i64> {
    let mut sampler = Sampler::new(contrast, TokenChoice::Greedy);
    let step = StepLogits {
        logits: l,
        outlier_logits: lo,
        history: None,
    };
    ids_to_vec(&sampler.step(step).unwrap()).unwrap()
}

/// The first index of the maximum, on the host.
fn host_argmax(values: &[f32]) -> i64 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as i64
}

#[test]
fn alpha_zero_greedy_is_plain_greedy() {
    for seed in 0..20 {
        let (_, l) = logits(4, 1000, seed);
        let (_, lo) = logits(4, 1000, seed + 100);
        let damro = greedy_ids(Contrast::Damro(params(0.0, 0.1)), &l, Some(&lo));
        let plain = greedy_ids(Contrast::Plain, &l, None);
        assert_eq!(damro, plain, "seed {seed}");
    }
}

#[test]
fn alpha_zero_scores_are_the_logits_inside_the_plausible_set() {
    let (values, l) = logits(2, 500, 3);
    let (_, lo) = logits(2, 500, 4);
    let p = params(0.0, 0.1);
    let s = Vec::<f32>::try_from(&damro_scores(&l, &lo, &p).unwrap().view([-1])).unwrap();
    for (b, chunk) in values.chunks(500).enumerate() {
        let cutoff = chunk.iter().cloned().fold(f32::MIN, f32::max) + p.ln_beta();
        for (v, x) in chunk.iter().enumerate() {
            let expected = if *x < cutoff { f32::NEG_INFINITY } else { *x };
            assert_eq!(s[b * 500 + v], expected);
        }
    }
}

#[test]
fn beta_one_leaves_only_the_full_branch_argmax() {
    let _guard = rng_lock();
    let mut rng = TorchRng::seeded(5);
    for seed in 0..10 {
        let (values, l) = logits(3, 777, seed);
        // The outlier branch favours everything but the full argmax.
        let lo = l.neg();
        let expected: Vec<i64> = values.chunks(777).map(host_argmax).collect();
        let p = params(3.0, 1.0);
        assert_eq!(greedy_ids(Contrast::Damro(p), &l, Some(&lo)), expected);
        let s = damro_scores(&l, &lo, &p).unwrap();
        let finite = s.isfinite().sum(Kind::Int64).int64_value(&[]);
        assert_eq!(finite, 3, "one survivor per row");
        assert_eq!(
            ids_to_vec(&sample(&s, &mut rng).unwrap()).unwrap(),
            expected
        );
    }
}

#[test]
fn a_token_below_the_cutoff_is_never_chosen() {
    let _guard = rng_lock();
    // beta = 0.1: cutoff = 5 + ln 0.1 = 2.697...; token 1 (l = 2) is out,
    // although its contrastive score 3*2 - 2*(-100) = 206 is by far the best.
    let l = row(&[5.0, 2.0, 4.0, 3.0]);
    let lo = row(&[5.0, -100.0, 4.0, 3.0]);
    let p = params(2.0, 0.1);
    let s = Vec::<f32>::try_from(&damro_scores(&l, &lo, &p).unwrap().view([-1])).unwrap();
    assert_eq!(s[1], f32::NEG_INFINITY);
    assert_eq!(greedy_ids(Contrast::Damro(p), &l, Some(&lo)), [0]);
    let mut sampler = Sampler::new(Contrast::Damro(p), TokenChoice::sample_seeded(0));
    for _ in 0..300 {
        let id = ids_to_vec(&sampler.step(StepLogits::damro(&l, &lo)).unwrap()).unwrap();
        assert_ne!(id, [1]);
    }
}

#[test]
fn the_cutoff_is_strict() {
    let p = params(1.0, 0.1);
    // max 0, so the cutoff is exactly ln(beta) in f32: a logit equal to it
    // stays, the next f32 below it goes.
    let at = p.ln_beta();
    let below = f32::from_bits(at.to_bits() + 1); // more negative
    let l = row(&[0.0, at, below]);
    let lo = row(&[10.0, -10.0, -10.0]);
    let s = Vec::<f32>::try_from(&damro_scores(&l, &lo, &p).unwrap().view([-1])).unwrap();
    assert!(s[1].is_finite());
    assert_eq!(s[2], f32::NEG_INFINITY);
    assert_eq!(greedy_ids(Contrast::Damro(p), &l, Some(&lo)), [1]);
}

#[test]
fn ties_pick_the_lowest_id() {
    let mut values = vec![0.0f32; 32000];
    for id in [31999, 7, 3, 20000] {
        values[id] = 2.5;
    }
    let l = Tensor::from_slice(&values).view([1, -1]);
    assert_eq!(greedy_ids(Contrast::Plain, &l, None), [3]);
    // Equal branches give equal contrastive scores at the tied ids.
    assert_eq!(
        greedy_ids(Contrast::Damro(params(2.0, 0.1)), &l, Some(&l)),
        [3]
    );
    for kind in [Kind::Half, Kind::BFloat16, Kind::Double] {
        assert_eq!(ids_to_vec(&greedy(&l.to_kind(kind)).unwrap()).unwrap(), [3]);
    }
}

#[test]
fn greedy_equals_libtorch_argmax_without_nan() {
    for seed in 0..40 {
        let (_, l) = logits(4, 3001, 400 + seed);
        // Rounded values tie a lot; -inf rows and columns too.
        let l = if seed % 2 == 0 { l.round() } else { l };
        if seed % 5 == 0 {
            let _ = l.narrow(0, 1, 1).fill_(f64::NEG_INFINITY);
            let _ = l.narrow(1, 0, 100).fill_(f64::NEG_INFINITY);
        }
        for kind in [Kind::Float, Kind::Half, Kind::BFloat16, Kind::Double] {
            let l = l.to_kind(kind);
            assert!(
                greedy(&l).unwrap().equal(&l.argmax(-1, false)),
                "seed {seed} {kind:?}"
            );
        }
    }
    // NaN rows give some id in range.
    let l = row(&[1.0, f32::NAN, 2.0]);
    let id = ids_to_vec(&greedy(&l).unwrap()).unwrap()[0];
    assert!((0..3).contains(&id));
}

#[test]
fn a_sampler_follows_vocabulary_changes() {
    let mut sampler = Sampler::new(Contrast::Plain, TokenChoice::Greedy);
    for (i, vocab) in [1000usize, 500, 1000, 7].into_iter().enumerate() {
        let (_, l) = logits(2, vocab, 600 + i as u64);
        let ids = sampler.step(StepLogits::plain(&l)).unwrap();
        assert!(ids.equal(&l.argmax(-1, false)), "vocab {vocab}");
    }
}

#[test]
fn a_sampler_step_equals_the_free_functions() {
    let p = params(2.0, 0.1);
    let mut sampler = Sampler::new(Contrast::Damro(p), TokenChoice::Greedy);
    for (i, kind) in [Kind::Float, Kind::Double, Kind::Half, Kind::Float]
        .iter()
        .enumerate()
    {
        let (_, l) = logits(3, 4000, 700 + i as u64);
        let (_, lo) = logits(3, 4000, 800 + i as u64);
        let (l, lo) = (l.round().to_kind(*kind), lo.round().to_kind(*kind));
        let expected = greedy(&damro_scores(&l, &lo, &p).unwrap()).unwrap();
        let ids = sampler.step(StepLogits::damro(&l, &lo)).unwrap();
        assert!(ids.equal(&expected), "{kind:?}");
    }
}

#[test]
fn seeded_sampling_repeats_and_depends_on_the_seed() {
    let _guard = rng_lock();
    let (_, l) = logits(4, 2000, 11);
    let (_, lo) = logits(4, 2000, 12);
    let p = params(1.0, 0.001);
    let run = |seed| {
        let mut sampler = Sampler::new(Contrast::Damro(p), TokenChoice::sample_seeded(seed));
        (0..10)
            .map(|_| ids_to_vec(&sampler.step(StepLogits::damro(&l, &lo)).unwrap()).unwrap())
            .collect::<Vec<_>>()
    };
    let first = run(42);
    assert_eq!(first, run(42));
    assert_ne!(first, run(43));
}

/// `l[b][v] = ((37 v + 11 b) mod 101) / 10`, `l_o[b][v] = ((53 v + 7 b) mod 89) / 8`:
/// exact in f32, so Python builds the same tensors.
fn reference_inputs() -> (Tensor, Tensor) {
    let (batch, vocab) = (3i64, 1000i64);
    let make = |f: &dyn Fn(i64, i64) -> f32| {
        let v: Vec<f32> = (0..batch)
            .flat_map(|b| (0..vocab).map(move |v| (b, v)))
            .map(|(b, v)| f(b, v))
            .collect();
        Tensor::from_slice(&v).view([batch, vocab])
    };
    let l = make(&|b, v| ((v * 37 + b * 11) % 101) as f32 / 10.0);
    let lo = make(&|b, v| ((v * 53 + b * 7) % 89) as f32 / 8.0);
    (l, lo)
}

/// Expected ids printed by Python torch 2.13 (CPU) running the reference's
/// DAMRO step (`torch.log(torch.tensor(beta)) + l.max(-1, keepdim=True)`,
/// `(1+alpha)*l - alpha*lo`, `masked_fill`, `torch.multinomial(softmax, 1)`)
/// after `torch.manual_seed(1234)`, four steps; plain sampling after
/// `torch.manual_seed(42)`; and the DAMRO argmax.
#[test]
fn sampling_matches_python_torch_multinomial() {
    let _guard = rng_lock();
    let (l, lo) = reference_inputs();
    let mut sampler = Sampler::new(Contrast::Plain, TokenChoice::sample_seeded(42));
    let plain: Vec<Vec<i64>> = (0..4)
        .map(|_| ids_to_vec(&sampler.step(StepLogits::plain(&l)).unwrap()).unwrap())
        .collect();
    assert_eq!(
        plain,
        [
            [352, 955, 2],
            [169, 586, 739],
            [319, 865, 892],
            [229, 379, 589]
        ]
    );
    let p = params(1.5, 0.1);
    let mut sampler = Sampler::new(Contrast::Damro(p), TokenChoice::sample_seeded(1234));
    let damro: Vec<Vec<i64>> = (0..4)
        .map(|_| ids_to_vec(&sampler.step(StepLogits::damro(&l, &lo)).unwrap()).unwrap())
        .collect();
    assert_eq!(
        damro,
        [
            [838, 289, 690],
            [232, 188, 114],
            [838, 57, 245],
            [131, 764, 245]
        ]
    );
    assert_eq!(
        greedy_ids(Contrast::Damro(p), &l, Some(&lo)),
        [131, 57, 690]
    );
    // torch.log(torch.tensor(0.1)).item() == -2.3025851249694824
    assert_eq!(p.ln_beta().to_bits(), 0xc013_5d8e);
}

#[test]
fn scores_use_the_reference_roundings() {
    let (lv, l) = logits(2, 300, 21);
    let (lov, lo) = logits(2, 300, 22);
    let p = params(0.7, 0.05);
    let s = Vec::<f32>::try_from(&contrastive_logits(&l, &lo, &p).unwrap().view([-1])).unwrap();
    let (a, c) = (0.7f32, 1.7f32);
    for i in 0..lv.len() {
        assert_eq!(s[i], c * lv[i] - a * lov[i], "element {i}");
    }
    let cutoff = Vec::<f32>::try_from(&plausibility_cutoff(&l, &p).unwrap().view([-1])).unwrap();
    for (b, chunk) in lv.chunks(300).enumerate() {
        assert_eq!(
            cutoff[b],
            chunk.iter().cloned().fold(f32::MIN, f32::max) + p.ln_beta()
        );
    }
}

#[test]
fn the_fused_step_equals_the_composed_functions() {
    let (_, l) = logits(5, 4000, 31);
    let (_, lo) = logits(5, 4000, 32);
    let p = params(2.0, 0.1);
    let composed = apply_cutoff(
        &contrastive_logits(&l, &lo, &p).unwrap(),
        &l,
        &plausibility_cutoff(&l, &p).unwrap(),
    )
    .unwrap();
    assert!(damro_scores(&l, &lo, &p).unwrap().equal(&composed));
}

/// The reference's step, written as the Python code is:
/// `((1+a)*l - a*lo).masked_fill(l < log(beta) + l.max(-1), -inf)`.
fn reference_scores(l: &Tensor, lo: &Tensor, p: &DamroParams) -> Tensor {
    let cutoff = l.amax(-1, true) + f64::from(p.ln_beta());
    let s = l * (1.0 + p.alpha()) - lo * p.alpha();
    s.masked_fill(&l.lt_tensor(&cutoff), f64::NEG_INFINITY)
}

#[test]
fn the_mask_equals_masked_fill_bit_for_bit() {
    for seed in 0..30 {
        let (_, l) = logits(3, 2048, 200 + seed);
        let (_, lo) = logits(3, 2048, 300 + seed);
        // Coarse values: many ties, and logits exactly at the cutoff.
        let (l, lo) = if seed % 2 == 0 {
            (l.round(), lo.round())
        } else {
            (l, lo)
        };
        let p = params(1.5, [0.1, 0.5, 1.0][seed as usize % 3]);
        let ours = damro_scores(&l, &lo, &p).unwrap();
        assert!(ours.equal(&reference_scores(&l, &lo, &p)), "seed {seed}");
    }
}

#[test]
fn non_finite_logits_never_revive_a_removed_token() {
    let inf = f32::INFINITY;
    // cutoff = 5 + ln 0.1; tokens 1..=4 are removed, 0, 5 and 6 kept.
    let l = row(&[5.0, 0.0, -inf, -inf, 1.0, 4.0, 4.5]);
    let lo = row(&[1.0, -inf, -inf, f32::NAN, inf, 0.0, f32::NAN]);
    let p = params(2.0, 0.1);
    let s = Vec::<f32>::try_from(&damro_scores(&l, &lo, &p).unwrap().view([-1])).unwrap();
    // Removed: -inf whatever the outlier branch says (adding -inf to the
    // naive scores would give NaN for tokens 1, 2 and 3).
    assert_eq!(s[1..5], [-inf; 4]);
    assert_eq!(s[0], 13.0);
    assert_eq!(s[5], 12.0);
    // A NaN score (from a NaN outlier logit) is never chosen either.
    assert_eq!(s[6], -inf);
    // The sampler itself refuses such logits: they come from a broken
    // model, and decoding from them would hide it.
    let mut sampler = Sampler::new(Contrast::Damro(p), TokenChoice::Greedy);
    assert!(matches!(
        sampler.step(StepLogits::damro(&l, &lo)),
        Err(damro_sampler::Error::NonFiniteLogits { what: "logits" })
    ));
    // A NaN full-branch logit makes the cutoff NaN: no token is plausible.
    let l = row(&[5.0, f32::NAN, 4.0]);
    let s = damro_scores(&l, &l, &p).unwrap();
    assert_eq!(Vec::<f32>::try_from(&s.view([-1])).unwrap(), [-inf; 3]);
}

#[test]
fn half_precision_is_upcast_to_f32() {
    let (_, l) = logits(2, 1000, 41);
    let (_, lo) = logits(2, 1000, 42);
    let p = params(1.0, 0.1);
    for kind in [Kind::Half, Kind::BFloat16] {
        let (lh, loh) = (l.to_kind(kind), lo.to_kind(kind));
        let s = damro_scores(&lh, &loh, &p).unwrap();
        assert_eq!(s.kind(), Kind::Float);
        let from_f32 = damro_scores(&lh.to_kind(Kind::Float), &loh.to_kind(Kind::Float), &p);
        assert!(s.equal(&from_f32.unwrap()));
    }
}

#[test]
fn rows_are_independent() {
    let (_, l) = logits(6, 999, 51);
    let (_, lo) = logits(6, 999, 52);
    let contrast = Contrast::Damro(params(1.5, 0.1));
    let batched = greedy_ids(contrast, &l, Some(&lo));
    for b in 0..6 {
        let one = greedy_ids(contrast, &l.narrow(0, b, 1), Some(&lo.narrow(0, b, 1)));
        assert_eq!(one[0], batched[b as usize]);
    }
}

#[test]
fn processors_run_after_the_mask() {
    // Top-k 1 on the contrastive scores keeps only the contrastive best.
    let l = row(&[5.0, 4.5, 4.0, 0.0]);
    let lo = row(&[5.0, 0.0, 4.0, 0.0]);
    let p = params(1.0, 0.1);
    let sampler = Sampler::new(Contrast::Damro(p), TokenChoice::Greedy)
        .with_processors(LogitsProcessors::new(vec![LogitsProcessor::TopK(1)]).unwrap());
    let s = Vec::<f32>::try_from(
        &sampler
            .scores(StepLogits::damro(&l, &lo))
            .unwrap()
            .view([-1]),
    )
    .unwrap();
    assert_eq!(
        s,
        [f32::NEG_INFINITY, 9.0, f32::NEG_INFINITY, f32::NEG_INFINITY]
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let p = params(1.0, 0.1);
    let l = Tensor::zeros([2, 10], tch::kind::FLOAT_CPU);
    let short = Tensor::zeros([2, 9], tch::kind::FLOAT_CPU);
    let ints = Tensor::zeros([2, 10], tch::kind::INT64_CPU);
    assert!(matches!(
        damro_scores(&l, &short, &p),
        Err(Error::Shape {
            what: "outlier_logits",
            ..
        })
    ));
    assert!(matches!(
        damro_scores(&ints, &l, &p),
        Err(Error::Kind { what: "logits", .. })
    ));
    assert!(matches!(
        greedy(&Tensor::zeros([10], tch::kind::FLOAT_CPU)),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Contrast::Damro(p).scores(&l, None),
        Err(Error::MissingOutlierLogits)
    ));
    assert!(matches!(
        Contrast::Plain.scores(&l, Some(&l)),
        Err(Error::UnexpectedOutlierLogits)
    ));
    let penalised = Sampler::new(Contrast::Plain, TokenChoice::Greedy).with_processors(
        LogitsProcessors::new(vec![LogitsProcessor::RepetitionPenalty(1.2)]).unwrap(),
    );
    assert!(matches!(
        penalised.scores(StepLogits::plain(&l)),
        Err(Error::MissingHistory)
    ));
}

#[test]
fn non_finite_logits_are_an_error_naming_the_branch() {
    use damro_sampler::{Contrast, DamroParams, Error, Sampler, StepLogits, TokenChoice};
    let params = DamroParams::new(1.0, 0.1).unwrap();
    let good = Tensor::from_slice(&[0.5f32, 2.0, 1.0]).view([1, 3]);
    for bad_value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let bad = Tensor::from_slice(&[0.5f32, bad_value, 1.0]).view([1, 3]);
        let mut plain = Sampler::new(Contrast::Plain, TokenChoice::Greedy);
        assert!(matches!(
            plain.step(StepLogits::plain(&bad)),
            Err(Error::NonFiniteLogits { what: "logits" })
        ));
        let mut damro = Sampler::new(Contrast::Damro(params), TokenChoice::Greedy);
        assert!(matches!(
            damro.step(StepLogits::damro(&good, &bad)),
            Err(Error::NonFiniteLogits {
                what: "outlier_logits"
            })
        ));
        // Finite logits still decode.
        assert!(damro.step(StepLogits::damro(&good, &good)).is_ok());
    }
}

/// Greedy steps on CPU logits take the host path; the ids must be the
/// tensor path's (scores, then the first maximum) for every contrast, with
/// ties, tokens exactly at the cutoff and contrasts that overflow.
#[test]
fn the_host_greedy_path_equals_the_tensor_path() {
    // e^-1: ln(beta) rounds to -1 in f32, so logits on a 0.5 grid land
    // exactly on the cutoff.
    let betas = [0.1, (-1.0f64).exp(), 1.0, 1e-3];
    let mut cases = 0;
    for (seed, &(batch, vocab)) in [(1, 1), (1, 2), (3, 17), (4, 32064), (8, 999)]
        .iter()
        .enumerate()
    {
        let seed = 900 + 10 * seed as u64;
        let (_, raw) = logits(batch, vocab, seed);
        let (_, raw_o) = logits(batch, vocab, seed + 1);
        // As they come, on a 0.5 grid (ties, tokens on the cutoff), and
        // near f32's largest value (the contrast overflows to inf - inf).
        let grids = [
            (raw.shallow_clone(), raw_o.shallow_clone()),
            ((&raw * 2).round() / 2, (&raw_o * 2).round() / 2),
            (&raw * 3.3e37, &raw_o * 3.3e37),
        ];
        for (l, lo) in &grids {
            for &beta in &betas {
                for alpha in [0.0, 1.0, 2.0, 1.5] {
                    let p = params(alpha, beta);
                    for (contrast, second) in [
                        (Contrast::Damro(p), Some(lo)),
                        (Contrast::CutoffOnly(p), None),
                        (Contrast::Plain, None),
                    ] {
                        let mut sampler = Sampler::new(contrast, TokenChoice::Greedy);
                        let step = StepLogits {
                            logits: l,
                            outlier_logits: second,
                            history: None,
                        };
                        let expected = greedy(&sampler.scores(step).unwrap()).unwrap();
                        let ids = sampler.step(step).unwrap();
                        assert!(
                            ids.equal(&expected),
                            "{contrast:?} batch {batch} vocab {vocab}: {ids:?} vs {expected:?}"
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 5 * 3 * 4 * 4 * 3);
    // Half-precision logits are upcast on both paths.
    let (_, raw) = logits(3, 4001, 995);
    let (_, raw_o) = logits(3, 4001, 996);
    for kind in [Kind::Half, Kind::BFloat16] {
        for (l, lo) in [
            (raw.to_kind(kind), raw_o.to_kind(kind)),
            (((&raw * 2).round() / 2).to_kind(kind), raw_o.to_kind(kind)),
        ] {
            for contrast in [Contrast::Damro(params(2.0, 0.1)), Contrast::Plain] {
                let second = matches!(contrast, Contrast::Damro(_)).then_some(&lo);
                let mut sampler = Sampler::new(contrast, TokenChoice::Greedy);
                let step = StepLogits {
                    logits: &l,
                    outlier_logits: second,
                    history: None,
                };
                let expected = greedy(&sampler.scores(step).unwrap()).unwrap();
                assert!(sampler.step(step).unwrap().equal(&expected), "{kind:?}");
            }
        }
    }
    // The first token's contrast is inf - inf (NaN, so -inf); the second's
    // is inf: the second wins on both paths.
    let (l, lo) = (row(&[3e38, 3e38, 1.0]), row(&[3e38, 1.0, 1.0]));
    let contrast = Contrast::Damro(params(2.0, 0.1));
    let scores = Sampler::new(contrast, TokenChoice::Greedy)
        .scores(StepLogits::damro(&l, &lo))
        .unwrap();
    assert_eq!(ids_to_vec(&greedy(&scores).unwrap()).unwrap(), [1]);
    assert_eq!(greedy_ids(contrast, &l, Some(&lo)), [1]);
    // The best token in the tail after the last full lane group, and an
    // f32 full branch with an f16 second one.
    let (_, l) = logits(2, 21, 997);
    let _ = l.get(0).get(20).fill_(50.0);
    let _ = l.get(1).get(17).fill_(50.0);
    let (_, lo) = logits(2, 21, 998);
    let contrast = Contrast::Damro(params(2.0, 0.5));
    let lo_half = lo.to_kind(Kind::Half);
    let mut sampler = Sampler::new(contrast, TokenChoice::Greedy);
    let step = StepLogits::damro(&l, &lo_half);
    let expected = greedy(&sampler.scores(step).unwrap()).unwrap();
    assert_eq!(ids_to_vec(&expected).unwrap(), [20, 17]);
    assert!(sampler.step(step).unwrap().equal(&expected));
    // A transposed (non-contiguous) input takes the tensor path: same ids.
    let (_, l) = logits(50, 6, 990);
    let (_, lo) = logits(50, 6, 991);
    let (lt, lot) = (l.transpose(0, 1), lo.transpose(0, 1));
    let contrast = Contrast::Damro(params(2.0, 0.1));
    assert_eq!(
        greedy_ids(contrast, &lt, Some(&lot)),
        greedy_ids(contrast, &lt.contiguous(), Some(&lot.contiguous()))
    );
}

/// The host path refuses non-finite logits as the tensor path does, naming
/// the branch (the full one first).
#[test]
fn the_host_greedy_path_refuses_non_finite_logits() {
    let (_, l) = logits(3, 100, 77);
    let (_, lo) = logits(3, 100, 78);
    let bad = l.copy();
    let _ = bad.get(2).get(99).fill_(f64::NAN);
    let bad_o = lo.copy();
    let _ = bad_o.get(0).get(0).fill_(f64::NEG_INFINITY);
    let p = params(2.0, 0.1);
    let step = |contrast: Contrast, l: &Tensor, lo: Option<&Tensor>| {
        let mut sampler = Sampler::new(contrast, TokenChoice::Greedy);
        sampler.step(StepLogits {
            logits: l,
            outlier_logits: lo,
            history: None,
        })
    };
    let inf_full = l.copy();
    let _ = inf_full.get(1).get(50).fill_(f64::INFINITY);
    let half_bad = bad.to_kind(Kind::Half);
    for (l, lo, what) in [
        (&bad, &lo, "logits"),
        (&inf_full, &lo, "logits"),
        (&half_bad, &lo, "logits"),
        (&l, &bad_o, "outlier_logits"),
        (&bad, &bad_o, "logits"),
    ] {
        let err = step(Contrast::Damro(p), l, Some(lo)).unwrap_err();
        assert!(
            matches!(err, Error::NonFiniteLogits { what: w } if w == what),
            "{err:?}"
        );
    }
    for contrast in [Contrast::Plain, Contrast::CutoffOnly(p)] {
        let err = step(contrast, &bad, None).unwrap_err();
        assert!(matches!(err, Error::NonFiniteLogits { what: "logits" }));
    }
}

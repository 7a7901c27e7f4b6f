//! Property tests of the contrastive step on random logits: whatever the
//! logits, alpha and beta, the chosen token lies in the plausible set
//! (`l >= ln(beta) + max l`, the paper's cutoff), alpha 0 chooses the full
//! branch's argmax, beta 1 keeps only the full branch's maxima, and
//! non-finite logits are an error, never a panic or a token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use damro_sampler::{Contrast, DamroParams, Error, Sampler, StepLogits, TokenChoice};
use proptest::prelude::*;
use tch::Tensor;

/// Bounded so CI stays fast: each case is a few tiny libtorch calls.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

/// One row of each branch, same vocabulary, values of logit scale.
fn branches() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
    (1usize..48).prop_flat_map(|vocab| {
        (
            prop::collection::vec(-30.0f32..30.0, vocab),
            prop::collection::vec(-30.0f32..30.0, vocab),
        )
    })
}

/// The tie-heavy variant: logits on a coarse grid, so equal maxima and
/// tokens exactly at the cutoff happen often.
fn coarse_branches() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
    (1usize..16).prop_flat_map(|vocab| {
        (
            prop::collection::vec((-4i32..4).prop_map(|v| v as f32), vocab),
            prop::collection::vec((-4i32..4).prop_map(|v| v as f32), vocab),
        )
    })
}

fn row(values: &[f32]) -> Tensor {
    Tensor::from_slice(values).view([1, values.len() as i64])
}

/// Runs one DAMRO step and returns the chosen id.
fn choose(full: &[f32], second: &[f32], params: DamroParams, choice: TokenChoice) -> usize {
    let mut sampler = Sampler::new(Contrast::Damro(params), choice);
    let (l, lo) = (row(full), row(second));
    let ids = sampler.step(StepLogits::damro(&l, &lo)).unwrap();
    let id = ids.int64_value(&[0]);
    usize::try_from(id).expect("a non-negative id")
}

fn max_of(values: &[f32]) -> f32 {
    values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The first index of the maximum (what greedy decoding of the full
/// branch alone picks).
fn argmax(values: &[f32]) -> usize {
    let max = max_of(values);
    values.iter().position(|&v| v == max).expect("non-empty")
}

/// The cutoff as the reference computes it: `ln(beta)` in f32 plus the
/// row maximum, one f32 addition.
fn cutoff(full: &[f32], params: &DamroParams) -> f32 {
    params.ln_beta() + max_of(full)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn greedy_choice_is_above_the_cutoff(
        (full, second) in branches(),
        alpha in 0.0f64..5.0,
        beta in 0.001f64..=1.0,
    ) {
        let params = DamroParams::new(alpha, beta).unwrap();
        let id = choose(&full, &second, params, TokenChoice::Greedy);
        prop_assert!(id < full.len());
        prop_assert!(full[id] >= cutoff(&full, &params), "token {id}: {} < cutoff", full[id]);
    }

    #[test]
    fn sampled_choice_is_above_the_cutoff(
        (full, second) in branches(),
        alpha in 0.0f64..5.0,
        beta in 0.001f64..=1.0,
        seed in any::<u64>(),
    ) {
        let params = DamroParams::new(alpha, beta).unwrap();
        let id = choose(&full, &second, params, TokenChoice::sample_seeded(seed));
        prop_assert!(id < full.len());
        prop_assert!(full[id] >= cutoff(&full, &params));
    }

    #[test]
    fn ties_at_the_cutoff_are_kept_and_nothing_below(
        (full, second) in coarse_branches(),
        alpha in 0.0f64..5.0,
    ) {
        // beta = e^-2 puts the cutoff exactly 2 below the maximum, on the grid.
        let params = DamroParams::new(alpha, (-2.0f64).exp()).unwrap();
        let id = choose(&full, &second, params, TokenChoice::Greedy);
        prop_assert!(full[id] >= cutoff(&full, &params));
    }

    #[test]
    fn alpha_zero_is_the_plain_argmax((full, second) in branches(), beta in 0.001f64..=1.0) {
        let params = DamroParams::new(0.0, beta).unwrap();
        prop_assert_eq!(choose(&full, &second, params, TokenChoice::Greedy), argmax(&full));
    }

    #[test]
    fn alpha_zero_is_the_plain_argmax_with_ties((full, second) in coarse_branches()) {
        let params = DamroParams::new(0.0, 0.5).unwrap();
        prop_assert_eq!(choose(&full, &second, params, TokenChoice::Greedy), argmax(&full));
    }

    #[test]
    fn beta_one_keeps_only_the_full_branch_maxima(
        (full, second) in coarse_branches(),
        alpha in 0.0f64..5.0,
    ) {
        let params = DamroParams::new(alpha, 1.0).unwrap();
        let id = choose(&full, &second, params, TokenChoice::Greedy);
        // Among tied maxima the contrast decides; with one maximum, it is it.
        prop_assert_eq!(full[id], max_of(&full));
        let maxima = full.iter().filter(|&&v| v == max_of(&full)).count();
        if maxima == 1 {
            prop_assert_eq!(id, argmax(&full));
        }
    }

    #[test]
    fn non_finite_logits_are_an_error(
        (mut full, second) in branches(),
        at in any::<prop::sample::Index>(),
        bad in prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY]),
        in_second in any::<bool>(),
    ) {
        let mut second = second;
        let target = if in_second { &mut second } else { &mut full };
        let i = at.index(target.len());
        target[i] = bad;
        let mut sampler = Sampler::new(
            Contrast::Damro(DamroParams::new(1.0, 0.1).unwrap()),
            TokenChoice::Greedy,
        );
        let err = sampler.step(StepLogits::damro(&row(&full), &row(&second))).unwrap_err();
        let named = matches!(err, Error::NonFiniteLogits { .. });
        prop_assert!(named, "{}", err);
    }

    #[test]
    fn parameters_are_validated_not_trusted(alpha in any::<f64>(), beta in any::<f64>()) {
        let valid = alpha.is_finite() && alpha >= 0.0 && beta > 0.0 && beta <= 1.0;
        match DamroParams::new(alpha, beta) {
            Ok(p) => {
                prop_assert!(valid);
                prop_assert!(p.ln_beta() <= 0.0);
            }
            Err(e) => {
                prop_assert!(!valid);
                let named = matches!(e, Error::InvalidParameter { .. });
                prop_assert!(named, "{}", e);
            }
        }
    }
}

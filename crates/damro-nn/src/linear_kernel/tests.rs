use super::*;

#[test]
fn every_kernel_computes_the_same_layer() {
    tch::manual_seed(3);
    let opts = (Kind::Float, Device::Cpu);
    let w = Tensor::randn([37, 19], opts);
    let b = Tensor::randn([37], opts);
    for rows in [1, 2, 3, 5] {
        let x = Tensor::randn([rows, 19], opts);
        // Reference: the definition, in f64.
        let reference = x
            .to_kind(Kind::Double)
            .matmul(&w.to_kind(Kind::Double).tr())
            + b.to_kind(Kind::Double);
        for k in LinearKernel::ALL {
            let y = k.apply(&x, &w, Some(&b)).unwrap();
            assert_eq!(y.size(), [rows, 37], "{k:?}");
            let err = (y.to_kind(Kind::Double) - &reference)
                .abs()
                .max()
                .double_value(&[]);
            assert!(err < 1e-5, "{k:?} rows {rows}: {err}");
        }
    }
}

#[test]
fn names_parse_back_and_unknown_names_are_refused() {
    for k in LinearKernel::ALL {
        assert_eq!(k.name().parse::<LinearKernel>().unwrap(), k);
    }
    let err = "fast".parse::<LinearKernel>().unwrap_err().to_string();
    assert!(err.contains("fast") && err.contains("weight-left"), "{err}");
}

fn key(rows: i64) -> LinearKey {
    LinearKey {
        out_dim: 64,
        in_dim: 32,
        rows,
        bias: false,
        kind: Kind::Float,
        device: Device::Cpu,
        threads: 1,
    }
}

#[test]
fn calibration_times_every_candidate_then_keeps_the_fastest() {
    let mut slot = Slot::new(3);
    let candidates = LinearKernel::candidates(3);
    assert_eq!(candidates, LinearKernel::ALL);
    // Hand-made timings, long enough that `SAMPLES` calls suffice:
    // `Pairs` is fastest, `WeightLeft` slowest.
    let cost = |k: LinearKernel| match k {
        LinearKernel::Linear => 2.0,
        LinearKernel::WeightLeft => 3.0,
        _ => 1.0,
    };
    let mut calls = 0;
    while let (k, Some(i)) = slot.next() {
        // The warm-up call of each candidate is not recorded: make it
        // misleadingly fast.
        let warm = calls < candidates.len();
        slot.record(key(3), Some(i), if warm { 0.0 } else { cost(k) }, false);
        calls += 1;
    }
    assert_eq!(calls, candidates.len() * (SAMPLES + 1));
    let Slot::Chosen(choice) = &slot else {
        panic!("still exploring");
    };
    assert_eq!(choice.kernel, LinearKernel::Pairs);
    assert_eq!(
        choice.seconds,
        vec![
            (LinearKernel::Linear, 2.0),
            (LinearKernel::WeightLeft, 3.0),
            (LinearKernel::Pairs, 1.0)
        ]
    );
    // Two rows: `Pairs` would be `WeightLeft` again, so it is not timed.
    assert_eq!(
        LinearKernel::candidates(2),
        [LinearKernel::Linear, LinearKernel::WeightLeft]
    );
}

#[test]
fn cheap_calls_are_timed_more_often_and_ties_go_to_the_first() {
    let mut slot = Slot::new(2);
    let mut calls = 0;
    while let (_, Some(i)) = slot.next() {
        slot.record(key(2), Some(i), 1e-5, false);
        calls += 1;
    }
    // Two candidates, each one warm-up plus `MAX_SAMPLES` timed calls.
    assert_eq!(calls, 2 * (MAX_SAMPLES + 1));
    assert!(matches!(&slot, Slot::Chosen(c) if c.kernel == LinearKernel::Linear));
    assert!(timed_enough(&[ENOUGH_SECONDS / 2.0; SAMPLES]));
    assert!(!timed_enough(&[ENOUGH_SECONDS; SAMPLES - 1]));
}

#[test]
fn a_forced_decision_uses_the_timings_so_far() {
    let mut slot = Slot::new(3);
    // Warm-ups, then one timed call of `Linear` only.
    for t in [0.0, 0.0, 0.0, 5.0] {
        let (_, i) = slot.next();
        slot.record(key(3), i, t, false);
    }
    slot.record(key(3), None, 0.0, true);
    let Slot::Chosen(choice) = &slot else {
        panic!("still exploring");
    };
    assert_eq!(choice.kernel, LinearKernel::Linear);
    assert_eq!(choice.seconds[1].1, f64::INFINITY);
}

#[test]
fn calibration_runs_the_step_until_every_key_is_chosen() {
    // A key no other test uses, so parallel tests do not interfere.
    let opts = (Kind::Float, Device::Cpu);
    let w = Tensor::randn([23, 7], opts);
    let x = Tensor::randn([3, 7], opts);
    let k = LinearKey {
        out_dim: 23,
        in_dim: 7,
        rows: 3,
        bias: false,
        kind: Kind::Float,
        device: Device::Cpu,
        threads: -7,
    };
    let mut runs = 0;
    let mut outside = None;
    calibrate_kernels(|| {
        runs += 1;
        // Nested tuned scopes keep calibrating.
        let _y = with_tuned_kernels(|| small_batch_linear(&x, &w, None, k))?;
        Ok::<(), Error>(())
    })
    .unwrap();
    if let LinearPolicy::Calibrate = linear_policy().unwrap() {
        // One call per run: 3 candidates x (warm-up + timed calls).
        assert!(runs >= 3 * (SAMPLES + 1), "{runs} runs");
        assert!(runs <= MAX_CALIBRATION_RUNS);
        assert!(is_calibrated([k]).unwrap());
        let chosen = linear_choices().into_iter().find(|c| c.key == k).unwrap();
        outside = Some(chosen.kernel);
    }
    // Outside any scope a call is plain `linear`, whatever was chosen.
    let untuned = small_batch_linear(&x, &w, None, k).unwrap();
    assert!(untuned.equal(&x.linear(&w, None::<&Tensor>)));
    if let Some(kernel) = outside {
        let tuned = with_tuned_kernels(|| small_batch_linear(&x, &w, None, k)).unwrap();
        assert!(tuned.equal(&kernel.apply(&x, &w, None).unwrap()));
    }
}

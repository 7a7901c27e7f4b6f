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

/// An f32 CPU key without bias; tests that calibrate through the shared
/// state give theirs a thread count no other test uses.
fn cpu_key(out_dim: i64, in_dim: i64, rows: i64, threads: i32) -> LinearKey {
    LinearKey {
        out_dim,
        in_dim,
        rows,
        bias: false,
        kind: Kind::Float,
        device: Device::Cpu,
        threads,
    }
}

fn key(rows: i64) -> LinearKey {
    cpu_key(64, 32, rows, 1)
}

#[test]
fn calibration_times_every_candidate_then_keeps_the_fastest() {
    let mut slot = Slot::new(3);
    let candidates = LinearKernel::candidates(3);
    let native = crate::cpu::isa().is_some();
    assert_eq!(candidates.len(), if native { 4 } else { 3 });
    // Hand-made timings, long enough that `SAMPLES` calls suffice:
    // `Pairs` is fastest, `WeightLeft` slowest.
    let cost = |k: LinearKernel| match k {
        LinearKernel::Linear => 2.0,
        LinearKernel::WeightLeft => 3.0,
        LinearKernel::Pairs => 1.0,
        _ => 1.5,
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
    let expected: Vec<(LinearKernel, f64)> = candidates.iter().map(|&k| (k, cost(k))).collect();
    assert_eq!(choice.seconds, expected);
    // Two rows: `Pairs` would be `WeightLeft` again, so it is not timed.
    assert!(!LinearKernel::candidates(2).contains(&LinearKernel::Pairs));
    assert!(LinearKernel::candidates(2).contains(&LinearKernel::WeightLeft));
}

#[test]
fn the_native_kernel_matches_the_definition_on_every_block_shape() {
    let isas = crate::cpu::isas();
    let Some(&best) = isas.first() else {
        return; // Not offered on this CPU.
    };
    tch::manual_seed(5);
    let opts = (Kind::Float, Device::Cpu);
    // 37 inputs: a vector tail for both widths; 301: the loops unrolled 8
    // times (2 x 128 + 45 on AVX-512), then single vectors and a tail; 13
    // outputs: 4-row blocks and single rows; up to 9 rows: every input-row
    // group size.
    for (isa, inputs) in isas.into_iter().flat_map(|i| [(i, 37), (i, 301)]) {
        let w = Tensor::randn([13, inputs], opts);
        let b = Tensor::randn([13], opts);
        for rows in 1..=9 {
            let x = Tensor::randn([rows, inputs], opts);
            let reference = x
                .to_kind(Kind::Double)
                .matmul(&w.to_kind(Kind::Double).tr())
                + b.to_kind(Kind::Double);
            for bias in [Some(&b), None] {
                let y = native::linear_with(isa, 1, &x, &w, bias).unwrap();
                let expected = match bias {
                    Some(_) => reference.shallow_clone(),
                    None => &reference - b.to_kind(Kind::Double),
                };
                let err = (y.to_kind(Kind::Double) - expected)
                    .abs()
                    .max()
                    .double_value(&[]);
                // f32 rounding grows with the number of terms summed.
                let tol = 1e-5 * inputs as f64 / 37.0;
                assert!(err < tol, "{isa:?} rows {rows} inputs {inputs}: {err}");
            }
        }
    }
    // Split over threads (a weight of `PARALLEL_BYTES`; 3 rows: one weight
    // stream, 8: register blocks), and a bad shape.
    let w = Tensor::randn([1026, native::PARALLEL_BYTES as i64 / 4 / 1026 + 1], opts);
    for rows in [3, 8] {
        let x = Tensor::randn([rows, w.size()[1]], opts);
        let one = native::linear_with(best, 1, &x, &w, None).unwrap();
        let three = native::linear_with(best, 3, &x, &w, None).unwrap();
        assert!(one.equal(&three), "rows {rows}");
        let err = (one - x.linear(&w, None::<&Tensor>))
            .abs()
            .max()
            .double_value(&[]);
        assert!(err < 1e-4, "rows {rows}: {err}");
    }
    // The same split over threads of our own (no OpenMP team), above the
    // threshold for those.
    let w_big = Tensor::randn([1030, native::SPAWN_BYTES as i64 / 4 / 1030 + 1], opts);
    let x_big = Tensor::randn([5, w_big.size()[1]], opts);
    let own = native::linear_on(best, 3, None, &x_big, &w_big, None).unwrap();
    assert!(own.equal(&native::linear_on(best, 1, None, &x_big, &w_big, None).unwrap()));
    let err = (own - x_big.linear(&w_big, None::<&Tensor>))
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 1e-3, "{err}");
    assert!(native::linear_with(best, 1, &x_big, &w.tr(), None).is_err());
}

#[test]
fn cheap_calls_are_timed_more_often_and_ties_go_to_the_first() {
    let mut slot = Slot::new(2);
    let mut calls = 0;
    while let (_, Some(i)) = slot.next() {
        slot.record(key(2), Some(i), 1e-5, false);
        calls += 1;
    }
    // Each candidate: one warm-up plus `MAX_SAMPLES` timed calls.
    assert_eq!(calls, LinearKernel::candidates(2).len() * (MAX_SAMPLES + 1));
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
    let k = cpu_key(23, 7, 3, -7);
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
        // One call per run: every candidate's warm-up and timed calls.
        let needed = LinearKernel::candidates(3).len() * (SAMPLES + 1);
        assert!(runs >= needed.min(MAX_CALIBRATION_RUNS), "{runs} runs");
        // Then the whole-step phase: every assignment once per round, and
        // both attentions where damro's is offered.
        let attentions = match crate::attention::decode_attention_available(k.kind, k.device) {
            true => 2,
            false => 0,
        };
        let confirm = (1 + LinearKernel::candidates(3).len() + attentions) * STEP_ROUNDS.1;
        assert!(runs <= MAX_CALIBRATION_RUNS + confirm, "{runs} runs");
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

/// Calibrates a one-call step that is slow (5 ms) unless the whole-step
/// phase runs it under a trial `fast(kernel, native attention)` accepts;
/// returns the key's kernel and the phase's record.
fn calibrate_with_fast_trial(
    fast: impl Fn(Option<LinearKernel>, bool) -> bool,
    threads: i32,
) -> (LinearKernel, LinearKernel, StepChoice) {
    let opts = (Kind::Float, Device::Cpu);
    let w = Tensor::randn([29, 5], opts);
    let x = Tensor::randn([3, 5], opts);
    let k = cpu_key(29, 5, 3, threads);
    calibrate_kernels(|| {
        let fast_step = match SCOPE.with(Cell::get) {
            Scope::Confirming(kernel, native) => fast(kernel, native),
            _ => false,
        };
        if !fast_step {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _y = small_batch_linear(&x, &w, None, k)?;
        Ok::<(), Error>(())
    })
    .unwrap();
    let choice = linear_choices().into_iter().find(|c| c.key == k).unwrap();
    let per_call = choose(
        k,
        &choice.seconds.iter().map(|s| s.0).collect::<Vec<_>>(),
        &choice.seconds.iter().map(|s| s.1).collect::<Vec<_>>(),
    )
    .kernel;
    let step = step_choices()
        .into_iter()
        .rfind(|c| c.threads == threads)
        .unwrap();
    (choice.kernel, per_call, step)
}

#[test]
fn the_whole_step_phase_keeps_the_assignment_with_the_fastest_step() {
    if linear_policy().unwrap() != LinearPolicy::Calibrate {
        return; // DAMRO_LINEAR_KERNEL pins a kernel: nothing is calibrated.
    }
    // One kernel for every call wins: it replaces the per-call winner.
    let fast = Some(LinearKernel::WeightLeft);
    let (kernel, _, step) = calibrate_with_fast_trial(|k, _| k == fast, -9);
    assert_eq!(kernel, LinearKernel::WeightLeft);
    assert_eq!(step.kernel, Some(LinearKernel::WeightLeft));
    assert_eq!(step.rows, 3);
    assert_eq!(step.seconds.len(), 1 + LinearKernel::candidates(3).len());
    assert_eq!(step.seconds[0].0, None);
    let fastest = step
        .seconds
        .iter()
        .map(|s| s.1)
        .fold(f64::INFINITY, f64::min);
    assert!(
        step.seconds
            .iter()
            .all(|&(a, t)| (a == step.kernel) == (t == fastest))
    );
    // The per-call choices win: the key keeps its per-call winner.
    let (kernel, per_call, step) = calibrate_with_fast_trial(|k, _| k.is_none(), -11);
    assert_eq!(step.kernel, None);
    assert_eq!(kernel, per_call);
}

#[test]
fn the_whole_step_phase_keeps_the_faster_attention() {
    if linear_policy().unwrap() != LinearPolicy::Calibrate {
        return; // DAMRO_LINEAR_KERNEL pins a kernel: nothing is calibrated.
    }
    let offered = crate::attention::decode_attention_available(Kind::Float, Device::Cpu);
    for (slow_native, threads) in [(true, -13), (false, -15)] {
        let (_, _, step) = calibrate_with_fast_trial(|_, native| native != slow_native, threads);
        let chosen = lock().attention.get(&(3, threads)).copied();
        if !offered {
            assert!(step.attention_seconds.is_empty() && step.native_attention.is_none());
            assert_eq!(chosen, None);
            continue;
        }
        assert_eq!(step.native_attention, Some(!slow_native), "{step:?}");
        assert_eq!(chosen, Some(!slow_native));
        let times: Vec<bool> = step.attention_seconds.iter().map(|s| s.0).collect();
        assert_eq!(times, [true, false]);
    }
}

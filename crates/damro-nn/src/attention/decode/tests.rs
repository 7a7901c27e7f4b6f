use tch::{Device, Kind, Tensor};

use super::*;
use crate::cpu::isas;

/// The definition in f64: per row, softmax of the scaled scores over the
/// row's keys, times the values.
fn reference(q: &Tensor, k: &Tensor, v: &Tensor, first: &[i64], scale: f64) -> Tensor {
    let (heads, kv_heads, len) = (q.size()[1], k.size()[1], k.size()[2]);
    let group = heads / kv_heads;
    let rows: Vec<Tensor> = first
        .iter()
        .enumerate()
        .map(|(row, &from)| {
            let row = row as i64;
            let take = |t: &Tensor| {
                t.narrow(0, row, 1)
                    .narrow(2, from, len - from)
                    .repeat_interleave_self_int(group, 1, None)
                    .to_kind(Kind::Double)
            };
            let q = q.narrow(0, row, 1).to_kind(Kind::Double);
            let s = q.matmul(&take(k).transpose(2, 3)) * scale;
            s.softmax(-1, Kind::Double).matmul(&take(v))
        })
        .collect();
    Tensor::cat(&rows, 0)
}

/// Worst error relative to the values' largest magnitude.
fn error(out: &Tensor, reference: &Tensor, v: &Tensor) -> f64 {
    let worst = (out.to_kind(Kind::Double) - reference)
        .abs()
        .max()
        .double_value(&[]);
    worst / v.abs().max().double_value(&[]).max(1e-30)
}

struct Case {
    batch: i64,
    heads: i64,
    kv_heads: i64,
    len: i64,
    d: i64,
    first: Vec<i64>,
}

/// Queries and a cache whose used part is a strided view, as the KV cache
/// hands it out (capacity beyond `len`).
fn inputs(c: &Case, scale: f64) -> (Tensor, Tensor, Tensor) {
    let opts = (Kind::Float, Device::Cpu);
    // q as a projection splits it: [batch, 1, heads, d] viewed as
    // [batch, heads, 1, d].
    let q = (Tensor::randn([c.batch, 1, c.heads, c.d], opts) * scale).transpose(1, 2);
    let cache = |_| Tensor::randn([c.batch, c.kv_heads, c.len + 5, c.d], opts).narrow(2, 0, c.len);
    (q, cache(0), cache(1))
}

#[test]
fn matches_the_definition_on_every_shape_and_instruction_set() {
    tch::manual_seed(11);
    let cases = [
        // DAMRO at batch 1: a long row and a short one, head_dim 64.
        Case {
            batch: 2,
            heads: 4,
            kv_heads: 4,
            len: 150,
            d: 64,
            first: vec![0, 131],
        },
        // Grouped-query heads, a d with a scalar tail on both sets (13),
        // rows of 1 key and of lengths that leave every remainder.
        Case {
            batch: 4,
            heads: 6,
            kv_heads: 2,
            len: 23,
            d: 13,
            first: vec![22, 0, 5, 18],
        },
        // head_dim 128 (two passes of the values on AVX2), 80 (a tail of
        // half a vector on AVX-512).
        Case {
            batch: 3,
            heads: 2,
            kv_heads: 1,
            len: 70,
            d: 128,
            first: vec![3, 0, 69],
        },
        Case {
            batch: 2,
            heads: 3,
            kv_heads: 3,
            len: 41,
            d: 80,
            first: vec![1, 0],
        },
    ];
    for isa in isas() {
        for c in &cases {
            for scale in [1.0 / (c.d as f64).sqrt(), 3.0] {
                let (q, k, v) = inputs(c, 1.0);
                let out = decode_attention_on(isa, 1, None, &q, &k, &v, &c.first, scale).unwrap();
                assert_eq!(out.size(), [c.batch, c.heads, 1, c.d]);
                let err = error(&out, &reference(&q, &k, &v, &c.first, scale), &v);
                assert!(err < 2e-6, "{isa:?} d {} scale {scale}: {err:e}", c.d);
            }
        }
    }
}

#[test]
fn scores_far_apart_and_many_keys_stay_exact() {
    // Scores spread over hundreds: most exponentials underflow to 0 and
    // the largest dominates; with 2,000 keys the sums run long.
    tch::manual_seed(12);
    let c = Case {
        batch: 2,
        heads: 2,
        kv_heads: 2,
        len: 2000,
        d: 64,
        first: vec![0, 1000],
    };
    let (q, k, v) = inputs(&c, 30.0);
    for isa in isas() {
        let out = decode_attention_on(isa, 1, None, &q, &k, &v, &c.first, 0.125).unwrap();
        let err = error(&out, &reference(&q, &k, &v, &c.first, 0.125), &v);
        assert!(err < 2e-6, "{isa:?}: {err:e}");
    }
}

#[test]
fn rows_do_not_depend_on_threads_or_on_each_other() {
    tch::manual_seed(13);
    // Enough bytes for the parallel split.
    let c = Case {
        batch: 3,
        heads: 8,
        kv_heads: 8,
        len: 300,
        d: 64,
        first: vec![0, 250, 40],
    };
    let (q, k, v) = inputs(&c, 1.0);
    let team = Team::get();
    for isa in isas() {
        let one = decode_attention_on(isa, 1, None, &q, &k, &v, &c.first, 0.125).unwrap();
        for threads in [2, 3] {
            let many = decode_attention_on(isa, threads, team, &q, &k, &v, &c.first, 0.125);
            assert!(one.equal(&many.unwrap()), "{isa:?} {threads} threads");
        }
        for (row, &from) in c.first.iter().enumerate() {
            let take = |t: &Tensor| t.narrow(0, row as i64, 1);
            let alone = decode_attention_on(
                isa,
                2,
                team,
                &take(&q),
                &take(&k),
                &take(&v),
                &[from],
                0.125,
            )
            .unwrap();
            assert!(alone.equal(&take(&one)), "{isa:?} row {row}");
        }
    }
}

#[test]
fn nan_inputs_give_nan() {
    let c = Case {
        batch: 2,
        heads: 1,
        kv_heads: 1,
        len: 20,
        d: 16,
        first: vec![0, 0],
    };
    let (q, k, v) = inputs(&c, 1.0);
    let _ = k.narrow(0, 0, 1).narrow(2, 7, 1).fill_(f64::NAN);
    let _ = q.narrow(0, 1, 1).narrow(3, 3, 1).fill_(f64::NAN);
    for isa in isas() {
        let out = decode_attention_on(isa, 1, None, &q, &k, &v, &c.first, 0.25).unwrap();
        for row in 0..2 {
            let nan = out.narrow(0, row, 1).isnan().all().int64_value(&[]);
            assert_eq!(nan, 1, "{isa:?} row {row}: {out}");
        }
    }
}

#[test]
fn vector_exp_is_within_two_ulp() {
    // -88..0 in small steps, plus the edges.
    let mut xs: Vec<f32> = (0..=88_000).map(|i| -(i as f32) / 1000.0).collect();
    xs.extend([-87.99, -0.0, 1e-7, -1e-7, 0.3465, -0.3466, 10.0, 88.0]);
    xs.resize(xs.len().div_ceil(16) * 16, -1.0);
    for isa in isas() {
        let mut ys = xs.clone();
        x86::exp_lanes(isa, &mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = (x as f64).exp();
            if want < f32::MIN_POSITIVE as f64 {
                assert!(y.abs() <= f32::MIN_POSITIVE, "{isa:?} exp({x}) = {y}");
                continue;
            }
            let ulp = (want as f32).to_bits().abs_diff(y.to_bits());
            assert!(ulp <= 2, "{isa:?} exp({x}) = {y}, want {want} ({ulp} ulp)");
        }
    }
}

#[test]
fn bad_shapes_and_starts_are_errors() {
    let c = Case {
        batch: 2,
        heads: 4,
        kv_heads: 2,
        len: 5,
        d: 8,
        first: vec![0, 0],
    };
    let (q, k, v) = inputs(&c, 1.0);
    let Some(isa) = isas().first().copied() else {
        return;
    };
    let run = |q: &Tensor, k: &Tensor, first: &[i64]| {
        decode_attention_on(isa, 1, None, q, k, &v, first, 1.0)
    };
    assert!(run(&q, &k, &[0]).is_err(), "one start for two rows");
    assert!(run(&q, &k, &[0, 5]).is_err(), "a row with no keys");
    assert!(run(&q, &k, &[-1, 0]).is_err(), "a negative start");
    assert!(
        run(&q.narrow(1, 0, 3), &k, &[0, 0]).is_err(),
        "3 heads over 2 kv heads"
    );
    assert!(run(&q.to_kind(Kind::Double), &k, &[0, 0]).is_err(), "f64");
    assert!(
        run(&q.narrow(3, 0, 4), &k, &[0, 0]).is_err(),
        "head_dim differs"
    );
    let two_queries = Tensor::cat(&[&q, &q], 2);
    assert!(
        run(&two_queries, &k, &[0, 0]).is_err(),
        "two queries per row"
    );
}

use tch::{Device, Kind, Tensor};

use super::*;

fn shape() -> CacheShape {
    CacheShape {
        num_layers: 2,
        kv_heads: 2,
        head_dim: 4,
        kind: Kind::Float,
        device: Device::Cpu,
    }
}

/// Keys/values whose every entry is `value`.
fn kv(batch: i64, step: i64, value: f64) -> Tensor {
    Tensor::full([batch, 2, step, 4], value, (Kind::Float, Device::Cpu))
}

/// Runs a step that writes `value` into every layer.
fn step(cache: &mut KvCache, n: i64, rows: Option<&[i64]>, value: f64) -> Step {
    let s = cache.begin_step(n, rows).unwrap();
    for layer in 0..2 {
        let t = kv(cache.batch(), n, value);
        let _views = cache.write(layer, s.start, &t, &t).unwrap();
    }
    s
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::try_from(t.flatten(0, -1).to_kind(Kind::Int64)).unwrap()
}

fn bools(t: &Tensor) -> Vec<bool> {
    ints(t).into_iter().map(|v| v != 0).collect()
}

/// The value stored for (layer 0, row, column), from the keys.
fn key_at(cache: &KvCache, row: i64, col: i64) -> f64 {
    let (k, _) = cache.layer(0).unwrap();
    k.double_value(&[row, 0, col, 0])
}

#[test]
fn padded_prefill_positions_and_mask() {
    let mut c = KvCache::new(shape(), 2, 8).unwrap();
    let s = step(&mut c, 3, Some(&[3, 1]), 1.0);
    assert_eq!(ints(&s.positions), vec![0, 1, 2, 0, 0, 0]);
    assert_eq!(c.row_lens(), &[3, 1]);
    assert_eq!(c.len(), 3);
    assert_eq!(
        bools(&c.padding_mask().unwrap()),
        vec![true, true, true, false, false, true]
    );
    assert!(!c.is_real(1, 0) && c.is_real(1, 2));
    let StepMask::Explicit(m) = &s.mask else {
        panic!("padding needs an explicit mask")
    };
    assert_eq!(m.size(), vec![2, 1, 3, 3]);
    #[rustfmt::skip]
    let expected = vec![
        true, false, false,  true, true, false,  true, true, true,
        // Padding queries see only themselves; the real one sees itself.
        true, false, false,  false, true, false,  false, false, true,
    ];
    assert_eq!(bools(m), expected);

    // A decode step continues each row's own positions.
    let s = step(&mut c, 1, None, 2.0);
    assert_eq!(ints(&s.positions), vec![3, 1]);
    assert_eq!(s.max_row_len, 4);
    // Left padding only: each row attends to its own run of real keys
    // (row 0 from column 0, row 1 from column 2), no mask.
    let StepMask::Ranges(first) = &s.mask else {
        panic!("a decode step over left padding reads per-row key ranges")
    };
    assert_eq!(first, &vec![0, 2]);
}

#[test]
fn unpadded_steps_need_no_mask() {
    let mut c = KvCache::new(shape(), 1, 8).unwrap();
    assert!(matches!(step(&mut c, 4, None, 1.0).mask, StepMask::Causal));
    assert!(matches!(step(&mut c, 1, None, 1.0).mask, StepMask::None));
    // A multi-token chunk after a prefix needs an offset causal mask.
    let s = step(&mut c, 2, None, 1.0);
    let StepMask::Explicit(m) = &s.mask else {
        panic!("chunk after a prefix needs an explicit mask")
    };
    assert_eq!(m.size(), vec![1, 1, 2, 7]);
    assert_eq!(
        bools(m),
        vec![
            true, true, true, true, true, true, false, true, true, true, true, true, true, true
        ]
    );
    assert_eq!(ints(&s.positions), vec![5, 6]);
}

#[test]
fn appends_in_place_and_grows_by_doubling() {
    let mut c = KvCache::new(shape(), 1, 4).unwrap();
    let ptr = c.keys[0].data_ptr();
    step(&mut c, 3, None, 1.0);
    step(&mut c, 1, None, 2.0);
    assert_eq!(c.keys[0].data_ptr(), ptr, "no reallocation within capacity");
    assert_eq!(c.capacity(), 4);
    step(&mut c, 1, None, 3.0);
    assert_eq!(c.capacity(), 8);
    step(&mut c, 6, None, 4.0);
    assert_eq!(c.capacity(), 16, "doubles, or grows to fit a longer step");
    let values: Vec<f64> = (0..11).map(|col| key_at(&c, 0, col)).collect();
    assert_eq!(
        values,
        vec![1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    );
    let (k, v) = c.layer(1).unwrap();
    assert_eq!(k.size(), vec![1, 2, 11, 4]);
    assert_eq!(v.double_value(&[0, 1, 10, 3]), 4.0);
    assert_eq!(c.bytes(), 2 * 2 * 2 * 16 * 4 * 4);
}

#[test]
fn fork_is_independent() {
    let mut a = KvCache::new(shape(), 2, 4).unwrap();
    step(&mut a, 2, Some(&[2, 1]), 1.0);
    let mut b = a.fork().unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b.row_lens(), a.row_lens());
    step(&mut b, 1, None, 5.0);
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 3);
    assert_eq!(key_at(&b, 1, 2), 5.0);
    step(&mut a, 1, None, 7.0);
    assert_eq!(key_at(&a, 1, 2), 7.0);
    assert_eq!(key_at(&b, 1, 2), 5.0);
    assert_eq!(
        bools(&b.padding_mask().unwrap()),
        vec![true, true, true, false, true, true]
    );
}

#[test]
fn truncate_and_reset() {
    let mut c = KvCache::new(shape(), 2, 8).unwrap();
    step(&mut c, 4, Some(&[4, 2]), 1.0);
    step(&mut c, 1, None, 2.0);
    assert_eq!(c.row_lens(), &[5, 3]);
    c.truncate(2).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c.row_lens(), &[2, 0]);
    let s = step(&mut c, 1, None, 3.0);
    assert_eq!(ints(&s.positions), vec![2, 0]);
    assert!(c.truncate(10).is_err());
    c.reset();
    assert!(c.is_empty());
    assert_eq!(c.row_lens(), &[0, 0]);
    assert_eq!(c.capacity(), 8);
    let s = step(&mut c, 2, None, 4.0);
    assert!(matches!(s.mask, StepMask::Causal));
    assert_eq!(ints(&s.positions), vec![0, 1, 0, 1]);
}

#[test]
fn stack_left_pads_shorter_caches() {
    let mut long = KvCache::new(shape(), 1, 8).unwrap();
    step(&mut long, 5, None, 1.0);
    let mut short = KvCache::new(shape(), 1, 8).unwrap();
    step(&mut short, 2, None, 2.0);
    let mut both = KvCache::stack(&[&long, &short], 4).unwrap();
    assert_eq!((both.batch(), both.len(), both.capacity()), (2, 5, 5));
    assert_eq!(both.row_lens(), &[5, 2]);
    assert_eq!(
        bools(&both.padding_mask().unwrap()),
        vec![
            true, true, true, true, true, false, false, false, true, true
        ]
    );
    assert_eq!(key_at(&both, 1, 3), 2.0);
    assert_eq!(key_at(&both, 1, 2), 0.0);
    let s = step(&mut both, 1, None, 3.0);
    assert_eq!(ints(&s.positions), vec![5, 2]);
    assert_eq!(both.capacity(), 10);
    let other = KvCache::new(
        CacheShape {
            head_dim: 8,
            ..shape()
        },
        1,
        4,
    )
    .unwrap();
    assert!(KvCache::stack(&[&long, &other], 8).is_err());
}

#[test]
fn bad_steps_are_errors() {
    let mut c = KvCache::new(shape(), 2, 4).unwrap();
    assert!(c.begin_step(2, Some(&[2])).is_err());
    assert!(c.begin_step(2, Some(&[2, 0])).is_err());
    assert!(c.begin_step(2, Some(&[3, 1])).is_err());
    assert!(c.begin_step(0, None).is_err());
    assert!(KvCache::new(shape(), 0, 4).is_err());
    let s = c.begin_step(1, None).unwrap();
    assert!(c.write(0, s.start, &kv(1, 1, 0.0), &kv(1, 1, 0.0)).is_err());
    assert!(c.write(5, s.start, &kv(2, 1, 0.0), &kv(2, 1, 0.0)).is_err());
}

#[test]
fn left_pad_rows() {
    let a = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
    let b = Tensor::full([1, 2], 2.0, (Kind::Float, Device::Cpu));
    let (batch, lens) = left_pad(&[&a, &b]).unwrap();
    assert_eq!(lens, vec![3, 1]);
    assert_eq!(batch.size(), vec![2, 3, 2]);
    let flat: Vec<f32> = Vec::try_from(batch.flatten(0, -1)).unwrap();
    assert_eq!(flat, vec![1., 1., 1., 1., 1., 1., 0., 0., 0., 0., 2., 2.]);
    let bad = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
    assert!(left_pad(&[&a, &bad]).is_err());
    assert!(left_pad(&[]).is_err());
}

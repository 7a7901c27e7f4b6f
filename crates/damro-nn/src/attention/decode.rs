//! Attention of a decoding step on the CPU: one query per row, each row
//! over its own run of cached keys, every row and head in one call.
//!
//! libtorch's `scaled_dot_product_attention` takes one run of keys for the
//! whole batch, so left-padded rows of different lengths (DAMRO's short
//! outlier branch next to the full one, or requests of different lengths)
//! either attend over the padding under a mask or attend one call per row
//! and layer. At one query per row the work is streaming the row's cached
//! keys and values once, and the calls' fixed costs (views, dispatch, the
//! concatenation, a parallel region each) were a large part of DAMRO's
//! extra decode-step time on a 2-core AMD EPYC (`BENCHMARKS.md`).
//! [`decode_attention`] computes every (row, head) pair in one parallel
//! region on libtorch's own OpenMP team, each pair wholly by one thread:
//!
//! 1. `s_j = (q · k_j) · scale` for the row's keys `first[row]..`,
//! 2. `p_j = exp(s_j - max s)`, and their sum,
//! 3. `out = (Σ_j p_j v_j) / Σ_j p_j`.
//!
//! Each output is summed in a fixed order that depends neither on the
//! thread count nor on the other rows, so a row's result is the same alone
//! or batched. It differs from libtorch's kernels in summation order and in
//! `exp` (a polynomial within 2 ulp of the exact value; arguments below -88, whose
//! exponentials are under f32's smallest normal number, give 0). NaN and
//! NaN inputs give NaN outputs, as libtorch's softmax does.
//!
//! f32 on x86-64 CPUs with AVX-512 or AVX2 + FMA and an OpenMP runtime
//! loaded by libtorch ([`decode_attention_available`]); elsewhere callers
//! keep libtorch's kernels.

use tch::{Device, Kind, Tensor};

use crate::cpu::{Isa, Team, isa};
use crate::{Error, Result};

/// Below this many bytes of keys and values a call runs on the calling
/// thread (a parallel region costs more than the work).
pub const PARALLEL_BYTES: usize = 64 << 10;

/// Whether [`decode_attention`] runs for tensors of this dtype and device
/// on this machine.
pub fn decode_attention_available(kind: Kind, device: Device) -> bool {
    kind == Kind::Float && device == Device::Cpu && isa().is_some() && Team::get().is_some()
}

/// One query per row attending to the row's keys `first[row]..`, with
/// grouped-query heads (query head `h` reads key/value head
/// `h / (heads / kv_heads)`). Strided inputs are read in place as long as
/// their last dimension is contiguous.
///
/// # Shapes
/// q `[batch, heads, 1, d]`, k and v `[batch, kv_heads, len, d]`, `first`
/// `batch` columns in `0..len` → `[batch, heads, 1, d]`
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first: &[i64],
    scale: f64,
) -> Result<Tensor> {
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1);
    let isa = isa().ok_or_else(|| {
        Error::config(
            "decode attention",
            "needs an x86-64 CPU with AVX-512 or AVX2 and FMA",
        )
    })?;
    decode_attention_on(isa, threads, Team::get(), q, k, v, first, scale)
}

/// [`decode_attention`] on a given instruction set, thread count and
/// OpenMP team (`None`: the calling thread alone).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_attention_on(
    isa: Isa,
    threads: usize,
    team: Option<&Team>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first: &[i64],
    scale: f64,
) -> Result<Tensor> {
    let (qs, ks) = (q.size(), k.size());
    let (batch, heads, kv_heads, len, d) = match (&qs[..], &ks[..]) {
        (&[b, h, 1, d], &[b2, kh, l, d2])
            if b == b2 && d == d2 && b > 0 && d > 0 && kh > 0 && h % kh == 0 && l > 0 =>
        {
            (b, h, kh, l, d)
        }
        _ => {
            return Err(Error::shape(
                "decode attention",
                "q [batch, heads, 1, d] and k [batch, kv_heads, len, d] with heads a multiple of kv_heads",
                (qs, ks),
            ));
        }
    };
    if v.size() != ks {
        return Err(Error::shape(
            "decode attention values",
            format!("{ks:?}"),
            v.size(),
        ));
    }
    if first.len() != batch as usize || first.iter().any(|&f| !(0..len).contains(&f)) {
        return Err(Error::shape(
            "decode attention row starts",
            format!("{batch} columns in 0..{len}"),
            first,
        ));
    }
    let f32_cpu = |t: &Tensor| t.kind() == Kind::Float && t.device() == Device::Cpu;
    if !f32_cpu(q) || !f32_cpu(k) || !f32_cpu(v) {
        return Err(Error::shape(
            "decode attention",
            "f32 CPU tensors",
            (q.kind(), k.kind(), v.kind(), q.device()),
        ));
    }
    // Rows of the last dimension must be contiguous; anything else is read
    // through its strides.
    let unit = |t: &Tensor| -> Result<Tensor> {
        Ok(match t.stride().last() {
            Some(1) => t.shallow_clone(),
            _ => t.f_contiguous()?,
        })
    };
    let (q, k, v) = (unit(q)?, unit(k)?, unit(v)?);
    let out = Tensor::f_empty([batch, 1, heads, d], (Kind::Float, Device::Cpu))?;
    let strides = |t: &Tensor| -> [usize; 3] {
        let s = t.stride();
        [s[0] as usize, s[1] as usize, s[2] as usize]
    };
    let problem = Problem {
        q: q.data_ptr() as *const f32,
        k: k.data_ptr() as *const f32,
        v: v.data_ptr() as *const f32,
        out: out.data_ptr() as *mut f32,
        q_strides: strides(&q),
        k_strides: strides(&k),
        v_strides: strides(&v),
        first,
        heads: heads as usize,
        group: (heads / kv_heads) as usize,
        len: len as usize,
        d: d as usize,
        scale: scale as f32,
    };
    let tasks = problem.first.len() * problem.heads;
    let keys: usize = first.iter().map(|&f| (len - f) as usize).sum();
    let bytes = keys * problem.heads / problem.group * problem.d * 8;
    match team {
        Some(team) if threads > 1 && bytes >= PARALLEL_BYTES => {
            // Contiguous runs of (row, head) tasks, split by their keys.
            let total = keys * problem.heads;
            let work = |t: usize, n: usize| {
                let (from, to) = (total * t / n, total * (t + 1) / n);
                let mut at = 0;
                let (mut start, mut end) = (tasks, tasks);
                for task in 0..tasks {
                    if at >= from && start == tasks {
                        start = task;
                    }
                    if at >= to {
                        end = task;
                        break;
                    }
                    at += problem.keys(task);
                }
                problem.run(isa, start..end.max(start));
            };
            if !team.run(threads, &work) {
                return Err(Error::config(
                    "decode attention",
                    "a thread of the OpenMP team panicked",
                ));
            }
        }
        _ => problem.run(isa, 0..tasks),
    }
    Ok(out.f_transpose(1, 2)?)
}

/// One call's operands as raw parts; every pointer stays valid for the
/// call (the tensors are held by [`decode_attention_on`]).
struct Problem<'a> {
    q: *const f32,
    k: *const f32,
    v: *const f32,
    /// `[batch, 1, heads, d]`, contiguous: task `(row, head)` writes
    /// `d` values of its own.
    out: *mut f32,
    /// Strides of batch, head and position (the last dimension is unit).
    q_strides: [usize; 3],
    k_strides: [usize; 3],
    v_strides: [usize; 3],
    first: &'a [i64],
    heads: usize,
    /// Query heads per key/value head.
    group: usize,
    len: usize,
    d: usize,
    scale: f32,
}

// SAFETY: the threads read the inputs and write disjoint parts of `out`
// (one `d`-run per task, each task on one thread).
unsafe impl Sync for Problem<'_> {}

impl Problem<'_> {
    /// Keys that task `row * heads + head` attends to.
    fn keys(&self, task: usize) -> usize {
        self.len - self.first[task / self.heads] as usize
    }

    /// Runs tasks `tasks` (each `row * heads + head`).
    fn run(&self, isa: Isa, tasks: std::ops::Range<usize>) {
        let most = tasks.clone().map(|t| self.keys(t)).max().unwrap_or(0);
        let mut scores = vec![0f32; most];
        for task in tasks {
            let (row, head) = (task / self.heads, task % self.heads);
            let kv = head / self.group;
            let from = self.first[row] as usize;
            let n = self.len - from;
            let at = |s: [usize; 3], pos: usize| row * s[0] + kv * s[1] + pos * s[2];
            // SAFETY: `row < batch`, `head < heads`, `kv < kv_heads` and
            // `from + n == len`, all inside the tensors' shapes; the output
            // run `d` at `(row * heads + head) * d` belongs to this task.
            unsafe {
                let one = Head {
                    q: std::slice::from_raw_parts(
                        self.q
                            .add(row * self.q_strides[0] + head * self.q_strides[1]),
                        self.d,
                    ),
                    k: self.k.add(at(self.k_strides, from)),
                    k_step: self.k_strides[2],
                    v: self.v.add(at(self.v_strides, from)),
                    v_step: self.v_strides[2],
                    n,
                    scale: self.scale,
                };
                let out = std::slice::from_raw_parts_mut(self.out.add(task * self.d), self.d);
                one.run(isa, &mut scores[..n], out);
            }
        }
    }
}

/// One (row, head) pair: a query and its `n` keys and values, each a
/// contiguous run of `q.len()` values `k_step` / `v_step` apart.
struct Head<'a> {
    q: &'a [f32],
    k: *const f32,
    k_step: usize,
    v: *const f32,
    v_step: usize,
    n: usize,
    scale: f32,
}

impl Head<'_> {
    /// # Safety
    /// The keys and values must be readable as described; `scores` holds
    /// `n` values and `out` `q.len()`.
    unsafe fn run(&self, isa: Isa, scores: &mut [f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` came from `isa()`, which checked the CPU's
        // features; the memory as this function's caller promises.
        unsafe {
            match isa {
                Isa::Avx512 => x86::head_avx512(self, scores, out),
                Isa::Avx2 => x86::head_avx2(self, scores, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (isa, scores, out);
            unreachable!("no instruction set is detected off x86-64");
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Head;
    use crate::cpu::x86::hsum256;

    /// Cephes' `expf` coefficients: `e^r ≈ 1 + r + r² P(r)` on
    /// `|r| <= ln 2 / 2`, with `ln 2` split in two for the reduction.
    const P: [f32; 6] = [
        1.987_569_2e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// Below this `e^x` is under the smallest normal f32: the result is 0.
    const LOWEST: f32 = -88.0;

    /// `e^x` for a vector (`x <= 88`), one function per instruction set:
    /// `x = n ln 2 + r` with `n` the nearest integer to `x / ln 2`, then
    /// `e^x = 2^n (1 + r + r² P(r))`.
    macro_rules! isa_exp {
        ($name:ident, $feat:literal, $ty:ty, $max:ident, $set1:ident, $mul:ident,
         $round:ident, $fnmadd:ident, $fmadd:ident, $add:ident, $scale:ident) => {
            #[target_feature(enable = $feat)]
            fn $name(x: $ty) -> $ty {
                // `max(lowest, x)` keeps a NaN `x` (the second operand wins).
                let x = $max($set1(LOWEST), x);
                let n = $round::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>($mul(
                    x,
                    $set1(std::f32::consts::LOG2_E),
                ));
                let r = $fnmadd(n, $set1(LN2_HI), x);
                let r = $fnmadd(n, $set1(LN2_LO), r);
                let mut p = $set1(P[0]);
                for c in &P[1..] {
                    p = $fmadd(p, r, $set1(*c));
                }
                $scale($fmadd(p, $mul(r, r), $add(r, $set1(1.0))), n)
            }
        };
    }

    /// `p · 2^n` for integral `n >= -127` from the exponent bits of `2^n`
    /// (`n = -127` gives the bits of 0.0); AVX-512 has this as `scalef`.
    #[target_feature(enable = "avx2,fma")]
    fn scale256(p: __m256, n: __m256) -> __m256 {
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
    }

    isa_exp!(
        exp512,
        "avx512f",
        __m512,
        _mm512_max_ps,
        _mm512_set1_ps,
        _mm512_mul_ps,
        _mm512_roundscale_ps,
        _mm512_fnmadd_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_scalef_ps
    );
    isa_exp!(
        exp256,
        "avx2,fma",
        __m256,
        _mm256_max_ps,
        _mm256_set1_ps,
        _mm256_mul_ps,
        _mm256_round_ps,
        _mm256_fnmadd_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        scale256
    );

    /// One function per instruction set for a (row, head) pair: scores four
    /// keys at a time (four independent FMA chains), `exp` a vector at a
    /// time, then the weighted values `C` vectors of `d` per pass over
    /// the values (a head's values stay in L2 between passes when `d`
    /// takes more than one); both passes prefetch the rows `AHEAD` on.
    macro_rules! isa_head {
        ($name:ident, $feat:literal, $lanes:literal, $zero:expr, $set1:ident, $load:ident,
         $store:ident, $fma:ident, $add:ident, $sub:ident, $div:ident, $hsum:expr, $exp:ident) => {
            /// # Safety
            /// The CPU must have the enabled features; memory as
            /// [`Head::run`] requires.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(h: &Head<'_>, scores: &mut [f32], out: &mut [f32]) {
                const L: usize = $lanes;
                const C: usize = 4;
                // Keys and values are fetched this many rows ahead (into L1):
                // the hardware prefetchers alone left the 8-layer attention
                // of the issue-17 model's DAMRO batch-4 step at 14.3 ms, 12%
                // slower than libtorch's per-row SDPA; with 8, 16 and 32 rows
                // ahead it took 8.4-10.7 ms (AMD EPYC Zen 4, contended VM).
                const AHEAD: usize = 16;
                let d = h.q.len();
                let q = h.q.as_ptr();
                let vec_d = d / L * L;
                // SAFETY (every raw read): key/value `j < n` holds `d`
                // values at `j * step`, and `c + L <= vec_d <= d`.
                let dot = |key: *const f32| -> f32 {
                    let mut tail = 0.0;
                    for c in vec_d..d {
                        tail += unsafe { *q.add(c) * *key.add(c) };
                    }
                    tail
                };
                let mut j = 0;
                while j + 4 <= h.n {
                    let key = |i: usize| h.k.wrapping_add((j + i) * h.k_step);
                    for i in 0..4 {
                        let ahead = key(i + AHEAD) as *const i8;
                        for line in (0..d * 4).step_by(64) {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
                        }
                    }
                    let mut acc = [$zero; 4];
                    let mut c = 0;
                    while c < vec_d {
                        let qv = unsafe { $load(q.add(c)) };
                        for (i, a) in acc.iter_mut().enumerate() {
                            *a = $fma(qv, unsafe { $load(key(i).add(c)) }, *a);
                        }
                        c += L;
                    }
                    for (i, a) in acc.into_iter().enumerate() {
                        scores[j + i] = ($hsum(a) + dot(key(i))) * h.scale;
                    }
                    j += 4;
                }
                while j < h.n {
                    let key = h.k.wrapping_add(j * h.k_step);
                    let mut a = $zero;
                    let mut c = 0;
                    while c < vec_d {
                        a = $fma(unsafe { $load(q.add(c)) }, unsafe { $load(key.add(c)) }, a);
                        c += L;
                    }
                    scores[j] = ($hsum(a) + dot(key)) * h.scale;
                    j += 1;
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (mut sums, shift) = ($zero, $set1(max));
                let mut j = 0;
                while j + L <= h.n {
                    // SAFETY: `j + L <= n == scores.len()`.
                    unsafe {
                        let p = $exp($sub($load(scores.as_ptr().add(j)), shift));
                        $store(scores.as_mut_ptr().add(j), p);
                        sums = $add(sums, p);
                    }
                    j += L;
                }
                let mut sum = $hsum(sums);
                for s in &mut scores[j..] {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                // The weighted values, C vectors of `d` at a time.
                let mut c = 0;
                while c < vec_d {
                    let width = ((vec_d - c) / L).min(C);
                    let mut acc = [$zero; C];
                    for (j, &p) in scores.iter().enumerate() {
                        let pv = $set1(p);
                        let value = h.v.wrapping_add(j * h.v_step + c);
                        let ahead = value.wrapping_add(AHEAD * h.v_step) as *const i8;
                        for line in (0..width * L * 4).step_by(64) {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
                        }
                        for (i, a) in acc.iter_mut().enumerate().take(width) {
                            *a = $fma(pv, unsafe { $load(value.add(i * L)) }, *a);
                        }
                    }
                    let total = $set1(sum);
                    for (i, a) in acc.into_iter().enumerate().take(width) {
                        // SAFETY: `c + (i + 1) L <= vec_d <= out.len()`.
                        unsafe { $store(out.as_mut_ptr().add(c + i * L), $div(a, total)) };
                    }
                    c += width * L;
                }
                for (c, o) in out.iter_mut().enumerate().skip(vec_d) {
                    let mut a = 0.0;
                    for (j, &p) in scores.iter().enumerate() {
                        a += p * unsafe { *h.v.add(j * h.v_step + c) };
                    }
                    *o = a / sum;
                }
            }
        };
    }

    /// `e^x` of every value by the instruction set's vector `exp` (whole
    /// vectors only).
    #[cfg(test)]
    pub(super) fn exp_lanes(isa: crate::cpu::Isa, xs: &mut [f32]) {
        use crate::cpu::Isa;
        // SAFETY: tests pass an `isa` the CPU has (`cpu::isas`); every
        // access is a whole vector inside `xs`.
        unsafe {
            match isa {
                Isa::Avx512 => {
                    for c in xs.chunks_exact_mut(16) {
                        _mm512_storeu_ps(c.as_mut_ptr(), exp512(_mm512_loadu_ps(c.as_ptr())));
                    }
                }
                Isa::Avx2 => {
                    for c in xs.chunks_exact_mut(8) {
                        _mm256_storeu_ps(c.as_mut_ptr(), exp256(_mm256_loadu_ps(c.as_ptr())));
                    }
                }
            }
        }
    }

    isa_head!(
        head_avx512,
        "avx512f",
        16,
        _mm512_setzero_ps(),
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_sub_ps,
        _mm512_div_ps,
        _mm512_reduce_add_ps,
        exp512
    );
    isa_head!(
        head_avx2,
        "avx2,fma",
        8,
        _mm256_setzero_ps(),
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_div_ps,
        hsum256,
        exp256
    );
}

#[cfg(test)]
mod tests;

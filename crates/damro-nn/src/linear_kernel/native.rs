//! damro's own small-batch `x Wᵀ + b` for x86-64 CPUs with AVX-512 or
//! AVX2 + FMA: the [`super::LinearKernel::Native`] candidate.
//!
//! A decoding step's linear layer has a few rows and a weight of megabytes,
//! so the work is bound by streaming the weight from memory. The kernel
//! reads the weight once, row after row in memory order (so the hardware
//! prefetchers see one stream), and multiplies each weight row with every
//! input row while it sits in L1 (input rows in groups of up to eight, the
//! accumulators in registers; fewer rows unroll the inner dimension). Where the BLAS that libtorch ships runs small GEMMs far
//! below the memory speed (MKL on AMD Zen: 2x to 4x for 4 to 8 rows), this
//! keeps 8 or 16 rows close to the cost of one; where the BLAS is good,
//! calibration keeps the BLAS. Weights of at least [`PARALLEL_BYTES`] are
//! split over libtorch's intra-op thread count by output rows.
//!
//! Each output is a plain sum over `k` in lane order, so results differ
//! from BLAS only in summation order (about 1e-7 relative in f32).

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// Weights of at least this many bytes are split over threads.
pub const PARALLEL_BYTES: usize = 4 << 20;

/// The vector instruction set the kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    /// 16 f32 lanes.
    Avx512,
    /// 8 f32 lanes.
    Avx2,
}

/// The best instruction set this CPU offers, if the kernel can run.
pub(super) fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Isa::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(Isa::Avx2);
        }
    }
    None
}

/// `x Wᵀ + b` by the kernel.
///
/// # Shapes
/// x `[rows, in]`, weight `[out, in]`, bias `[out]` (all f32 on the CPU)
/// → `[rows, out]`
pub(super) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let isa = isa().ok_or_else(|| {
        Error::config(
            "linear kernel",
            "`native` needs an x86-64 CPU with AVX-512 or AVX2 and FMA",
        )
    })?;
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1);
    linear_with(isa, threads, x, weight, bias)
}

/// [`linear`] on a given instruction set and thread count.
pub(super) fn linear_with(
    isa: Isa,
    threads: usize,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (xsize, wsize) = (x.size(), weight.size());
    let (rows, out, inp) = match (&xsize[..], &wsize[..]) {
        (&[r, i], &[o, i2]) if i == i2 && r > 0 && o > 0 && i > 0 => (r, o, i),
        _ => {
            return Err(Error::shape(
                "native linear",
                "x [rows, in] and weight [out, in]",
                (xsize, wsize),
            ));
        }
    };
    let f32_cpu = |t: &Tensor| t.kind() == Kind::Float && t.device() == Device::Cpu;
    if !f32_cpu(x) || !f32_cpu(weight) || bias.is_some_and(|b| !f32_cpu(b) || b.size() != [out]) {
        return Err(Error::shape(
            "native linear",
            format!("f32 CPU tensors with a bias of [{out}]"),
            (x.kind(), weight.kind(), bias.map(Tensor::size)),
        ));
    }
    let (x, weight) = (x.f_contiguous()?, weight.f_contiguous()?);
    let bias = bias.map(Tensor::f_contiguous).transpose()?;
    // Output transposed, `[out, rows]`, so threads own contiguous blocks.
    let yt = Tensor::f_empty([out, rows], (Kind::Float, Device::Cpu))?;
    let (rows, out, inp) = (rows as usize, out as usize, inp as usize);
    // SAFETY: the four tensors are contiguous f32 CPU tensors of exactly
    // these element counts (checked above), alive until the end of this
    // function; `yt` is new and aliases none of the inputs.
    let (xs, ws, bs, ys) = unsafe {
        (
            std::slice::from_raw_parts(x.data_ptr() as *const f32, rows * inp),
            std::slice::from_raw_parts(weight.data_ptr() as *const f32, out * inp),
            bias.as_ref()
                .map(|b| std::slice::from_raw_parts(b.data_ptr() as *const f32, out)),
            std::slice::from_raw_parts_mut(yt.data_ptr() as *mut f32, out * rows),
        )
    };
    let problem = Problem {
        x: xs,
        rows,
        k: inp,
        w: ws,
        bias: bs,
    };
    let threads = if out * inp * 4 >= PARALLEL_BYTES {
        threads.min(out / 4).max(1)
    } else {
        1
    };
    if threads == 1 {
        problem.run(isa, 0, ys);
    } else {
        // Blocks of whole 4-row groups, the last one taking the rest.
        let per = out.div_ceil(threads).div_ceil(4) * 4;
        std::thread::scope(|s| {
            let mut rest = ys;
            let mut start = 0;
            let mut mine = None;
            while !rest.is_empty() {
                let n = per.min(out - start);
                let (block, tail) = rest.split_at_mut(n * rows);
                rest = tail;
                if mine.is_none() {
                    mine = Some((start, block));
                } else {
                    let p = &problem;
                    s.spawn(move || p.run(isa, start, block));
                }
                start += n;
            }
            if let Some((start, block)) = mine {
                problem.run(isa, start, block);
            }
        });
    }
    Ok(yt.f_transpose(0, 1)?.f_contiguous()?)
}

/// One call's operands as slices.
struct Problem<'a> {
    /// `[rows, k]`.
    x: &'a [f32],
    rows: usize,
    k: usize,
    /// `[out, k]`.
    w: &'a [f32],
    /// `[out]`.
    bias: Option<&'a [f32]>,
}

impl Problem<'_> {
    /// Fills `yt` (`[n, rows]`) with outputs `o0..o0 + n`.
    fn run(&self, isa: Isa, o0: usize, yt: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `isa` came from `isa()`, which checked that the CPU
            // has these features.
            unsafe {
                match isa {
                    Isa::Avx512 => x86::run_avx512(self, o0, yt),
                    Isa::Avx2 => x86::run_avx2(self, o0, yt),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (isa, o0, yt);
            unreachable!("no instruction set is detected off x86-64");
        }
    }

    /// The scalar tail `k0..k` of output `o` for input row `r`, plus bias.
    fn finish(&self, o: usize, r: usize, k0: usize, sum: f32) -> f32 {
        let (w, x) = (&self.w[o * self.k..], &self.x[r * self.k..]);
        let tail: f32 = (k0..self.k).map(|i| w[i] * x[i]).sum();
        sum + tail + self.bias.map_or(0.0, |b| b[o])
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Problem;

    /// Horizontal sum of 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// One block function per input-row group size: the accumulators are
    /// arrays of const size, kept in registers. (Two weight rows per pass,
    /// to reuse each input load, measured slower here: 1.5x on an
    /// `lm_head` with 8 rows.)
    macro_rules! isa_kernel {
        ($run:ident, $block:ident, $feat:literal, $lanes:literal,
         $zero:expr, $load:ident, $fma:ident, $add:ident, $hsum:expr) => {
            /// # Safety
            /// The CPU must have the enabled features; `p` and `yt` as
            /// [`Problem::run`] describes.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $run(p: &Problem<'_>, o0: usize, yt: &mut [f32]) {
                for o in 0..yt.len() / p.rows {
                    let mut r = 0;
                    while r < p.rows {
                        let rb = (p.rows - r).min(MAX_GROUP);
                        let (go, at) = (o0 + o, (r, o));
                        // SAFETY: as for this function. Fewer input rows
                        // unroll `k` more, to keep four FMA chains going.
                        unsafe {
                            match rb {
                                1 => $block::<1, 4>(p, go, at, yt),
                                2 => $block::<2, 2>(p, go, at, yt),
                                3 => $block::<3, 2>(p, go, at, yt),
                                4 => $block::<4, 1>(p, go, at, yt),
                                5 => $block::<5, 1>(p, go, at, yt),
                                6 => $block::<6, 1>(p, go, at, yt),
                                7 => $block::<7, 1>(p, go, at, yt),
                                _ => $block::<8, 1>(p, go, at, yt),
                            }
                        }
                        r += rb;
                    }
                }
            }

            /// Output `go` for input rows `r..r + RB`, written at
            /// `yt[o * rows + r + i]` (`at` = `(r, o)`); `k` unrolled `U`
            /// times.
            ///
            /// # Safety
            /// As the run function; `go < out`, `r + RB <= rows`.
            #[target_feature(enable = $feat)]
            unsafe fn $block<const RB: usize, const U: usize>(
                p: &Problem<'_>,
                go: usize,
                (r, o): (usize, usize),
                yt: &mut [f32],
            ) {
                let k = p.k;
                // SAFETY: row `go < out` of the `[out, k]` weight.
                let w = unsafe { p.w.as_ptr().add(go * k) };
                let x = p.x.as_ptr();
                let mut acc = [[$zero; RB]; U];
                let mut kk = 0;
                while kk + U * $lanes <= k {
                    for (u, accs) in acc.iter_mut().enumerate() {
                        let at = kk + u * $lanes;
                        // SAFETY: `at + lanes <= k` within the weight row
                        // and within input rows `r + i < rows`.
                        let wv = unsafe { $load(w.add(at)) };
                        for (i, a) in accs.iter_mut().enumerate() {
                            let xv = unsafe { $load(x.add((r + i) * k + at)) };
                            *a = $fma(wv, xv, *a);
                        }
                    }
                    kk += U * $lanes;
                }
                while kk + $lanes <= k {
                    // SAFETY: as above.
                    let wv = unsafe { $load(w.add(kk)) };
                    for (i, a) in acc[0].iter_mut().enumerate() {
                        let xv = unsafe { $load(x.add((r + i) * k + kk)) };
                        *a = $fma(wv, xv, *a);
                    }
                    kk += $lanes;
                }
                for i in 0..RB {
                    let mut v = acc[0][i];
                    for accs in &acc[1..] {
                        v = $add(v, accs[i]);
                    }
                    yt[o * p.rows + r + i] = p.finish(go, r + i, kk, $hsum(v));
                }
            }
        };
    }

    /// Input rows multiplied against one weight row in one pass.
    const MAX_GROUP: usize = 8;

    isa_kernel!(
        run_avx512,
        block_avx512,
        "avx512f",
        16,
        _mm512_setzero_ps(),
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_reduce_add_ps
    );
    isa_kernel!(
        run_avx2,
        block_avx2,
        "avx2,fma",
        8,
        _mm256_setzero_ps(),
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        hsum256
    );
}

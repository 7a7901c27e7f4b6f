//! damro's own small-batch `x Wᵀ + b` for x86-64 CPUs with AVX-512 or
//! AVX2 + FMA: the [`super::LinearKernel::Native`] candidate.
//!
//! A decoding step's linear layer has a few rows and a weight of megabytes.
//! Up to three input rows stream the weight row after row in memory order
//! against every input row (one stream for the hardware prefetchers; the
//! work is bound by memory). Four rows or more are register blocks: a few
//! weight rows (four on AVX-512, two on AVX2) against up to four input
//! rows, so every vector loaded feeds several FMAs; the block's input
//! groups run one after the other while its weight rows sit in L1, each
//! weight is read from memory once, and the block prefetches the next
//! block's weight rows into L2 (several row streams at once are what the
//! hardware prefetchers follow poorly). Where the BLAS that libtorch ships
//! runs small GEMMs far below the memory speed (MKL on AMD Zen), this keeps
//! 4 or 8 rows close to the cost of one; where the BLAS is good,
//! calibration keeps the BLAS.
//!
//! Weights of at least [`PARALLEL_BYTES`] are split by output rows over
//! libtorch's intra-op threads, on the OpenMP team libtorch itself runs on;
//! without one, over scoped threads of our own for weights of at least
//! [`SPAWN_BYTES`] (starting a thread costs more than a small weight).
//!
//! Each output is summed in a fixed order (per lane and unrolled step, then
//! across them), so results differ from BLAS only in summation order
//! (about 1e-7 relative in f32) and do not depend on the thread count.

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

use crate::cpu::{Isa, Team, isa};

/// Weights of at least this many bytes are split over libtorch's OpenMP
/// team.
pub const PARALLEL_BYTES: usize = 256 << 10;
/// Without an OpenMP team, weights of at least this many bytes are split
/// over threads of our own.
pub const SPAWN_BYTES: usize = 4 << 20;

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
    linear_on(isa, threads, Team::get(), x, weight, bias)
}

/// [`linear_with`] on a given OpenMP team, or threads of our own (`None`).
pub(super) fn linear_on(
    isa: Isa,
    threads: usize,
    team: Option<&Team>,
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
    // Written in place, `[rows, out]`: threads own column blocks. (Writing
    // `[out, rows]` and transposing afterwards cost a copy that, for the
    // 8-row lm_head of the issue-17 model, took 1.3 ms on an AMD EPYC Zen 3
    // against about 4.3 ms for the kernel itself.)
    let y = Tensor::f_empty([rows, out], (Kind::Float, Device::Cpu))?;
    let (rows, out, inp) = (rows as usize, out as usize, inp as usize);
    // SAFETY: the three input tensors are contiguous f32 CPU tensors of
    // exactly these element counts (checked above), alive until the end of
    // this function.
    let (xs, ws, bs) = unsafe {
        (
            std::slice::from_raw_parts(x.data_ptr() as *const f32, rows * inp),
            std::slice::from_raw_parts(weight.data_ptr() as *const f32, out * inp),
            bias.as_ref()
                .map(|b| std::slice::from_raw_parts(b.data_ptr() as *const f32, out)),
        )
    };
    // `y` is new, contiguous, `[rows, out]`, alive until the end of this
    // function, and aliases none of the inputs.
    let output = Output {
        ptr: y.data_ptr() as *mut f32,
        stride: out,
    };
    let problem = Problem {
        x: xs,
        rows,
        k: inp,
        w: ws,
        bias: bs,
    };
    let threshold = if team.is_some() {
        PARALLEL_BYTES
    } else {
        SPAWN_BYTES
    };
    let threads = if out * inp * 4 >= threshold {
        threads.min(out / 4).max(1)
    } else {
        1
    };
    // Threads own blocks of whole 4-row groups, the last one the rest, so
    // every output is summed in the same order for any thread count.
    let block_rows = |threads: usize| out.div_ceil(threads).div_ceil(4) * 4;
    // SAFETY (every `run` below): the columns `start..end` of the output
    // belong to one thread alone, and the output outlives every thread
    // (`Team::run` and the thread scope return after all of them).
    match team {
        _ if threads == 1 => unsafe { problem.run(isa, 0..out, output) },
        Some(team) => {
            let work = |t: usize, n: usize| {
                let per = block_rows(n);
                let (start, end) = ((t * per).min(out), ((t + 1) * per).min(out));
                if start < end {
                    unsafe { problem.run(isa, start..end, output) };
                }
            };
            if !team.run(threads, &work) {
                return Err(Error::config(
                    "native linear",
                    "a thread of the OpenMP team panicked",
                ));
            }
        }
        None => {
            let per = block_rows(threads);
            std::thread::scope(|s| {
                let p = &problem;
                for start in (per..out).step_by(per) {
                    let end = (start + per).min(out);
                    s.spawn(move || unsafe { p.run(isa, start..end, output) });
                }
                unsafe { problem.run(isa, 0..per.min(out), output) };
            });
        }
    }
    Ok(y)
}

/// The `[rows, out]` output's base pointer and row stride, shared by the
/// threads of a parallel region, each of which writes its own columns.
#[derive(Clone, Copy)]
struct Output {
    ptr: *mut f32,
    stride: usize,
}

// SAFETY: the threads write disjoint elements (each its own columns), and
// nothing reads the output before they have all finished.
unsafe impl Sync for Output {}
unsafe impl Send for Output {}

impl Output {
    /// Writes element `(r, o)`.
    ///
    /// # Safety
    /// `(r, o)` must be inside the output and no other thread may access it
    /// while the region runs.
    #[inline(always)]
    unsafe fn write(self, r: usize, o: usize, v: f32) {
        // SAFETY: as the caller promises.
        unsafe { *self.ptr.add(r * self.stride + o) = v }
    }
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
    /// Fills the output's columns `cols` (outputs `cols`, every row).
    ///
    /// # Safety
    /// `output` must be a `[rows, out]` output with `cols` inside it, whose
    /// columns `cols` no other thread accesses while this runs.
    unsafe fn run(&self, isa: Isa, cols: std::ops::Range<usize>, output: Output) {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `isa` came from `isa()`, which checked that the CPU
            // has these features; the output as the caller promises.
            unsafe {
                match isa {
                    Isa::Avx512 => x86::run_avx512(self, cols, output),
                    Isa::Avx2 => x86::run_avx2(self, cols, output),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (isa, cols, output);
            unreachable!("no instruction set is detected off x86-64");
        }
    }

    /// The scalar tail `k0..k` of output `o` for input row `r`, plus bias.
    #[inline(always)]
    fn finish(&self, o: usize, r: usize, k0: usize, sum: f32) -> f32 {
        let sum = if k0 < self.k {
            let (w, x) = (&self.w[o * self.k..], &self.x[r * self.k..]);
            sum + (k0..self.k).map(|i| w[i] * x[i]).sum::<f32>()
        } else {
            sum
        };
        match self.bias {
            Some(b) => sum + b[o],
            None => sum,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Output, Problem};
    use crate::cpu::x86::hsum256;

    /// One run function per instruction set. Up to three input rows: one
    /// weight row at a time against all of them, in memory order (one
    /// stream, which the hardware prefetchers follow; bound by memory),
    /// `k` unrolled as the invocations below set (more independent FMA
    /// chains, each output's horizontal sum spread over more work:
    /// unrolling 8 times instead of 4 and 2 made the bench model's 1- and
    /// 2-row linear layers 5-10% faster on an AMD EPYC Zen 4). Four rows or
    /// more: register blocks of `WB` weight rows against up to four input rows,
    /// every loaded vector used `WB` or four times, the block's input
    /// groups one after the other while its weight rows sit in L1, so each
    /// weight is read from memory once and the loop is bound by FMAs rather
    /// than loads; the block's rows are several streams, which the hardware
    /// prefetchers follow poorly, so the block prefetches the next one.
    macro_rules! isa_kernel {
        ($run:ident, $block:ident, $feat:literal, $lanes:literal, $wb:literal, $u:expr,
         $zero:expr, $load:ident, $fma:ident, $add:ident, $hsum:expr) => {
            /// # Safety
            /// The CPU must have the enabled features; `cols` and `y` as
            /// [`Problem::run`] describes.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $run(p: &Problem<'_>, cols: std::ops::Range<usize>, y: Output) {
                let (o0, n) = (cols.start, cols.len());
                // SAFETY (every block call): as for this function, with
                // `o0 + o + WB <= out` and `r + RB <= rows`.
                if p.rows < 4 {
                    for o in 0..n {
                        let go = o0 + o;
                        unsafe {
                            match p.rows {
                                1 => $block::<1, 1, { $u.0 }, false>(p, go, 0, y),
                                2 => $block::<1, 2, { $u.1 }, false>(p, go, 0, y),
                                _ => $block::<1, 3, { $u.2 }, false>(p, go, 0, y),
                            }
                        }
                    }
                    return;
                }
                let mut o = 0;
                while o < n {
                    let wb = if n - o >= $wb { $wb } else { 1 };
                    let mut r = 0;
                    while r < p.rows {
                        let rb = (p.rows - r).min(4);
                        let go = o0 + o;
                        unsafe {
                            match (wb, rb) {
                                ($wb, 1) => $block::<$wb, 1, 1, true>(p, go, r, y),
                                ($wb, 2) => $block::<$wb, 2, 1, true>(p, go, r, y),
                                ($wb, 3) => $block::<$wb, 3, 1, true>(p, go, r, y),
                                ($wb, _) => $block::<$wb, 4, 1, true>(p, go, r, y),
                                (_, 1) => $block::<1, 1, 1, true>(p, go, r, y),
                                (_, 2) => $block::<1, 2, 1, true>(p, go, r, y),
                                (_, 3) => $block::<1, 3, 1, true>(p, go, r, y),
                                (_, _) => $block::<1, 4, 1, true>(p, go, r, y),
                            }
                        }
                        r += rb;
                    }
                    o += wb;
                }
            }

            /// Outputs `go..go + WB` for input rows `r..r + RB`, written
            /// into `y`; `k` unrolled `U` times; `PF`: prefetch the next
            /// block's weight rows.
            ///
            /// # Safety
            /// As the run function; `go + WB <= out`, `r + RB <= rows`, the
            /// columns `go..go + WB` of `y` the caller's own.
            #[target_feature(enable = $feat)]
            unsafe fn $block<const WB: usize, const RB: usize, const U: usize, const PF: bool>(
                p: &Problem<'_>,
                go: usize,
                r: usize,
                y: Output,
            ) {
                let k = p.k;
                // SAFETY: rows `go..go + WB <= out` of the `[out, k]`
                // weight and `r..r + RB <= rows` of the `[rows, k]` input.
                let (w, x) = unsafe { (p.w.as_ptr().add(go * k), p.x.as_ptr().add(r * k)) };
                let mut acc = [[[$zero; RB]; WB]; U];
                // The block's rows are several streams, which the
                // hardware prefetchers follow poorly: the input groups
                // prefetch the next block's weight rows (contiguous after
                // this block's) into L2, each group a share, as much per
                // step as the step consumes. (Into L1 the misses in flight
                // are too few: the 4- and 8-row steps of the issue-17
                // model's linear layers took 9.5 and 13.0 ms against 7.2
                // and 10.1 ms into L2, on an AMD EPYC Zen 4.)
                let next = w.wrapping_add(WB * k) as *const i8;
                let (per_step, mut pf_at) = if PF {
                    let groups = p.rows.div_ceil(4).max(1);
                    let share = WB * k * 4 / groups;
                    ((WB * $lanes * 4).div_ceil(groups), r / 4 * share)
                } else {
                    (0, 0)
                };
                let mut pf_to = pf_at;
                let mut kk = 0;
                while kk + U * $lanes <= k {
                    for (u, accs) in acc.iter_mut().enumerate() {
                        let at = kk + u * $lanes;
                        pf_to += per_step;
                        while pf_at < pf_to {
                            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(pf_at));
                            pf_at += 64;
                        }
                        // SAFETY: `at + lanes <= k`, inside every row.
                        let mut xv = [$zero; RB];
                        for (i, v) in xv.iter_mut().enumerate() {
                            *v = unsafe { $load(x.add(i * k + at)) };
                        }
                        for (j, row) in accs.iter_mut().enumerate() {
                            let wv = unsafe { $load(w.add(j * k + at)) };
                            for (a, v) in row.iter_mut().zip(xv) {
                                *a = $fma(wv, v, *a);
                            }
                        }
                    }
                    kk += U * $lanes;
                }
                while kk + $lanes <= k {
                    for (j, row) in acc[0].iter_mut().enumerate() {
                        // SAFETY: as above.
                        let wv = unsafe { $load(w.add(j * k + kk)) };
                        for (i, a) in row.iter_mut().enumerate() {
                            let xv = unsafe { $load(x.add(i * k + kk)) };
                            *a = $fma(wv, xv, *a);
                        }
                    }
                    kk += $lanes;
                }
                for j in 0..WB {
                    for i in 0..RB {
                        let mut v = acc[0][j][i];
                        for accs in &acc[1..] {
                            v = $add(v, accs[j][i]);
                        }
                        let v = p.finish(go + j, r + i, kk, $hsum(v));
                        // SAFETY: inside the output, in the caller's columns.
                        unsafe { y.write(r + i, go + j, v) };
                    }
                }
            }
        };
    }

    // AVX-512 has 32 vector registers: 4 x 4 accumulators and 5 operands;
    // 1-3 rows unrolled 8, 8, 4 times (at most 16 accumulators). AVX2 has
    // 16: 2 x 4 accumulators and 5 operands; 1-3 rows unrolled 8, 4, 2
    // times (at most 8 accumulators).
    isa_kernel!(
        run_avx512,
        block_avx512,
        "avx512f",
        16,
        4,
        (8, 8, 4),
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
        2,
        (8, 4, 2),
        _mm256_setzero_ps(),
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        hsum256
    );
}

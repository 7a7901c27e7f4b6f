//! Which kernel [`crate::Linear`] uses for the few rows of a decoding step,
//! and which attention the step uses, chosen by timing the candidates on
//! the machine it runs on.
//!
//! A decoding step feeds each linear layer a handful of rows (one per
//! request and branch: DAMRO's two branches run as one batched forward).
//! At that size a step is bound by streaming the weights from memory, and
//! which call streams a weight fastest depends on the CPU and its BLAS.
//! With libtorch 2.13's MKL on an Intel Xeon (AVX-512, AMX), `linear` on 2
//! rows costs about one row and `(W xᵀ)ᵀ` 2-3.6x more; on an AMD EPYC (Zen
//! 4) the 1-row `linear` (a GEMV) streams a weight at a third to half the
//! speed of a 2-column GEMM, and the 2-row `linear` is slower still
//! (figures in `BENCHMARKS.md`). No rule by CPU name holds across
//! machines, so the choice is measured where it is used:
//!
//! - [`calibrate_kernels`] runs a caller's throw-away step (a decoder runs
//!   a decoding step and rolls its cache back) until every small-batch
//!   linear call in it has been timed with every candidate, the calls
//!   taking the candidates in turn, and keeps per [`LinearKey`] (weight
//!   shape, rows, bias, dtype, device, libtorch threads) the kernel with
//!   the best call. Timing real steps matters: the weights then come from
//!   memory with the access pattern of a step, whereas timing one weight
//!   in a loop measures the caches, and even evicting the caches between
//!   calls picked kernels that made a step 25% slower here.
//! - Per-call timings still miss what a whole step sees (a kernel that
//!   leaves a core idle, OpenMP threads waiting between calls, caches
//!   shared with the attention), so [`calibrate_kernels`] then times whole
//!   steps: the per-call choices against every candidate used for all of
//!   the step's calls, a few interleaved rounds each, and keeps whichever
//!   gives the fastest median step ([`step_choices`] reports it). In a
//!   probe here the per-call winners made a 2-row step 11-12 ms and an
//!   8-row one 28-29 ms, against 9 and 21 ms with `weight-left` for every
//!   call: they mixed kernels that slowed each other down.
//! - The step's attention is chosen the same way: with the chosen linear
//!   kernels, whole steps attending with damro's own decode kernel
//!   ([`crate::attention::decode`]: every row and head in one call)
//!   against libtorch's attention, interleaved
//!   ([`native_decode_attention`]).
//! - [`with_tuned_kernels`] runs the real steps: each small-batch call
//!   takes its key's kernel, or `linear` while the key has none.
//!
//! Outside those two scopes (prefills, vision towers, projectors) every
//! call is libtorch's `linear`, and inside a tuned scope a key's kernel
//! never changes once chosen, so results are deterministic within a
//! process: no user-visible result is computed while kernels are explored.
//! Only f32 on the CPU with 1 to [`SMALL_BATCH_ROWS`] rows is tuned (GPU
//! BLAS reads a weight once for any number of rows; half-precision CPU
//! kernels round differently from each other). The kernels differ only in
//! floating-point summation order (about 1e-7 relative in f32); set
//! [`LinearPolicy::Fixed`] (or `DAMRO_LINEAR_KERNEL`) for runs that must
//! be bit-reproducible across processes and machines.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// Up to this many rows, [`crate::Linear`] on f32 CPU tensors in a tuned
/// scope takes its calibrated kernel; more rows always use libtorch's
/// `linear`.
pub const SMALL_BATCH_ROWS: i64 = 16;

/// A way to compute `y = x Wᵀ + b` for `x` `[rows, in]`, `W` `[out, in]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinearKernel {
    /// libtorch's `linear` (`x Wᵀ + b`; a GEMV for one row).
    Linear,
    /// `(W xᵀ)ᵀ + b`: the weight as the left, row-major operand.
    WeightLeft,
    /// [`LinearKernel::WeightLeft`] two rows at a time, a single row
    /// paired with a copy of itself: BLAS then always runs its 2-column
    /// GEMM, which on some CPUs streams a weight several times faster than
    /// its GEMV or wider GEMMs, and a weight that fits in the caches is
    /// read from memory once for all pairs.
    Pairs,
    /// damro's own AVX-512 / AVX2 kernel ([`native`]): each weight read
    /// from memory once for every input row (register blocks of weight
    /// and input rows from four rows on), split over libtorch's OpenMP
    /// threads. Offered only on x86-64 CPUs that have the instructions.
    Native,
}

impl LinearKernel {
    /// Every kernel, `Linear` first.
    pub const ALL: [LinearKernel; 4] = [Self::Linear, Self::WeightLeft, Self::Pairs, Self::Native];

    /// The kernel's name as `DAMRO_LINEAR_KERNEL` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::WeightLeft => "weight-left",
            Self::Pairs => "pairs",
            Self::Native => "native",
        }
    }

    /// The kernels worth timing for `rows` rows on this CPU: `Pairs` is
    /// `WeightLeft` for two rows, and `Native` needs AVX-512 or AVX2.
    fn candidates(rows: i64) -> Vec<LinearKernel> {
        let native = crate::cpu::isa().is_some();
        Self::ALL
            .into_iter()
            .filter(|&k| !(rows == 2 && k == Self::Pairs) && (native || k != Self::Native))
            .collect()
    }

    /// Applies the kernel.
    ///
    /// # Shapes
    /// x `[rows, in]`, weight `[out, in]`, bias `[out]` → `[rows, out]`
    pub fn apply(self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        // Both layouts are normalised: BLAS picks its GEMM variant by the
        // operands' strides, and a transposed `[rows, out]` result fed to
        // the next layer as is made this path 3x slower there.
        let weight_left = |x: &Tensor| -> Result<Tensor> {
            let xt = x.f_contiguous()?.f_transpose(0, 1)?;
            let y = weight.f_matmul(&xt)?.f_transpose(0, 1)?.f_contiguous()?;
            Ok(match bias {
                Some(b) => y.f_add(b)?,
                None => y,
            })
        };
        Ok(match self {
            Self::Linear => x.f_linear(weight, bias)?,
            Self::Native => native::linear(x, weight, bias)?,
            Self::WeightLeft => weight_left(x)?,
            Self::Pairs => {
                let rows = x.size().first().copied().unwrap_or(0);
                let mut outs = Vec::with_capacity(((rows + 1) / 2) as usize);
                for first in (0..rows).step_by(2) {
                    let pair = if first + 1 < rows {
                        x.f_narrow(0, first, 2)?
                    } else {
                        x.f_narrow(0, first, 1)?.f_expand([2, -1], false)?
                    };
                    let y = weight_left(&pair.f_contiguous()?)?;
                    outs.push(y.f_narrow(0, 0, 2.min(rows - first))?);
                }
                match outs.len() {
                    1 => outs.remove(0),
                    _ => Tensor::f_cat(&outs, 0)?,
                }
            }
        })
    }
}

impl std::str::FromStr for LinearKernel {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::config(
                    "linear kernel",
                    format!("unknown kernel {s:?}: expected one of {}", kernel_names()),
                )
            })
    }
}

fn kernel_names() -> String {
    let names: Vec<&str> = LinearKernel::ALL.iter().map(|k| k.name()).collect();
    names.join(", ")
}

/// How tuned scopes pick the kernel of a small-batch call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LinearPolicy {
    /// Calibrate each [`LinearKey`] in [`calibrate_kernels`] and keep the
    /// fastest kernel (the default).
    #[default]
    Calibrate,
    /// Always this kernel; [`calibrate_kernels`] does nothing.
    Fixed(LinearKernel),
}

/// What a calibrated choice is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinearKey {
    /// Output features (weight rows).
    pub out_dim: i64,
    /// Input features (weight columns).
    pub in_dim: i64,
    /// Rows of the input.
    pub rows: i64,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Dtype of the weight.
    pub kind: Kind,
    /// Device of the weight.
    pub device: Device,
    /// libtorch's intra-op threads.
    pub threads: i32,
}

/// One finished calibration: the kernel kept and every candidate's time.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearChoice {
    /// The calibrated case.
    pub key: LinearKey,
    /// The kernel used from then on: the per-call winner, unless the
    /// whole-step phase found a single kernel for every call of the step
    /// faster ([`StepChoice`]).
    pub kernel: LinearKernel,
    /// Seconds of the best timed call of each candidate.
    pub seconds: Vec<(LinearKernel, f64)>,
}

/// Timed calls per candidate and key (after one untimed warm-up call
/// each), at least. Cheap calls are timed more, up to [`MAX_SAMPLES`] or
/// [`ENOUGH_SECONDS`] of timed calls per candidate, whichever comes first:
/// a layer shape called dozens of times a step is measured on many calls,
/// an `lm_head` called once a step on a few.
pub const SAMPLES: usize = 4;
/// See [`SAMPLES`].
pub const MAX_SAMPLES: usize = 16;
/// See [`SAMPLES`].
pub const ENOUGH_SECONDS: f64 = 0.01;
/// At most this many runs of a calibration step; keys still short of
/// samples then decide on what they have.
pub const MAX_CALIBRATION_RUNS: usize = 24;

/// Whole-step rounds of the confirmation phase (each round times every
/// assignment once), at least and at most; within those bounds the phase
/// aims at [`STEP_SECONDS`].
pub const STEP_ROUNDS: (usize, usize) = (3, 7);
/// See [`STEP_ROUNDS`].
pub const STEP_SECONDS: f64 = 0.5;

/// Whether a candidate has been timed enough.
fn timed_enough(samples: &[f64]) -> bool {
    samples.len() >= SAMPLES
        && (samples.len() >= MAX_SAMPLES || samples.iter().sum::<f64>() >= ENOUGH_SECONDS)
}

/// Where one key's calibration stands.
#[derive(Debug)]
enum Slot {
    /// Candidates still being timed; `next` is the one the next call takes.
    Exploring {
        candidates: Vec<LinearKernel>,
        /// Seconds per timed call, per candidate.
        samples: Vec<Vec<f64>>,
        /// Whether each candidate had its untimed warm-up call.
        warmed: Vec<bool>,
        next: usize,
    },
    Chosen(LinearChoice),
}

impl Slot {
    fn new(rows: i64) -> Self {
        let candidates = LinearKernel::candidates(rows);
        let n = candidates.len();
        Slot::Exploring {
            candidates,
            samples: vec![Vec::with_capacity(SAMPLES); n],
            warmed: vec![false; n],
            next: 0,
        }
    }

    /// The kernel for the next exploring call and its candidate index
    /// (`None` once chosen).
    fn next(&self) -> (LinearKernel, Option<usize>) {
        match self {
            Slot::Chosen(choice) => (choice.kernel, None),
            Slot::Exploring {
                candidates, next, ..
            } => (candidates[*next], Some(*next)),
        }
    }

    /// Records one call of candidate `i`; decides once all are timed
    /// enough (or when `force`d, on what they have).
    fn record(&mut self, key: LinearKey, i: Option<usize>, seconds: f64, force: bool) {
        let Slot::Exploring {
            candidates,
            samples,
            warmed,
            next,
        } = self
        else {
            return;
        };
        if let Some(i) = i {
            if warmed[i] {
                samples[i].push(seconds);
            } else {
                warmed[i] = true;
            }
            *next = (i + 1) % candidates.len();
        }
        if force || samples.iter().all(|s| timed_enough(s)) {
            let best: Vec<f64> = samples.iter().map(|s| fastest(s)).collect();
            *self = Slot::Chosen(choose(key, candidates, &best));
        }
    }
}

/// The best of a candidate's timings (infinite when it has none). Noise
/// (other processes, OpenMP threads waiting for a busy core) only adds
/// time, so the minimum is the kernel's own cost.
fn fastest(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The entry with the smallest time, the first on ties (`None` when
/// empty).
fn first_fastest<T: Copy>(timed: &[(T, f64)]) -> Option<T> {
    timed
        .iter()
        .fold(None::<(T, f64)>, |acc, &(k, t)| match acc {
            Some((_, bt)) if bt <= t => acc,
            _ => Some((k, t)),
        })
        .map(|(k, _)| k)
}

/// The candidate with the best time (the first on ties).
fn choose(key: LinearKey, candidates: &[LinearKernel], best: &[f64]) -> LinearChoice {
    let seconds: Vec<(LinearKernel, f64)> = candidates
        .iter()
        .copied()
        .zip(best.iter().copied())
        .collect();
    let kernel = first_fastest(&seconds).unwrap_or(LinearKernel::Linear);
    LinearChoice {
        key,
        kernel,
        seconds,
    }
}

/// The outcome of one whole-step confirmation (see [`calibrate_kernels`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StepChoice {
    /// Rows of the step's small-batch calls.
    pub rows: i64,
    /// libtorch's intra-op threads.
    pub threads: i32,
    /// The kernel every call of the step now uses, or `None` when the
    /// per-call choices won.
    pub kernel: Option<LinearKernel>,
    /// Median seconds of a step under each assignment (`None`: the
    /// per-call choices).
    pub seconds: Vec<(Option<LinearKernel>, f64)>,
    /// Whether the step's attention now runs on damro's own decode kernel
    /// ([`crate::attention::decode`]) rather than libtorch's; `None` where
    /// that kernel is not offered (then libtorch's).
    pub native_attention: Option<bool>,
    /// Median seconds of a step with the chosen linear kernels and each
    /// attention (`true`: damro's), interleaved; empty when not offered.
    pub attention_seconds: Vec<(bool, f64)>,
}

#[derive(Debug, Default)]
struct State {
    policy: Option<LinearPolicy>,
    slots: HashMap<LinearKey, Slot>,
    steps: Vec<StepChoice>,
    /// Per (rows, threads), whether decode steps attend with damro's own
    /// kernel, as the last confirmation of that size chose.
    attention: HashMap<(i64, i32), bool>,
}

impl State {
    fn policy(&mut self) -> Result<LinearPolicy> {
        if let Some(p) = self.policy {
            return Ok(p);
        }
        let p = policy_from_env()?;
        self.policy = Some(p);
        Ok(p)
    }
}

fn lock() -> MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// What this thread's small-batch calls do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// libtorch's `linear`.
    Untuned,
    /// The key's kernel, `linear` while it has none.
    Tuned,
    /// Undecided keys take their candidates in turn and are timed.
    Calibrating,
    /// A whole-step trial: every call takes this kernel, or its key's
    /// per-call choice when `None`, and the attention is damro's own
    /// decode kernel or not; nothing is timed per call.
    Confirming(Option<LinearKernel>, bool),
}

thread_local! {
    static SCOPE: Cell<Scope> = const { Cell::new(Scope::Untuned) };
    /// Keys called during the current calibration run.
    static TOUCHED: RefCell<HashSet<LinearKey>> = RefCell::new(HashSet::new());
}

/// Sets this thread's scope and restores the previous one when dropped
/// (also on an early return or a panic).
struct ScopeGuard(Scope);

impl ScopeGuard {
    fn enter(scope: Scope) -> Self {
        ScopeGuard(SCOPE.with(|s| s.replace(scope)))
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        SCOPE.with(|s| s.set(self.0));
    }
}

/// Sets the policy for the rest of the process (overrides
/// `DAMRO_LINEAR_KERNEL`). Choices already calibrated are kept.
pub fn set_linear_policy(policy: LinearPolicy) {
    lock().policy = Some(policy);
}

/// The policy in force: the one set by [`set_linear_policy`], else
/// `DAMRO_LINEAR_KERNEL` (`calibrate` or a [`LinearKernel::name`]), else
/// [`LinearPolicy::Calibrate`].
///
/// # Errors
/// `DAMRO_LINEAR_KERNEL` names no kernel.
pub fn linear_policy() -> Result<LinearPolicy> {
    lock().policy()
}

fn policy_from_env() -> Result<LinearPolicy> {
    match std::env::var("DAMRO_LINEAR_KERNEL") {
        Ok(v) if v == "calibrate" || v.is_empty() => Ok(LinearPolicy::Calibrate),
        Ok(v) => v.parse().map(LinearPolicy::Fixed).map_err(|_| {
            Error::config(
                "DAMRO_LINEAR_KERNEL",
                format!("{v:?}: expected `calibrate` or one of {}", kernel_names()),
            )
        }),
        Err(_) => Ok(LinearPolicy::Calibrate),
    }
}

/// Runs `f` with this thread's small-batch [`crate::Linear`] calls on
/// their calibrated kernels (the fixed one under [`LinearPolicy::Fixed`];
/// `linear` for a key not calibrated yet). Nested in a
/// [`calibrate_kernels`] step, calls keep calibrating.
pub fn with_tuned_kernels<T>(f: impl FnOnce() -> T) -> T {
    let scope = match SCOPE.with(Cell::get) {
        inner @ (Scope::Calibrating | Scope::Confirming(..)) => inner,
        _ => Scope::Tuned,
    };
    let _guard = ScopeGuard::enter(scope);
    f()
}

/// Whether every key has its kernel (always, under a fixed policy).
///
/// # Errors
/// `DAMRO_LINEAR_KERNEL` names no kernel.
pub fn is_calibrated(keys: impl IntoIterator<Item = LinearKey>) -> Result<bool> {
    let mut st = lock();
    if let LinearPolicy::Fixed(_) = st.policy()? {
        return Ok(true);
    }
    Ok(keys
        .into_iter()
        .all(|k| matches!(st.slots.get(&k), Some(Slot::Chosen(_)))))
}

/// Calibrates the small-batch linear calls that `step` makes: runs it until
/// every key it calls has been timed with every candidate (at most
/// [`MAX_CALIBRATION_RUNS`] times), its calls taking the candidates in
/// turn; then times whole steps with those per-call choices against each
/// candidate used for every call ([`STEP_ROUNDS`] interleaved rounds) and
/// keeps the assignment with the fastest median step; last, where damro's
/// own decode attention is offered, times whole steps with it against
/// libtorch's attention ([`native_decode_attention`] then answers the
/// choice). `step` must be repeatable and leave no trace (a decoding step
/// whose cache is rolled back afterwards): its results are computed with
/// kernels still on trial and must be discarded. Does nothing under
/// [`LinearPolicy::Fixed`].
///
/// # Errors
/// The first error of `step`, or an invalid `DAMRO_LINEAR_KERNEL`.
pub fn calibrate_kernels<E: From<Error>>(
    mut step: impl FnMut() -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    if let LinearPolicy::Fixed(_) = linear_policy()? {
        return Ok(());
    }
    let _guard = ScopeGuard::enter(Scope::Calibrating);
    let mut touched = HashSet::new();
    for _ in 0..MAX_CALIBRATION_RUNS {
        TOUCHED.with(|t| t.borrow_mut().clear());
        step()?;
        touched = TOUCHED.with(|t| std::mem::take(&mut *t.borrow_mut()));
        let st = lock();
        let done = touched
            .iter()
            .all(|k| matches!(st.slots.get(k), Some(Slot::Chosen(_))));
        drop(st);
        if done {
            return confirm_by_steps(&touched, &mut step);
        }
    }
    {
        let mut st = lock();
        for &key in &touched {
            if let Some(slot) = st.slots.get_mut(&key) {
                slot.record(key, None, 0.0, true);
            }
        }
    }
    confirm_by_steps(&touched, &mut step)
}

/// The median of `v` (infinite when empty).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::INFINITY)
}

/// The whole-step phase of [`calibrate_kernels`] over the keys one step
/// touched (all with the same number of rows).
fn confirm_by_steps<E: From<Error>>(
    touched: &HashSet<LinearKey>,
    step: &mut impl FnMut() -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let Some(first) = touched.iter().next().copied() else {
        return Ok(());
    };
    // Candidates every key can take (all keys of a step share their rows).
    let kernels: Vec<LinearKernel> = LinearKernel::candidates(first.rows)
        .into_iter()
        .filter(|&k| {
            touched
                .iter()
                .all(|key| LinearKernel::candidates(key.rows).contains(&k))
        })
        .collect();
    let assignments: Vec<Option<LinearKernel>> = std::iter::once(None)
        .chain(kernels.into_iter().map(Some))
        .collect();
    // The linear kernels are compared with the attention a step takes
    // by default, then the attentions with the chosen linear kernels.
    let offered = crate::attention::decode_attention_available(first.kind, first.device);
    let trials: Vec<Scope> = assignments
        .iter()
        .map(|&a| Scope::Confirming(a, offered))
        .collect();
    let seconds: Vec<(Option<LinearKernel>, f64)> = assignments
        .iter()
        .copied()
        .zip(time_steps(&trials, step)?)
        .collect();
    // Ties go to the per-call choices (listed first).
    let best = first_fastest(&seconds).flatten();
    let attention_seconds: Vec<(bool, f64)> = if offered {
        let trials = [
            Scope::Confirming(best, true),
            Scope::Confirming(best, false),
        ];
        [true, false]
            .into_iter()
            .zip(time_steps(&trials, step)?)
            .collect()
    } else {
        Vec::new()
    };
    // Ties go to damro's kernel (listed first).
    let native_attention = first_fastest(&attention_seconds);
    let mut st = lock();
    if let Some(kernel) = best {
        for key in touched {
            if let Some(Slot::Chosen(choice)) = st.slots.get_mut(key) {
                choice.kernel = kernel;
            }
        }
    }
    if let Some(native) = native_attention {
        st.attention.insert((first.rows, first.threads), native);
    }
    st.steps.push(StepChoice {
        rows: first.rows,
        threads: first.threads,
        kernel: best,
        seconds,
        native_attention,
        attention_seconds,
    });
    Ok(())
}

/// Median seconds of `step` under each scope, the scopes interleaved for
/// [`STEP_ROUNDS`] rounds (more of them, up to the most, while a round
/// takes less than [`STEP_SECONDS`]).
fn time_steps<E: From<Error>>(
    scopes: &[Scope],
    step: &mut impl FnMut() -> std::result::Result<(), E>,
) -> std::result::Result<Vec<f64>, E> {
    let mut times = vec![Vec::new(); scopes.len()];
    let mut rounds = STEP_ROUNDS.0;
    let mut round = 0;
    while round < rounds {
        for (i, &scope) in scopes.iter().enumerate() {
            let _guard = ScopeGuard::enter(scope);
            let start = Instant::now();
            step()?;
            times[i].push(start.elapsed().as_secs_f64());
        }
        if round == 0 {
            let one_round: f64 = times.iter().map(|t| t[0]).sum();
            let wanted = (STEP_SECONDS / one_round.max(1e-9)).ceil();
            rounds = (wanted.min(STEP_ROUNDS.1 as f64) as usize).max(STEP_ROUNDS.0);
        }
        round += 1;
    }
    Ok(times.iter().map(|t| median(t)).collect())
}

/// Whether a decoding step over `rows` rows of `kind` on `device` attends
/// with damro's own decode kernel ([`crate::attention::decode`]): where
/// that kernel is offered, as the whole-step confirmation of this row
/// count and thread count chose (see [`calibrate_kernels`]), and by
/// default before or without one (the kernel is deterministic, so fixed
/// policies stay bit-reproducible); during a confirmation, as its trial
/// says.
pub fn native_decode_attention(rows: i64, kind: Kind, device: Device) -> bool {
    if !crate::attention::decode_attention_available(kind, device) {
        return false;
    }
    match SCOPE.with(Cell::get) {
        Scope::Confirming(_, native) => native,
        _ => {
            let key = (rows, tch::get_num_threads());
            lock().attention.get(&key).copied().unwrap_or(true)
        }
    }
}

/// Every whole-step confirmation finished so far in this process, in
/// order.
pub fn step_choices() -> Vec<StepChoice> {
    lock().steps.clone()
}

/// Every calibration finished so far in this process, sorted by key.
pub fn linear_choices() -> Vec<LinearChoice> {
    let mut out: Vec<LinearChoice> = lock()
        .slots
        .values()
        .filter_map(|slot| match slot {
            Slot::Chosen(choice) => Some(choice.clone()),
            Slot::Exploring { .. } => None,
        })
        .collect();
    out.sort_by_key(|c| (c.key.out_dim, c.key.in_dim, c.key.rows, c.key.threads));
    out
}

/// `x Wᵀ + b` by the kernel this thread's scope and the policy pick for
/// `key`, timing the call while the key is being calibrated.
///
/// # Shapes
/// x `[rows, in]`, weight `[out, in]`, bias `[out]` → `[rows, out]`
pub(crate) fn small_batch_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    key: LinearKey,
) -> Result<Tensor> {
    let scope = SCOPE.with(Cell::get);
    if scope == Scope::Untuned {
        return Ok(x.f_linear(weight, bias)?);
    }
    let (kernel, trial) = {
        let mut st = lock();
        match (st.policy()?, scope) {
            (LinearPolicy::Fixed(k), _) => (k, None),
            (LinearPolicy::Calibrate, Scope::Confirming(Some(k), _)) => (k, None),
            (LinearPolicy::Calibrate, Scope::Calibrating) => {
                TOUCHED.with(|t| t.borrow_mut().insert(key));
                st.slots
                    .entry(key)
                    .or_insert_with(|| Slot::new(key.rows))
                    .next()
            }
            (LinearPolicy::Calibrate, _) => match st.slots.get(&key) {
                Some(Slot::Chosen(choice)) => (choice.kernel, None),
                _ => (LinearKernel::Linear, None),
            },
        }
    };
    let start = Instant::now();
    let y = kernel.apply(x, weight, bias)?;
    if let Some(i) = trial {
        let seconds = start.elapsed().as_secs_f64();
        if let Some(slot) = lock().slots.get_mut(&key) {
            slot.record(key, Some(i), seconds, false);
        }
    }
    Ok(y)
}

pub mod native;
#[cfg(test)]
mod tests;

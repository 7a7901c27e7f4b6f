//! The token choice: greedy, or seeded sampling from `softmax(scores)`.
//!
//! Both return the chosen ids as an int64 tensor on the scores' device; the
//! only host transfer of a decoding step is [`ids_to_vec`] on that tensor.

use crate::contrastive::check_logits;
use crate::{Error, Result};
use tch::{Kind, Tensor};

/// A handle on libtorch's default random generator, seeded explicitly.
///
/// tch 0.26 exposes no per-call generator, so sampling draws from libtorch's
/// process-wide default generators (the CPU one and one per CUDA device).
/// That is also what makes the draws match Python: after
/// `TorchRng::seeded(s)`, the same sequence of sampling calls returns what
/// `torch.manual_seed(s)` followed by `torch.multinomial(torch.softmax(x, -1), 1)`
/// returns in torch 2.13, on CPU and on CUDA.
///
/// Taking `&mut TorchRng` in [`sample`] makes the dependency on the seeded
/// state visible in signatures. The type is deliberately not `Clone`; still,
/// anything else that draws from libtorch's default generator in the same
/// process (another `TorchRng`, dropout, `Tensor::randn`) advances the same
/// state, exactly as in Python. The reference seeds once per run, not per
/// generation: keep one `TorchRng` for a whole evaluation to reproduce it.
#[derive(Debug)]
pub struct TorchRng {
    seed: u64,
}

impl TorchRng {
    /// Seeds libtorch's default generators (`torch.manual_seed(seed)`).
    pub fn seeded(seed: u64) -> Self {
        // Same bits as Python's uint64 seed.
        tch::manual_seed(seed as i64);
        Self { seed }
    }

    /// Re-seeds the generators, restarting the sequence.
    pub fn reseed(&mut self, seed: u64) {
        *self = Self::seeded(seed);
    }

    /// The seed last set through this handle.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// How a token is chosen from the (processed) scores.
#[derive(Debug)]
pub enum TokenChoice {
    /// The first index of the row's maximum.
    Greedy,
    /// A draw from `softmax(scores)`, seeded.
    Sample(TorchRng),
}

impl TokenChoice {
    /// Seeded sampling: seeds libtorch's generators now (see [`TorchRng`]).
    pub fn sample_seeded(seed: u64) -> Self {
        TokenChoice::Sample(TorchRng::seeded(seed))
    }

    /// Chooses one token per row with [`greedy`] or [`sample`].
    ///
    /// # Shapes
    /// `scores`: `[batch, vocab]`; result `[batch]` int64.
    ///
    /// # Errors
    /// As [`greedy`] and [`sample`].
    pub fn choose(&mut self, scores: &Tensor) -> Result<Tensor> {
        self.choose_with(scores, &mut FirstMax::default())
    }

    pub(crate) fn choose_with(&mut self, scores: &Tensor, first: &mut FirstMax) -> Result<Tensor> {
        match self {
            TokenChoice::Greedy => greedy_with(scores, first),
            TokenChoice::Sample(rng) => sample_with(scores, rng, first),
        }
    }
}

/// Greedy choice: per row, the lowest index among the maxima.
///
/// Returns what `scores.argmax(-1)` returns (libtorch documents that the
/// first maximal index wins) for every row without NaN, but computed with
/// vectorised kernels: libtorch's CPU `argmax` is a scalar loop that alone
/// costs as much as a softmax over 32000 logits, while `amax`, a float
/// comparison and a second `amax` over `hits * (vocab - index)` cost about
/// half of that once the `vocab..1` countdown exists ([`crate::Sampler`]
/// keeps it between steps; this function builds it per call). A row
/// containing NaN gives an unspecified id in `0..vocab` (`argmax` would
/// give the first NaN); DAMRO scores never hold NaN (see
/// [`crate::damro_scores`]).
///
/// # Shapes
/// `scores`: `[batch, vocab]`; result `[batch]` int64, on the scores' device.
///
/// # Errors
/// [`Error::Shape`] or [`Error::Kind`] for anything but 2-D floating scores.
pub fn greedy(scores: &Tensor) -> Result<Tensor> {
    greedy_with(scores, &mut FirstMax::default())
}

fn greedy_with(scores: &Tensor, first: &mut FirstMax) -> Result<Tensor> {
    check_logits("scores", scores)?;
    first.index(scores)
}

/// The first index of each row's maximum, keeping the `vocab..1`
/// countdown and the hit buffer of the last shape and device between calls.
#[derive(Debug, Default)]
pub(crate) struct FirstMax {
    countdown: Option<Tensor>,
    hits: Option<Tensor>,
}

/// Above 2^24 the f32 countdown is no longer exact; `argmax` takes over.
const EXACT_F32_INTEGERS: i64 = 1 << 24;

impl FirstMax {
    /// # Shapes
    /// `scores`: `[batch, vocab]` (checked by the caller); result `[batch]` int64.
    fn index(&mut self, scores: &Tensor) -> Result<Tensor> {
        let vocab = scores.size()[1];
        if vocab > EXACT_F32_INTEGERS {
            return Ok(scores.f_argmax(-1, false)?);
        }
        let device = scores.device();
        let countdown = match self.countdown.take() {
            Some(c) if c.size()[0] == vocab && c.device() == device => c,
            _ => Tensor::f_arange_start_step(vocab, 0, -1, (Kind::Float, device))?,
        };
        let hits = match self.hits.take() {
            Some(h) if h.size() == scores.size() && h.device() == device => h,
            _ => Tensor::f_empty(scores.size(), (Kind::Float, device))?,
        };
        let best = scores.f_amax(-1, true)?;
        // 1 where a row reaches its maximum, 0 elsewhere (f32 for any scores).
        let mut hits = scores.f_eq_tensor_out(&hits, &best)?;
        // `vocab - i` at the maxima: the largest belongs to the first one.
        let first = hits.f_mul_(&countdown)?.f_amax(-1, false)?;
        self.countdown = Some(countdown);
        self.hits = Some(hits);
        // A row without hits (NaN) would give `vocab`: clamp it into range.
        Ok(first
            .f_to_kind(Kind::Int64)?
            .f_rsub_scalar(vocab)?
            .f_clamp_max_(vocab - 1)?)
    }
}

/// Seeded sampling from `softmax(scores)`, one token per row.
///
/// This is `torch.multinomial(probs, 1)` written out the way libtorch 2.13
/// implements a single draw (its exponential-race fast path):
/// `argmax(probs / q)` with `q ~ Exp(1)` drawn by `exponential_` on a tensor
/// shaped like `probs` (the argmax taken as in [`greedy`]). The draws and
/// the result are therefore identical to `torch.multinomial`, on CPU and
/// CUDA, but without its three validity checks, each of which copies a
/// value to the host. Rows whose scores are NaN, or all `-inf`, are not
/// detected (they give an arbitrary id); the DAMRO cutoff always keeps the
/// full branch's best token, so with finite logits every row has a
/// positive probability somewhere.
///
/// Scores are used in their own type: f32 from [`crate::Contrast::scores`].
///
/// # Shapes
/// `scores`: `[batch, vocab]`; result `[batch]` int64, on the scores' device.
///
/// # Errors
/// [`Error::Shape`] or [`Error::Kind`] for anything but 2-D floating scores.
pub fn sample(scores: &Tensor, rng: &mut TorchRng) -> Result<Tensor> {
    sample_with(scores, rng, &mut FirstMax::default())
}

fn sample_with(scores: &Tensor, rng: &mut TorchRng, first: &mut FirstMax) -> Result<Tensor> {
    // The draw comes from the generator `rng` stands for.
    let _ = rng;
    check_logits("scores", scores)?;
    let probs = scores.f_softmax(-1, None::<Kind>)?;
    let race = probs.f_empty_like()?.f_exponential_(1.0)?;
    let mut ratio = probs;
    first.index(&ratio.f_div_(&race)?)
}

/// Copies chosen ids to the host: the one host transfer of a decoding step.
///
/// # Shapes
/// `ids`: `[batch]` integer.
///
/// # Errors
/// [`Error::Shape`] if `ids` is not 1-D, [`Error::Kind`] if not integer.
pub fn ids_to_vec(ids: &Tensor) -> Result<Vec<i64>> {
    if ids.dim() != 1 {
        return Err(Error::Shape {
            what: "ids",
            shape: ids.size(),
            expected: "[batch]".into(),
        });
    }
    match ids.kind() {
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => {}
        kind => {
            return Err(Error::Kind {
                what: "ids",
                kind,
                expected: "an integer type",
            });
        }
    }
    Ok(Vec::<i64>::try_from(ids)?)
}

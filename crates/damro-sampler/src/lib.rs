//! DAMRO's contrastive sampler: adaptive plausibility cutoff, contrastive
//! scores, optional logits processors and the token choice, over batched
//! `[batch, vocab]` logits on any libtorch device.
//!
//! DAMRO (Gong et al., EMNLP 2024, arXiv 2410.04514) decodes with two
//! branches: the full LVLM input (logits `l`) and the same prompt whose image
//! part is only the ViT's top-k outlier tokens (logits `l_o`). Each step:
//!
//! ```text
//! cutoff = ln(beta) + max(l)
//! s      = (1 + alpha) * l - alpha * l_o,   s[l < cutoff] = -inf
//! token  = argmax(s)  or  multinomial(softmax(s))
//! ```
//!
//! The pieces are small functions ([`plausibility_cutoff`],
//! [`contrastive_logits`], [`apply_cutoff`], the fused [`damro_scores`],
//! [`greedy`], [`sample`]) and [`Sampler`] strings them together. Plain
//! decoding goes through the same API with [`Contrast::Plain`].
//!
//! Like the reference, nothing else touches the scores by default: no
//! temperature, top-k, top-p, min-p or repetition penalty. Those are
//! available as opt-in [`LogitsProcessors`].
//!
//! Everything stays on the logits' device; the one host transfer per step
//! is [`ids_to_vec`] on the chosen ids. Half-precision logits are upcast to
//! f32 (see [`contrastive`] for why). Sampling reproduces Python torch 2.13's
//! `torch.manual_seed(seed)` + `torch.multinomial(torch.softmax(s, -1), 1)`
//! for the same sequence of calls ([`TorchRng`]).
//!
//! ```no_run
//! use damro_sampler::{Contrast, DamroPreset, Sampler, StepLogits, TokenChoice};
//! # fn main() -> damro_sampler::Result<()> {
//! let preset = DamroPreset::llava_1_5()?;
//! let mut sampler = Sampler::new(Contrast::Damro(preset.params), TokenChoice::sample_seeded(42));
//! # let (full, outlier) = (tch::Tensor::zeros([1, 32000], tch::kind::FLOAT_CPU), tch::Tensor::zeros([1, 32000], tch::kind::FLOAT_CPU));
//! let ids = sampler.step(StepLogits::damro(&full, &outlier))?; // [batch] int64, on device
//! let ids: Vec<i64> = damro_sampler::ids_to_vec(&ids)?;
//! # Ok(()) }
//! ```
//!
//! Neighbours: works on plain `tch` logits. `damro-core`'s generation loop
//! calls it once per step with the logits of the full and the contrast
//! branch (the outlier branch built from `damro-outlier`'s selection);
//! `damro-models` picks the authors' [`DamroPreset`] for each model, and
//! the `damro` facade re-exports them all.

#![warn(missing_docs)]

pub mod choice;
pub mod contrastive;
mod cpu_greedy;
mod error;
pub mod params;
pub mod processors;
mod sampler;

pub use choice::{TokenChoice, TorchRng, greedy, ids_to_vec, sample};
pub use contrastive::{
    Contrast, apply_cutoff, contrastive_logits, damro_scores, plausibility_cutoff,
};
pub use error::{Error, Result};
pub use params::{DamroParams, DamroPreset};
pub use processors::{LogitsProcessor, LogitsProcessors};
pub use sampler::{Sampler, StepLogits};

//! Contrast views: how the second branch's input is built, with one
//! sampler for all of them.
//!
//! Training-free contrastive decoders differ only in the second branch:
//!
//! | [`Mode`] | second branch | paper |
//! |---|---|---|
//! | [`Mode::Damro`] | the image as its ViT's top-k `[CLS]`-attention outlier tokens | DAMRO (Gong et al., EMNLP 2024) |
//! | [`Mode::Vcd`] | the pixel values noised by a diffusion forward step ([`VcdNoise`]) | VCD (Leng et al., CVPR 2024) |
//! | [`Mode::NoImage`] | the same prompt without image tokens | M3ID / PAI-style guidance |
//! | [`Mode::CutoffOnly`] | none: alpha = 0, only the `ln(beta) + max l` cutoff | ablation |
//! | [`Mode::Custom`] | whatever a [`ContrastView`] asks the model for | yours |
//!
//! Every view is scored the same way: `s = (1 + alpha) l - alpha l_2`,
//! tokens with `l < ln(beta) + max l` removed, then greedy or sampling.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use damro_sampler::{Contrast, DamroParams, DamroPreset};
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// DAMRO's settings: the contrast parameters and the outlier count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DamroSettings {
    /// `alpha` and `beta`, validated.
    pub params: DamroParams,
    /// How many outlier tokens make the outlier branch's image part.
    pub outlier_k: usize,
}

impl DamroSettings {
    /// Validated settings.
    ///
    /// # Errors
    /// [`Error::Invalid`] for `outlier_k == 0`; the sampler's error for
    /// alpha or beta out of range.
    pub fn new(alpha: f64, beta: f64, outlier_k: usize) -> Result<Self> {
        if outlier_k == 0 {
            return Err(Error::invalid("outlier k", "must be at least 1"));
        }
        Ok(Self {
            params: DamroParams::new(alpha, beta)?,
            outlier_k,
        })
    }
}

impl From<DamroPreset> for DamroSettings {
    fn from(preset: DamroPreset) -> Self {
        Self {
            params: preset.params,
            outlier_k: preset.outlier_k,
        }
    }
}

/// A change of the preprocessed pixel values that makes a second branch
/// (VCD's noise, or a view of your own: blur, masking, ...). The model
/// runs its full image path on the result.
pub trait PixelTransform: fmt::Debug + Send + Sync {
    /// The transformed pixel values, same shape, dtype and device.
    ///
    /// # Shapes
    /// the model's pixel layout (e.g. `[1, 3, H, W]`) → the same
    ///
    /// # Errors
    /// Whatever the transform cannot do with these pixels.
    fn transform(&self, pixels: &Tensor) -> Result<Tensor>;
}

/// VCD's diffusion noise: `x_t = sqrt(abar_t) x + sqrt(1 - abar_t) n`,
/// `n ~ N(0, 1)`, with 1000 steps of
/// `beta = sigmoid(linspace(-6, 6, 1000)) (5e-3 - 1e-5) + 1e-5` and
/// `abar = cumprod(1 - beta)`.
///
/// The noise is drawn in f32 on the CPU right after
/// `torch.manual_seed(seed)` (`randn_like` of the f32 CPU pixels), so a
/// run repeats and equals Python torch's draws, on any device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcdNoise {
    /// The diffusion step `t` (0..1000; VCD's default 500).
    pub step: usize,
    /// Seed of the noise.
    pub seed: u64,
}

/// Number of steps of VCD's noise schedule.
pub const VCD_NOISE_STEPS: usize = 1000;

impl VcdNoise {
    /// VCD's default step 500 with `seed`.
    pub fn new(step: usize, seed: u64) -> Result<Self> {
        if step >= VCD_NOISE_STEPS {
            return Err(Error::invalid(
                "noise step",
                format!("{step} is outside 0..{VCD_NOISE_STEPS}"),
            ));
        }
        Ok(Self { step, seed })
    }

    /// `(sqrt(abar_t), sqrt(1 - abar_t))` in f32, computed as the
    /// reference does (f32 tensors, cumulative product).
    pub fn coefficients(&self) -> Result<(f64, f64)> {
        let opts = (Kind::Float, Device::Cpu);
        let betas = Tensor::f_linspace(-6.0, 6.0, VCD_NOISE_STEPS as i64, opts)?
            .f_sigmoid()?
            .f_mul_scalar(0.5e-2 - 1e-5)?
            .f_add_scalar(1e-5)?;
        let abar = betas
            .f_neg()?
            .f_add_scalar(1.0)?
            .f_cumprod(0, Kind::Float)?;
        let t = self.step as i64;
        let keep = abar.f_sqrt()?.f_double_value(&[t])?;
        let noise = abar
            .f_neg()?
            .f_add_scalar(1.0)?
            .f_sqrt()?
            .f_double_value(&[t])?;
        Ok((keep, noise))
    }
}

impl PixelTransform for VcdNoise {
    fn transform(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = pixels.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
        let (keep, noise_scale) = self.coefficients()?;
        tch::manual_seed(self.seed as i64);
        let noise = x.f_randn_like()?;
        let scale = |v: f64| Tensor::f_scalar_tensor(v, (Kind::Float, Device::Cpu));
        let noised = x
            .f_mul(&scale(keep)?)?
            .f_add(&noise.f_mul(&scale(noise_scale)?)?)?;
        Ok(noised.f_to_device_(pixels.device(), pixels.kind(), false, false)?)
    }
}

/// VCD's settings: the contrast parameters and the noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VcdSettings {
    /// `alpha` and `beta` (VCD's scripts: 1 and 0.1).
    pub params: DamroParams,
    /// The noise of the second branch's pixels.
    pub noise: VcdNoise,
}

/// A contrast view defined outside this crate (see [`Mode::Custom`]).
pub trait ContrastView: fmt::Debug + Send + Sync {
    /// A short name, for logs and answer files.
    fn name(&self) -> &str;

    /// What the model must build for the second branch: usually
    /// [`SecondImage::Pixels`] with a transform of your own (works with
    /// every model), or [`SecondImage::Custom`] for a view only your model
    /// understands (it downcasts with [`ContrastView::as_any`]).
    fn second_image(&self) -> SecondImage<'_>;

    /// The view as `Any`, so a model can recognise its own view types.
    fn as_any(&self) -> &dyn Any;
}

/// A custom view with its contrast parameters.
#[derive(Debug, Clone)]
pub struct CustomContrast {
    /// `alpha` and `beta`.
    pub params: DamroParams,
    /// The view.
    pub view: Arc<dyn ContrastView>,
}

/// Plain decoding, or contrastive decoding with one of the views.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Mode {
    /// The full branch alone.
    Plain,
    /// DAMRO: the second branch sees only the top-k outlier tokens.
    Damro(DamroSettings),
    /// VCD: the second branch sees diffusion-noised pixels.
    Vcd(VcdSettings),
    /// The second branch is the prompt without image tokens.
    NoImage(DamroParams),
    /// No second branch: only the plausibility cutoff of these params
    /// (their alpha is ignored, i.e. 0).
    CutoffOnly(DamroParams),
    /// A view of your own.
    Custom(CustomContrast),
}

/// What the generation loop asks a model to build as the second branch's
/// image input (see [`crate::DamroDecoder::encode_image`]).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum SecondImage<'a> {
    /// No second branch.
    None,
    /// The visual tokens of the top-`k` `[CLS]`-attention outlier patches
    /// (DAMRO).
    Outliers {
        /// How many.
        k: usize,
    },
    /// The model's full image path on transformed pixel values (VCD).
    Pixels(&'a dyn PixelTransform),
    /// No image at all: the second branch is the prompt's text alone.
    NoImage,
    /// A model-specific view.
    Custom(&'a dyn ContrastView),
}

impl Mode {
    /// The sampler's contrast for this mode.
    pub fn contrast(&self) -> Contrast {
        match self {
            Mode::Plain => Contrast::Plain,
            Mode::Damro(s) => Contrast::Damro(s.params),
            Mode::Vcd(s) => Contrast::Damro(s.params),
            Mode::NoImage(p) => Contrast::Damro(*p),
            Mode::CutoffOnly(p) => Contrast::CutoffOnly(*p),
            Mode::Custom(c) => Contrast::Damro(c.params),
        }
    }

    /// What the model must build as the second branch.
    pub fn second_image(&self) -> SecondImage<'_> {
        match self {
            Mode::Plain | Mode::CutoffOnly(_) => SecondImage::None,
            Mode::Damro(s) => SecondImage::Outliers { k: s.outlier_k },
            Mode::Vcd(s) => SecondImage::Pixels(&s.noise),
            Mode::NoImage(_) => SecondImage::NoImage,
            Mode::Custom(c) => c.view.second_image(),
        }
    }

    /// Whether a second branch runs.
    pub fn has_second_branch(&self) -> bool {
        !matches!(self.second_image(), SecondImage::None)
    }

    /// The view's name: `plain`, `damro`, `vcd`, `no-image`,
    /// `cutoff-only`, or a custom view's own.
    pub fn name(&self) -> &str {
        match self {
            Mode::Plain => "plain",
            Mode::Damro(_) => "damro",
            Mode::Vcd(_) => "vcd",
            Mode::NoImage(_) => "no-image",
            Mode::CutoffOnly(_) => "cutoff-only",
            Mode::Custom(c) => c.view.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcd_schedule_matches_the_closed_form() {
        // abar_t = prod_{s <= t} (1 - beta_s); at t = 0 it is 1 - beta_0
        // with beta_0 = sigmoid(-6) * (5e-3 - 1e-5) + 1e-5.
        let beta0 = 1.0 / (1.0 + 6f64.exp()) * (5e-3 - 1e-5) + 1e-5;
        let (keep, noise) = VcdNoise::new(0, 0).unwrap().coefficients().unwrap();
        assert!((keep - (1.0 - beta0).sqrt()).abs() < 1e-6, "{keep}");
        // f32 loses digits in `1 - abar` near 1.
        assert!((noise - beta0.sqrt()).abs() < 2e-5, "{noise}");
        // Later steps keep less of the image.
        let (k500, n500) = VcdNoise::new(500, 0).unwrap().coefficients().unwrap();
        assert!(k500 < keep && n500 > noise);
        assert!((k500 * k500 + n500 * n500 - 1.0).abs() < 1e-5);
        assert!(VcdNoise::new(1000, 0).is_err());
    }

    #[test]
    fn modes_map_to_their_contrast_and_second_branch() {
        let p = DamroParams::new(1.0, 0.1).unwrap();
        assert!(matches!(Mode::Plain.contrast(), Contrast::Plain));
        assert!(!Mode::Plain.has_second_branch());
        assert!(matches!(
            Mode::CutoffOnly(p).contrast(),
            Contrast::CutoffOnly(_)
        ));
        assert!(!Mode::CutoffOnly(p).has_second_branch());
        assert!(matches!(
            Mode::NoImage(p).second_image(),
            SecondImage::NoImage
        ));
        let d = Mode::Damro(DamroSettings::new(2.0, 0.1, 10).unwrap());
        assert!(matches!(d.second_image(), SecondImage::Outliers { k: 10 }));
        assert_eq!(d.name(), "damro");
    }
}

//! An LVLM that damro-rs has never seen, getting DAMRO (and VCD, no-image,
//! cutoff-only) decoding from outside the workspace through the public API
//! only: a patch-token vision side with a `[CLS]` token, and a GPT-2-style
//! decoder ([`gpt::TinyGpt`]) that is not damro's LLaMA.
//!
//! The prompt is `<image>` followed by the question's bytes (a byte-level
//! vocabulary with an image placeholder and an EOS id). Weights are random:
//! the package exists to prove the extension point, and its test checks the
//! generation loop against a naive implementation written out by hand.

pub mod gpt;

use damro::loading::splice_at;
use damro::outlier::{OutlierOrder, TokenIndexing, outlier_tokens};
use damro::{
    Branch, Branches, ContrastTokens, DamroDecoder, Error, ImageSource, Request, Result,
    SecondImage, VisualTokens,
};
use tch::{Device, Kind, Tensor};

use gpt::{GptConfig, TinyGpt};

/// The placeholder id of the image.
pub const IMAGE_ID: i64 = 256;
/// The end-of-sequence id.
pub const EOS_ID: i64 = 257;

/// A patch-token vision side: non-overlapping patches projected to tokens,
/// a `[CLS]` token whose single-head attention over the patches ranks them,
/// and a projection into the decoder's embedding space.
#[derive(Debug)]
pub struct PatchVision {
    patch: i64,
    cls: Tensor,
    embed: Tensor,
    q: Tensor,
    k: Tensor,
    to_lm: Tensor,
}

impl PatchVision {
    fn random(patch: i64, width: i64, lm_hidden: i64, opts: (Kind, Device)) -> Self {
        let inp = 3 * patch * patch;
        Self {
            patch,
            cls: Tensor::randn([1, 1, width], opts),
            embed: Tensor::randn([width, inp], opts) * (inp as f64).powf(-0.5),
            q: Tensor::randn([width, width], opts) * (width as f64).powf(-0.5),
            k: Tensor::randn([width, width], opts) * (width as f64).powf(-0.5),
            to_lm: Tensor::randn([lm_hidden, width], opts) * (width as f64).powf(-0.5),
        }
    }

    /// Patch features and the `[CLS]` attention over the patches.
    ///
    /// # Shapes
    /// pixels `[1, 3, H, W]` → features `[1, P, width]`, scores `[1, P]`
    pub fn encode(&self, pixels: &Tensor) -> Result<(Tensor, Tensor)> {
        let p = self.patch;
        let patches = pixels
            .f_unfold(2, p, p)?
            .f_unfold(3, p, p)?
            .f_permute([0, 2, 3, 1, 4, 5])?
            .f_flatten(1, 2)?
            .f_flatten(2, 4)?;
        let features = patches.f_matmul(&self.embed.f_tr()?)?;
        let tokens = Tensor::f_cat(&[&self.cls, &features], 1)?;
        let q = self.cls.f_matmul(&self.q.f_tr()?)?;
        let k = tokens.f_matmul(&self.k.f_tr()?)?;
        let width = self.cls.size()[2] as f64;
        let scores = q
            .f_matmul(&k.f_transpose(1, 2)?)?
            .f_div_scalar(width.sqrt())?
            .f_softmax(-1, Kind::Float)?;
        let patch_scores = scores
            .f_squeeze_dim(1)?
            .f_narrow(1, 1, features.size()[1])?;
        Ok((features, patch_scores))
    }

    /// Into the decoder's embedding space.
    ///
    /// # Shapes
    /// `[1, n, width]` → `[1, n, lm_hidden]`
    pub fn project(&self, features: &Tensor) -> Result<Tensor> {
        Ok(features.f_matmul(&self.to_lm.f_tr()?)?)
    }
}

/// The outside LVLM.
#[derive(Debug)]
pub struct ToyLvlm {
    /// The vision side.
    pub vision: PatchVision,
    /// The decoder.
    pub lm: TinyGpt,
}

impl ToyLvlm {
    /// Random weights from `seed` (patches of 4 pixels, 16x16 images give
    /// 16 patch tokens).
    pub fn random(seed: i64, kind: Kind, device: Device) -> Self {
        let config = GptConfig {
            vocab: 258,
            hidden: 32,
            heads: 4,
            layers: 2,
            max_positions: 128,
        };
        let lm = TinyGpt::random(config, seed, kind, device);
        let vision = PatchVision::random(4, 24, config.hidden, (kind, device));
        Self { vision, lm }
    }

    /// `<image>` then the question's bytes.
    pub fn prompt_ids(question: &str) -> Vec<i64> {
        std::iter::once(IMAGE_ID)
            .chain(question.bytes().map(i64::from))
            .collect()
    }

    fn pixels(&self, request: &Request) -> Result<Tensor> {
        match &request.image {
            ImageSource::Pixels(t) if t.dim() == 4 => Ok(t.f_to_kind(self.lm_kind())?),
            _ => Err(Error::model(
                "toy LVLM",
                "it takes preprocessed pixels [1, 3, H, W] (ImageSource::Pixels)",
            )),
        }
    }

    fn lm_kind(&self) -> Kind {
        self.vision.cls.kind()
    }
}

impl DamroDecoder for ToyLvlm {
    type Lm = TinyGpt;

    fn language_model(&self) -> &TinyGpt {
        &self.lm
    }

    fn encode_image(&self, request: &Request, second: SecondImage<'_>) -> Result<VisualTokens> {
        let pixels = self.pixels(request)?;
        let (features, scores) = self.vision.encode(&pixels)?;
        let mut outlier_indices = Vec::new();
        let contrast = match second {
            SecondImage::None => ContrastTokens::None,
            SecondImage::Outliers { k } => {
                let (picked, indices) = outlier_tokens(
                    &features,
                    &scores,
                    k,
                    OutlierOrder::ByScore,
                    TokenIndexing::PatchFeatures,
                )?;
                outlier_indices = indices;
                ContrastTokens::Tokens(self.vision.project(&picked)?)
            }
            SecondImage::Pixels(transform) => {
                let (noised, _) = self.vision.encode(&transform.transform(&pixels)?)?;
                ContrastTokens::Tokens(self.vision.project(&noised)?)
            }
            SecondImage::NoImage => ContrastTokens::NoImage,
            other => return Err(Error::model("toy LVLM", format!("no view {other:?}"))),
        };
        let full = self.vision.project(&features)?;
        Ok(VisualTokens {
            full,
            contrast,
            outlier_indices,
        })
    }

    fn branch_embeds(&self, request: &Request, visual: &VisualTokens) -> Result<Branches<()>> {
        let ids = Self::prompt_ids(&request.question); // `<image>` + the question's bytes
        let ids_t = Tensor::f_from_slice(&ids)?
            .f_to_device(self.device())?
            .f_unsqueeze(0)?;
        let text = self.lm.embed(&ids_t)?;
        let contrast = match &visual.contrast {
            ContrastTokens::Tokens(t) => Some(splice_at(&text, 0, Some(t))?),
            ContrastTokens::NoImage => Some(splice_at(&text, 0, None)?),
            _ => None,
        };
        Ok(Branches {
            full: Branch::new(splice_at(&text, 0, Some(&visual.full))?),
            contrast: contrast.map(Branch::new),
            prompt_ids: ids,
        })
    }

    fn stop_ids(&self) -> Vec<i64> {
        vec![EOS_ID]
    }

    fn decode(&self, new_ids: &[i64]) -> Result<String> {
        let bytes: Vec<u8> = new_ids
            .iter()
            .filter_map(|&i| u8::try_from(i).ok())
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

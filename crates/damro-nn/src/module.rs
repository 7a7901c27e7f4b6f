//! The fallible [`Module`] trait and the layers shared by every model.
//!
//! Layers are plain structs whose fields carry the checkpoint's names; each
//! has a `load` that takes its weights from a [`Weights`] position and
//! checks their shapes.

use serde::Deserialize;
use tch::{Kind, Tensor};

pub use crate::linear_kernel::SMALL_BATCH_ROWS;
use crate::linear_kernel::{LinearKey, small_batch_linear};
use crate::{Result, Weights};

/// A layer with one tensor in and one tensor out. Unlike
/// `tch::nn::Module`, bad input shapes become errors, not panics.
pub trait Module {
    /// Applies the layer.
    fn forward(&self, xs: &Tensor) -> Result<Tensor>;
}

/// `y = x Wᵀ + b` (`torch.nn.Linear`).
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`, when the layer has one.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` `[out, in]` and, when `bias`, `bias` `[out]`.
    pub fn load(w: &Weights, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        let weight = w.get("weight", &[out_dim, in_dim])?;
        let bias = if bias {
            Some(w.get("bias", &[out_dim])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }
}

impl Linear {
    /// The calibration key of a call on `rows` rows, when such a call is
    /// tuned (f32 weight on the CPU, 1 to [`SMALL_BATCH_ROWS`] rows; see
    /// [`crate::linear_kernel`]).
    pub fn small_batch_key(&self, rows: i64) -> Option<LinearKey> {
        let [out_dim, in_dim] = self.weight.size()[..] else {
            return None;
        };
        let tuned = self.weight.device() == tch::Device::Cpu
            && self.weight.kind() == Kind::Float
            && (1..=SMALL_BATCH_ROWS).contains(&rows);
        tuned.then(|| LinearKey {
            out_dim,
            in_dim,
            rows,
            bias: self.bias.is_some(),
            kind: Kind::Float,
            device: tch::Device::Cpu,
            threads: tch::get_num_threads(),
        })
    }
}

impl Module for Linear {
    /// `linear`, except for the few rows of a decoding step inside
    /// [`crate::linear_kernel::with_tuned_kernels`]: f32 on the CPU with 1
    /// to [`SMALL_BATCH_ROWS`] rows then takes the kernel calibrated for
    /// this machine.
    ///
    /// # Shapes
    /// `[.., in]` → `[.., out]`
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let size = xs.size();
        let rows: i64 = size.iter().rev().skip(1).product();
        let key = self.small_batch_key(rows).filter(|k| {
            xs.device() == tch::Device::Cpu
                && xs.kind() == Kind::Float
                && size.last() == Some(&k.in_dim)
        });
        let Some(key) = key else {
            return Ok(xs.f_linear(&self.weight, self.bias.as_ref())?);
        };
        let x = xs.f_reshape([rows, key.in_dim])?;
        let y = small_batch_linear(&x, &self.weight, self.bias.as_ref(), key)?;
        let mut shape = size;
        if let Some(last) = shape.last_mut() {
            *last = key.out_dim;
        }
        Ok(y.f_reshape(&shape)?)
    }
}

/// `torch.nn.LayerNorm` over the last dimension, with weight and bias.
#[derive(Debug)]
pub struct LayerNorm {
    /// Scale, `[dim]`.
    pub weight: Tensor,
    /// Shift, `[dim]`.
    pub bias: Tensor,
    /// Added to the variance before the square root (a config's
    /// `layer_norm_eps`).
    pub eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias`, both `[dim]`.
    pub fn load(w: &Weights, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get("weight", &[dim])?,
            bias: w.get("bias", &[dim])?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dim = self.weight.size();
        Ok(xs.f_layer_norm(&dim, Some(&self.weight), Some(&self.bias), self.eps, true)?)
    }
}

/// LLaMA's RMS norm: normalise in f32, cast back, then scale
/// (`weight * (x * rsqrt(mean(x²) + eps)).to(dtype)`, as HF computes it).
#[derive(Debug)]
pub struct RmsNorm {
    /// Scale, `[dim]`.
    pub weight: Tensor,
    /// Added to the mean square before the square root (`rms_norm_eps`).
    pub eps: f64,
}

impl RmsNorm {
    /// Loads `weight` `[dim]`.
    pub fn load(w: &Weights, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get("weight", &[dim])?,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let kind = xs.kind();
        let x = xs.f_to_kind(Kind::Float)?;
        let variance = x
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, Kind::Float)?;
        let normed = x.f_mul(&variance.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        Ok(self.weight.f_mul(&normed.f_to_kind(kind)?)?)
    }
}

/// A lookup table of `[vocab, dim]` rows.
#[derive(Debug)]
pub struct Embedding {
    /// The table, `[vocab, dim]`.
    pub weight: Tensor,
}

impl Embedding {
    /// Loads `weight` `[vocab, dim]`.
    pub fn load(w: &Weights, vocab: i64, dim: i64) -> Result<Self> {
        Ok(Self {
            weight: w.get("weight", &[vocab, dim])?,
        })
    }

    /// Number of rows.
    pub fn vocab_size(&self) -> i64 {
        self.weight.size()[0]
    }
}

impl Module for Embedding {
    /// # Shapes
    /// ids `[..]` (int64) → `[.., dim]`
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_embedding(&self.weight, ids, -1, false, false)?)
    }
}

/// Activation functions, named as in HF configs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (CLIP).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact (erf) GELU.
    #[serde(rename = "gelu")]
    Gelu,
    /// tanh-approximated GELU.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", rename = "gelu_tanh")]
    GeluTanh,
    /// `x * sigmoid(x)` (LLaMA).
    #[serde(alias = "swish", rename = "silu")]
    Silu,
    /// `max(x, 0)`.
    #[serde(rename = "relu")]
    Relu,
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::QuickGelu => xs.f_mul(&xs.f_mul_scalar(1.702)?.f_sigmoid()?)?,
            Activation::Gelu => xs.f_gelu("none")?,
            Activation::GeluTanh => xs.f_gelu("tanh")?,
            Activation::Silu => xs.f_silu()?,
            Activation::Relu => xs.f_relu()?,
        })
    }
}

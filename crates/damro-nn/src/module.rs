//! The fallible [`Module`] trait and the layers shared by every model.
//!
//! Layers are plain structs whose fields carry the checkpoint's names; each
//! has a `load` that takes its weights from a [`Weights`] position and
//! checks their shapes.

use serde::Deserialize;
use tch::{Kind, Tensor};

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
    pub weight: Tensor,
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

/// Up to this many input rows, [`Linear`] computes `(W xᵀ)ᵀ` instead of
/// `x Wᵀ`.
///
/// Decoding steps feed a handful of rows (one per branch and request). For
/// so few rows libtorch's `linear` (`x Wᵀ`, a GEMM with a transposed, tall
/// right operand) is slow on CPU BLAS: with MKL on 2 cores, 2 rows cost
/// 2x one row for a 2048x768 weight and 2x for a 32000x768 head, while
/// `W xᵀ` costs about 1.4x and 0.7x. Batching DAMRO's two branches into one
/// forward only pays off with this path. One row keeps `linear` (a GEMV);
/// so do other dtypes and devices (CPU half-precision GEMMs accumulate
/// differently, and GPU BLAS has no such gap).
pub const SMALL_BATCH_ROWS: i64 = 16;

impl Module for Linear {
    /// # Shapes
    /// `[.., in]` → `[.., out]`
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let size = xs.size();
        let rows: i64 = size.iter().rev().skip(1).product();
        let (out_dim, in_dim) = match self.weight.size()[..] {
            [o, i] => (o, i),
            _ => return Ok(xs.f_linear(&self.weight, self.bias.as_ref())?),
        };
        let cpu_f32 = xs.device() == tch::Device::Cpu && xs.kind() == Kind::Float;
        if !cpu_f32 || !(2..=SMALL_BATCH_ROWS).contains(&rows) || size.last() != Some(&in_dim) {
            return Ok(xs.f_linear(&self.weight, self.bias.as_ref())?);
        }
        let x = xs.f_reshape([rows, in_dim])?;
        let mut y = self
            .weight
            .f_matmul(&x.f_transpose(0, 1)?)?
            .f_transpose(0, 1)?;
        if let Some(bias) = &self.bias {
            y = y.f_add(bias)?;
        }
        let mut shape = size;
        if let Some(last) = shape.last_mut() {
            *last = out_dim;
        }
        Ok(y.f_reshape(&shape)?)
    }
}

/// `torch.nn.LayerNorm` over the last dimension, with weight and bias.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
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
    pub weight: Tensor,
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

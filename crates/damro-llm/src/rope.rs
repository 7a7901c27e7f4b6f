//! Rotary position embeddings (RoPE) as LLaMA uses them.
//!
//! Follows transformers 5.23's `LlamaRotaryEmbedding` and
//! `modeling_rope_utils.py` op for op, so f32 results match bit for bit:
//! inverse frequencies `1 / theta^(2i/d)` in f32, scaled per
//! [`RopeScaling`]; angles `position * inv_freq` in f32; `cos`/`sin` of
//! `cat(angles, angles)` cast to the activations' dtype; and the
//! "rotate half" convention (`x * cos + rotate_half(x) * sin`).
//!
//! Dynamic NTK scaling recomputes the base from the longest sequence in
//! the batch (`max position + 1`) once it exceeds `max_position_embeddings`.
//! transformers keeps the grown frequencies as model state; here they are
//! a function of the current lengths, which is the same within one
//! generation (lengths only grow).

use tch::{Device, Kind, Tensor};

use crate::config::{LlamaConfig, RopeScaling};
use crate::{Error, Result};

/// Precomputed inverse frequencies and the scaling rule.
#[derive(Debug)]
pub struct RotaryEmbedding {
    /// `[head_dim / 2]`, f32.
    inv_freq: Tensor,
    theta: f64,
    head_dim: i64,
    scaling: RopeScaling,
    max_position_embeddings: i64,
}

/// Inverse frequencies `1 / base^(2i/dim)`, f32 `[dim / 2]`, computed as
/// transformers does (`base ** (arange(0, dim, 2) / dim)`, then the
/// reciprocal).
fn default_inv_freq(base: f64, dim: i64, device: Device) -> Result<Tensor> {
    let exponent =
        Tensor::f_arange_start_step(0, dim, 2, (Kind::Float, device))?.f_div_scalar(dim as f64)?;
    Ok(Tensor::f_pow_scalar(base, &exponent)?.f_reciprocal()?)
}

impl RotaryEmbedding {
    /// Builds the inverse frequencies of `cfg` on `device`.
    pub fn new(cfg: &LlamaConfig, device: Device) -> Result<Self> {
        let dim = cfg.head_dim;
        let base = default_inv_freq(cfg.rope.theta, dim, device)?;
        let inv_freq = match cfg.rope.scaling {
            RopeScaling::None | RopeScaling::Dynamic { .. } => base,
            RopeScaling::Linear { factor } => base.f_div_scalar(factor)?,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old_len = original_max_position_embeddings as f64;
                let low_freq_wavelen = old_len / low_freq_factor;
                let high_freq_wavelen = old_len / high_freq_factor;
                let wavelen = base
                    .f_reciprocal()?
                    .f_mul_scalar(2.0 * std::f64::consts::PI)?;
                let scaled = base
                    .f_div_scalar(factor)?
                    .f_where_self(&wavelen.f_gt(low_freq_wavelen)?, &base)?;
                let smooth = wavelen
                    .f_reciprocal()?
                    .f_mul_scalar(old_len)?
                    .f_sub_scalar(low_freq_factor)?
                    .f_div_scalar(high_freq_factor - low_freq_factor)?;
                let smoothed = smooth
                    .f_neg()?
                    .f_add_scalar(1.0)?
                    .f_mul(&scaled)?
                    .f_div_scalar(factor)?
                    .f_add(&smooth.f_mul(&scaled)?)?;
                let is_medium = wavelen
                    .f_lt(high_freq_wavelen)?
                    .f_logical_not()?
                    .f_logical_and(&wavelen.f_gt(low_freq_wavelen)?.f_logical_not()?)?;
                smoothed.f_where_self(&is_medium, &scaled)?
            }
        };
        Ok(Self {
            inv_freq,
            theta: cfg.rope.theta,
            head_dim: dim,
            scaling: cfg.rope.scaling,
            max_position_embeddings: cfg.max_position_embeddings,
        })
    }

    /// The inverse frequencies for a batch whose longest row is `seq_len`
    /// tokens long (only dynamic scaling depends on it).
    fn inv_freq_for(&self, seq_len: i64) -> Result<Tensor> {
        match self.scaling {
            RopeScaling::Dynamic { factor } if seq_len > self.max_position_embeddings => {
                let dim = self.head_dim as f64;
                let grown = (factor * seq_len as f64 / self.max_position_embeddings as f64)
                    - (factor - 1.0);
                let base = self.theta * grown.powf(dim / (dim - 2.0));
                default_inv_freq(base, self.head_dim, self.inv_freq.device())
            }
            _ => Ok(self.inv_freq.shallow_clone()),
        }
    }

    /// `cos` and `sin` for the given positions, in `kind`.
    ///
    /// `seq_len` is the longest row's length after this step (used by
    /// dynamic scaling only).
    ///
    /// # Shapes
    /// positions `[batch, seq]` (int64) → cos, sin `[batch, seq, head_dim]`
    pub fn cos_sin(
        &self,
        positions: &Tensor,
        seq_len: i64,
        kind: Kind,
    ) -> Result<(Tensor, Tensor)> {
        let inv_freq = self.inv_freq_for(seq_len)?;
        let freqs = positions
            .f_unsqueeze(-1)?
            .f_to_kind(Kind::Float)?
            .f_mul(&inv_freq)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
    }
}

/// `cat(-x2, x1)` of the two halves of the last dimension.
fn rotate_half(xs: &Tensor) -> Result<Tensor> {
    let half = xs.size().last().copied().unwrap_or(0) / 2;
    let x1 = xs.f_narrow(-1, 0, half)?;
    let x2 = xs.f_narrow(-1, half, half)?;
    Ok(Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?)
}

/// Rotates queries or keys by their positions.
///
/// # Shapes
/// xs `[batch, heads, seq, head_dim]`, cos and sin `[batch, seq, head_dim]`
/// → `[batch, heads, seq, head_dim]`
pub fn apply_rotary(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (xs_size, cos_size) = (xs.size(), cos.size());
    if xs_size.len() != 4 || cos_size.len() != 3 || xs_size[3] != cos_size[2] {
        return Err(Error::shape(
            "apply_rotary input",
            format!("[batch, heads, seq, d] with cos [batch, seq, d], cos is {cos_size:?}"),
            xs_size,
        ));
    }
    let cos = cos.f_unsqueeze(1)?;
    let sin = sin.f_unsqueeze(1)?;
    Ok(xs.f_mul(&cos)?.f_add(&rotate_half(xs)?.f_mul(&sin)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfigJson;

    fn cfg(json: serde_json::Value) -> LlamaConfig {
        LlamaConfigJson::from_value(json)
            .unwrap()
            .into_config()
            .unwrap()
    }

    #[test]
    fn default_frequencies_and_rotation() {
        let c = cfg(serde_json::json!({"hidden_size": 16, "num_attention_heads": 2}));
        let rope = RotaryEmbedding::new(&c, Device::Cpu).unwrap();
        let inv: Vec<f32> = Vec::try_from(&rope.inv_freq).unwrap();
        for (i, f) in inv.iter().enumerate() {
            let expected = 1.0 / 10_000f64.powf(2.0 * i as f64 / 8.0);
            assert!((*f as f64 - expected).abs() < 1e-6 * expected.max(1e-3));
        }
        // Position 0 is the identity; rotation keeps norms.
        let xs = Tensor::randn([1, 2, 3, 8], (Kind::Float, Device::Cpu));
        let pos = Tensor::from_slice(&[0i64, 1, 7]).view([1, 3]);
        let (cos, sin) = rope.cos_sin(&pos, 8, Kind::Float).unwrap();
        let ys = apply_rotary(&xs, &cos, &sin).unwrap();
        let diff0 = (ys.narrow(2, 0, 1) - xs.narrow(2, 0, 1)).abs().max();
        assert!(f64::try_from(diff0).unwrap() < 1e-7);
        let norms = |t: &Tensor| t.square().sum_dim_intlist(-1, false, Kind::Float);
        let dn = (norms(&ys) - norms(&xs)).abs().max();
        assert!(f64::try_from(dn).unwrap() < 1e-4);
    }

    #[test]
    fn relative_positions_only() {
        // <R(p) q, R(p + k) x> depends on k only.
        let c = cfg(serde_json::json!({"hidden_size": 32, "num_attention_heads": 2}));
        let rope = RotaryEmbedding::new(&c, Device::Cpu).unwrap();
        let q = Tensor::randn([1, 1, 1, 16], (Kind::Double, Device::Cpu));
        let k = Tensor::randn([1, 1, 1, 16], (Kind::Double, Device::Cpu));
        let dot = |p: i64, r: i64| {
            let (c1, s1) = rope
                .cos_sin(&Tensor::from_slice(&[p]).view([1, 1]), 1, Kind::Double)
                .unwrap();
            let (c2, s2) = rope
                .cos_sin(&Tensor::from_slice(&[r]).view([1, 1]), 1, Kind::Double)
                .unwrap();
            let a = apply_rotary(&q, &c1, &s1).unwrap();
            let b = apply_rotary(&k, &c2, &s2).unwrap();
            f64::try_from((a * b).sum(Kind::Double)).unwrap()
        };
        assert!((dot(3, 10) - dot(103, 110)).abs() < 1e-4);
    }

    #[test]
    fn scaled_frequencies() {
        let base = cfg(serde_json::json!({"hidden_size": 16, "num_attention_heads": 1}));
        let linear = cfg(
            serde_json::json!({"hidden_size": 16, "num_attention_heads": 1,
            "rope_scaling": {"type": "linear", "factor": 4.0}}),
        );
        let dynamic = cfg(
            serde_json::json!({"hidden_size": 16, "num_attention_heads": 1,
            "max_position_embeddings": 32, "rope_scaling": {"type": "dynamic", "factor": 2.0}}),
        );
        let r0 = RotaryEmbedding::new(&base, Device::Cpu).unwrap();
        let r1 = RotaryEmbedding::new(&linear, Device::Cpu).unwrap();
        let r2 = RotaryEmbedding::new(&dynamic, Device::Cpu).unwrap();
        let diff = (&r0.inv_freq / 4.0 - &r1.inv_freq).abs().max();
        assert_eq!(f64::try_from(diff).unwrap(), 0.0);
        let short = r2.inv_freq_for(32).unwrap();
        assert_eq!(
            f64::try_from((&short - &r0.inv_freq).abs().max()).unwrap(),
            0.0
        );
        let long: Vec<f32> = Vec::try_from(&r2.inv_freq_for(64).unwrap()).unwrap();
        // base' = 10000 * (2*64/32 - 1)^(16/14)
        let b = 10_000f64 * 3f64.powf(16.0 / 14.0);
        let expected = 1.0 / b.powf(2.0 / 16.0);
        assert!((long[1] as f64 - expected).abs() < 1e-6);
    }

    #[test]
    fn llama3_bands() {
        let c = cfg(
            serde_json::json!({"hidden_size": 128, "num_attention_heads": 1,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}}),
        );
        let rope = RotaryEmbedding::new(&c, Device::Cpu).unwrap();
        let plain = default_inv_freq(500000.0, 128, Device::Cpu).unwrap();
        let got: Vec<f32> = Vec::try_from(&rope.inv_freq).unwrap();
        let plain: Vec<f32> = Vec::try_from(&plain).unwrap();
        // High frequencies unchanged, lowest divided by the factor.
        assert_eq!(got[0], plain[0]);
        assert!((got[63] - plain[63] / 8.0).abs() <= f32::EPSILON * plain[63]);
        for i in 0..64 {
            assert!(got[i] <= plain[i] && got[i] >= plain[i] / 8.0 * (1.0 - 1e-6));
        }
    }
}

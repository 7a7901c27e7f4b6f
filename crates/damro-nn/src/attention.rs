//! Multi-head attention helpers over libtorch's fused
//! `scaled_dot_product_attention`.

use tch::{Kind, Tensor};

use crate::{Error, Result};

pub mod decode;

pub use decode::{decode_attention, decode_attention_available};

/// Splits the last dimension into heads.
///
/// # Shapes
/// `[batch, seq, heads * head_dim]` → `[batch, heads, seq, head_dim]`
pub fn split_heads(xs: &Tensor, heads: i64) -> Result<Tensor> {
    let size = xs.size();
    let [b, t, d] = size[..] else {
        return Err(Error::shape("split_heads input", "[batch, seq, dim]", size));
    };
    if heads <= 0 || d % heads != 0 {
        return Err(Error::shape(
            "split_heads input",
            format!("a last dimension divisible by {heads} heads"),
            size,
        ));
    }
    Ok(xs.f_view([b, t, heads, d / heads])?.f_transpose(1, 2)?)
}

/// Joins the heads back into the last dimension.
///
/// # Shapes
/// `[batch, heads, seq, head_dim]` → `[batch, seq, heads * head_dim]`
pub fn merge_heads(xs: &Tensor) -> Result<Tensor> {
    let size = xs.size();
    let [b, h, t, d] = size[..] else {
        return Err(Error::shape(
            "merge_heads input",
            "[batch, heads, seq, head_dim]",
            size,
        ));
    };
    Ok(xs
        .f_transpose(1, 2)?
        .f_contiguous()?
        .f_view([b, t, h * d])?)
}

/// Options of [`attention`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionOptions<'a> {
    /// Boolean mask (`true` = attend) or additive float mask, broadcastable
    /// to `[batch, heads, q_len, k_len]`.
    pub mask: Option<&'a Tensor>,
    /// Causal masking (aligned to the top-left; do not combine with a mask).
    pub causal: bool,
    /// Softmax scale; `None` is `1/sqrt(head_dim)`.
    pub scale: Option<f64>,
    /// Grouped-query attention: fewer key/value heads than query heads.
    pub gqa: bool,
}

/// Fused attention.
///
/// # Shapes
/// q `[batch, heads, q_len, d]`, k and v `[batch, kv_heads, k_len, d]` →
/// `[batch, heads, q_len, d]`
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: AttentionOptions<'_>) -> Result<Tensor> {
    Ok(Tensor::f_scaled_dot_product_attention(
        q,
        k,
        v,
        opts.mask,
        0.0,
        opts.causal,
        opts.scale,
        opts.gqa,
    )?)
}

/// Which attention kernel a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionImpl {
    /// libtorch's fused `scaled_dot_product_attention` ([`attention`]).
    #[default]
    Sdpa,
    /// HF transformers' eager order of operations ([`eager_attention`]):
    /// slower, but reproduces references computed with
    /// `attn_implementation="eager"` to the last bit.
    Eager,
}

/// Attention by the chosen kernel; both take the same options.
///
/// # Shapes
/// as [`attention`]
pub fn attention_with(
    implementation: AttentionImpl,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: AttentionOptions<'_>,
) -> Result<Tensor> {
    match implementation {
        AttentionImpl::Sdpa => attention(q, k, v, opts),
        AttentionImpl::Eager => eager_attention(q, k, v, opts),
    }
}

/// Attention of a left-padded decode step one row at a time, each row over
/// its own run of real keys `first[row]..` (no mask): libtorch's way to
/// skip the padding, at one call per row. On the CPU attention at one
/// query per row streams the cached keys and values from memory, so
/// skipping a short row's padding (DAMRO's outlier branch: ~570 padded
/// columns next to the full branch) saves more than the per-row calls
/// cost; [`decode_attention`] does the same in one call.
///
/// # Shapes
/// q `[batch, heads, 1, d]`, k and v `[batch, kv_heads, len, d]` →
/// `[batch, heads, 1, d]`
pub fn attend_rows(
    implementation: AttentionImpl,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first: &[i64],
    opts: AttentionOptions<'_>,
) -> Result<Tensor> {
    let total = k.size().get(2).copied().unwrap_or(0);
    if first.len() as i64 != q.size().first().copied().unwrap_or(0)
        || first.iter().any(|&f| !(0..total).contains(&f))
    {
        return Err(Error::shape(
            "attend_rows row starts",
            format!("one per row of q {:?}, in 0..{total}", q.size()),
            first,
        ));
    }
    let opts = AttentionOptions { mask: None, ..opts };
    let rows = first
        .iter()
        .enumerate()
        .map(|(row, &from)| {
            let row = row as i64;
            let keys = |t: &Tensor| -> Result<Tensor> {
                Ok(t.f_narrow(0, row, 1)?.f_narrow(2, from, total - from)?)
            };
            let q = q.f_narrow(0, row, 1)?;
            attention_with(implementation, &q, &keys(k)?, &keys(v)?, opts)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::f_cat(&rows, 0)?)
}

/// Attention written out as HF's `eager_attention_forward` computes it:
/// `w = (q kᵀ) * scale`, masked positions set to the dtype's lowest value
/// (causal: above the diagonal, top-left aligned), `softmax(w)` in f32 cast
/// back, `w v`. Key/value heads are repeated for grouped-query attention.
///
/// # Shapes
/// as [`attention`]
pub fn eager_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: AttentionOptions<'_>,
) -> Result<Tensor> {
    let q_size = q.size();
    let [_, heads, q_len, d] = q_size[..] else {
        return Err(Error::shape(
            "attention query",
            "[batch, heads, q_len, d]",
            q_size,
        ));
    };
    let kv_heads = k.size().get(1).copied().unwrap_or(0);
    let (k, v) = if opts.gqa && kv_heads > 0 && kv_heads != heads {
        let groups = heads / kv_heads;
        (
            k.f_repeat_interleave_self_int(groups, 1, None)?,
            v.f_repeat_interleave_self_int(groups, 1, None)?,
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let scale = opts.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let mut w = q.f_matmul(&k.f_transpose(-2, -1)?)?.f_mul_scalar(scale)?;
    let lowest = match w.kind() {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.389_531_389_251_535e38,
        Kind::Double => f64::MIN,
        _ => f64::from(f32::MIN),
    };
    if opts.causal {
        let k_len = k.size()[2];
        let above = Tensor::f_ones([q_len, k_len], (Kind::Bool, w.device()))?.f_triu(1)?;
        w = w.f_masked_fill(&above, lowest)?;
    }
    if let Some(mask) = opts.mask {
        w = if mask.kind() == Kind::Bool {
            w.f_masked_fill(&mask.f_logical_not()?, lowest)?
        } else {
            w.f_add(mask)?
        };
    }
    let w = w.f_softmax(-1, Kind::Float)?.f_to_kind(q.kind())?;
    Ok(w.f_matmul(&v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eager_matches_fused() {
        tch::manual_seed(0);
        let q = Tensor::randn([2, 4, 5, 8], (Kind::Float, tch::Device::Cpu));
        let k = Tensor::randn([2, 2, 7, 8], (Kind::Float, tch::Device::Cpu));
        let v = Tensor::randn([2, 2, 7, 8], (Kind::Float, tch::Device::Cpu));
        let mask = Tensor::randn([2, 1, 1, 7], (Kind::Float, tch::Device::Cpu)).gt(-1.0);
        for opts in [
            AttentionOptions {
                gqa: true,
                ..Default::default()
            },
            AttentionOptions {
                gqa: true,
                causal: true,
                ..Default::default()
            },
            AttentionOptions {
                gqa: true,
                mask: Some(&mask),
                scale: Some(0.3),
                ..Default::default()
            },
        ] {
            let fused = attention(&q, &k, &v, opts).unwrap();
            let eager = eager_attention(&q, &k, &v, opts).unwrap();
            let err = (fused - eager).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{opts:?}: {err}");
        }
    }
}

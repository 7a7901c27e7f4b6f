//! Multi-head attention helpers over libtorch's fused
//! `scaled_dot_product_attention`.

use tch::Tensor;

use crate::{Error, Result};

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

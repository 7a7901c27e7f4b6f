//! Pieces shared by the CLIP and EVA vision towers: the MLP, the patch
//! embedding convolution, layer-index resolution and input checks.

use damro_nn::{Activation, LayerNorm, Linear, Module, Weights};
use tch::Tensor;

use crate::{Error, Result};

/// `fc1 → activation → fc2` (HF `CLIPMLP`, `InstructBlipMLP`).
#[derive(Debug)]
pub struct Mlp {
    /// `fc1`: `[intermediate, hidden]` with bias.
    pub fc1: Linear,
    /// `fc2`: `[hidden, intermediate]` with bias.
    pub fc2: Linear,
    /// Between the two (`hidden_act`).
    pub activation: Activation,
}

impl Mlp {
    /// Loads `fc1` `[intermediate, hidden]` and `fc2` `[hidden, intermediate]`,
    /// both with biases.
    pub fn load(
        w: &Weights,
        hidden: i64,
        intermediate: i64,
        activation: Activation,
    ) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(&w.pp("fc1"), hidden, intermediate, true)?,
            fc2: Linear::load(&w.pp("fc2"), intermediate, hidden, true)?,
            activation,
        })
    }
}

impl Module for Mlp {
    /// # Shapes
    /// `[.., hidden]` → `[.., hidden]`
    fn forward(&self, xs: &Tensor) -> damro_nn::Result<Tensor> {
        let h = self.fc1.forward(xs)?;
        let h = self.activation.forward(&h)?;
        self.fc2.forward(&h)
    }
}

/// Checks `pixels` is `[batch, channels, size, size]` and moves it to the
/// device and kind of `like` (a weight of the model).
pub(crate) fn check_pixels(
    pixels: &Tensor,
    channels: i64,
    size: i64,
    like: &Tensor,
) -> Result<Tensor> {
    let shape = pixels.size();
    match shape[..] {
        [b, c, h, w] if b > 0 && c == channels && h == size && w == size => {}
        _ => {
            return Err(Error::input(
                "pixel values",
                format!("[batch, {channels}, {size}, {size}]"),
                shape,
            ));
        }
    }
    if !pixels.is_floating_point() {
        return Err(Error::input(
            "pixel values",
            "a floating-point tensor",
            pixels.kind(),
        ));
    }
    Ok(pixels.f_to_device_(like.device(), like.kind(), false, false)?)
}

/// Patch embedding: a `patch x patch` convolution with stride `patch`,
/// flattened to tokens.
///
/// # Shapes
/// `[batch, C, H, W]` → `[batch, (H/p)*(W/p), D]`
pub(crate) fn patchify(
    pixels: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    patch: i64,
) -> Result<Tensor> {
    let x = pixels.f_conv2d(weight, bias, [patch, patch], [0, 0], [1, 1], 1)?;
    Ok(x.f_flatten(2, -1)?.f_transpose(1, 2)?)
}

/// Resolves a hidden-state index with HF's `hidden_states[i]` meaning:
/// `0` is the input of the first layer, `i` the output of layer `i - 1`,
/// negative indices count from the end (`-1` is the last layer's output).
/// Returns the number of layers that must run (`0..=num_layers`).
pub fn hidden_state_index(index: i64, num_layers: i64) -> Result<i64> {
    // Saturating: both come from a user's config.json.
    let states = num_layers.saturating_add(1);
    let resolved = if index < 0 {
        index.saturating_add(states)
    } else {
        index
    };
    if (0..states).contains(&resolved) {
        Ok(resolved)
    } else {
        Err(Error::input(
            "hidden state index",
            format!("an index in -{states}..={num_layers} ({num_layers} layers)"),
            index,
        ))
    }
}

/// Resolves a layer index with Python's `layers[i]` meaning (negative counts
/// from the end: `-2` is the penultimate layer).
pub fn layer_index(index: i64, num_layers: i64) -> Result<i64> {
    let resolved = if index < 0 { index + num_layers } else { index };
    if (0..num_layers).contains(&resolved) {
        Ok(resolved)
    } else {
        Err(Error::input(
            "layer index",
            format!(
                "an index in -{num_layers}..={} ({num_layers} layers)",
                num_layers - 1
            ),
            index,
        ))
    }
}

/// Softmax over keys of precomputed `[CLS]`-row scores, in f32, with the
/// `[CLS]` column dropped.
///
/// # Shapes
/// `[batch, tokens]` → `[batch, tokens - 1]`
pub(crate) fn drop_cls_column(probs: &Tensor) -> Result<Tensor> {
    let tokens = probs.size()[1];
    Ok(probs.f_narrow(1, 1, tokens - 1)?.f_contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_python() {
        assert_eq!(hidden_state_index(-2, 24).unwrap(), 23);
        assert_eq!(hidden_state_index(0, 24).unwrap(), 0);
        assert_eq!(hidden_state_index(-25, 24).unwrap(), 0);
        assert!(hidden_state_index(25, 24).is_err());
        assert!(hidden_state_index(-26, 24).is_err());
        assert_eq!(layer_index(-2, 24).unwrap(), 22);
        assert_eq!(layer_index(-2, 39).unwrap(), 37);
        assert!(layer_index(24, 24).is_err());
    }
}

/// The self-attention of a vision tower: the attention output and, when
/// asked, DAMRO's `[CLS]` scores of that layer.
pub trait TowerAttention {
    /// # Shapes
    /// `[batch, tokens, hidden]` → `[batch, tokens, hidden]`, scores
    /// `[batch, tokens - 1]` (f32)
    fn attend(&self, xs: &Tensor, with_cls: bool) -> Result<(Tensor, Option<Tensor>)>;
}

/// One pre-norm encoder layer (HF `CLIPEncoderLayer`,
/// `InstructBlipEncoderLayer`): `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug)]
pub struct EncoderLayer<A> {
    /// `layer_norm1`: before the attention, `[hidden]`.
    pub layer_norm1: LayerNorm,
    /// `self_attn`: the tower's attention ([`crate::clip::ClipAttention`] or
    /// [`crate::eva::EvaAttention`]).
    pub self_attn: A,
    /// `layer_norm2`: before the MLP, `[hidden]`.
    pub layer_norm2: LayerNorm,
    /// `mlp`: the feed-forward block.
    pub mlp: Mlp,
}

impl<A: TowerAttention> EncoderLayer<A> {
    /// Loads the norms and the MLP around an already loaded attention.
    pub(crate) fn load(
        w: &Weights,
        self_attn: A,
        hidden: i64,
        intermediate: i64,
        eps: f64,
        activation: Activation,
    ) -> Result<Self> {
        Ok(Self {
            layer_norm1: LayerNorm::load(&w.pp("layer_norm1"), hidden, eps)?,
            self_attn,
            layer_norm2: LayerNorm::load(&w.pp("layer_norm2"), hidden, eps)?,
            mlp: Mlp::load(&w.pp("mlp"), hidden, intermediate, activation)?,
        })
    }

    /// The layer's output and, when `with_cls`, its `[CLS]` scores.
    pub(crate) fn forward(&self, xs: &Tensor, with_cls: bool) -> Result<(Tensor, Option<Tensor>)> {
        let (attn, cls) = self
            .self_attn
            .attend(&self.layer_norm1.forward(xs)?, with_cls)?;
        let xs = xs.f_add(&attn)?;
        let mlp = self.mlp.forward(&self.layer_norm2.forward(&xs)?)?;
        Ok((xs.f_add(&mlp)?, cls))
    }
}

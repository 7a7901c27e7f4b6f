//! The BLIP-2 / EVA vision tower of InstructBLIP (HF
//! `InstructBlipVisionModel`, transformers 5.23
//! `models/instructblip/modeling_instructblip.py`), with what DAMRO needs.
//!
//! The output is the post-LayerNorm last hidden state (the image tokens the
//! Q-Former cross-attends to). The forward can also return the `[CLS]`-row
//! attention of one layer in the form of DAMRO's InstructBLIP code: that
//! layer's own attention probabilities (input: the layer input after
//! `layer_norm1`; fused `qkv` projection with the q/v biases; per head
//! `softmax(q_cls kᵀ / sqrt(head_dim))`), averaged over heads, `[CLS]` column
//! dropped. DAMRO takes `layers[-2]`: index 37 of ViT-g's 39 layers, the same
//! layer HF reports as `attentions[-2]`. Only the `[CLS]` query row is
//! computed.

use damro_nn::attention::{self, AttentionImpl, AttentionOptions};
use damro_nn::{LayerNorm, Linear, Module, Weights};
use tch::{Kind, Tensor};

use crate::Result;
use crate::config::EvaVisionConfig;
use crate::vit;

/// Class token, patch convolution (with bias) and learned positions.
#[derive(Debug)]
pub struct EvaEmbeddings {
    /// `[1, 1, hidden]`
    pub class_embedding: Tensor,
    /// Convolution `[hidden, 3, patch, patch]` with bias `[hidden]`.
    pub patch_embedding: Linear,
    /// `[1, patches + 1, hidden]`
    pub position_embedding: Tensor,
    patch_size: i64,
}

impl EvaEmbeddings {
    fn load(w: &Weights, cfg: &EvaVisionConfig) -> Result<Self> {
        let (d, p) = (cfg.hidden_size, cfg.patch_size);
        let conv = w.pp("patch_embedding");
        Ok(Self {
            class_embedding: w.get("class_embedding", &[1, 1, d])?,
            patch_embedding: Linear {
                weight: conv.get("weight", &[d, 3, p, p])?,
                bias: Some(conv.get("bias", &[d])?),
            },
            position_embedding: w.get("position_embedding", &[1, cfg.num_positions(), d])?,
            patch_size: p,
        })
    }

    /// # Shapes
    /// `[batch, 3, H, W]` → `[batch, patches + 1, hidden]`
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let conv = &self.patch_embedding;
        let patches = vit::patchify(pixels, &conv.weight, conv.bias.as_ref(), self.patch_size)?;
        let (b, _, d) = patches.size3()?;
        let cls = self.class_embedding.f_expand([b, 1, d], false)?;
        let tokens = Tensor::f_cat(&[cls, patches], 1)?;
        Ok(tokens.f_add(&self.position_embedding)?)
    }
}

/// Multi-head self-attention with a fused `qkv` projection.
#[derive(Debug)]
pub struct EvaAttention {
    /// `qkv.weight` `[3 * hidden, hidden]` and, with `qkv_bias`, `qkv.bias`
    /// `[3 * hidden]` (q bias, zeros, v bias, as HF stores it; checkpoints
    /// with separate `q_bias` / `v_bias` tensors are read too).
    pub qkv: Linear,
    /// `projection`: the output projection, `[hidden, hidden]` with bias
    /// `[hidden]`.
    pub projection: Linear,
    num_heads: i64,
    kernel: AttentionImpl,
}

impl EvaAttention {
    fn load(w: &Weights, cfg: &EvaVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let weight = w.get("qkv.weight", &[3 * d, d])?;
        let bias = if !cfg.qkv_bias {
            None
        } else if !w.contains("qkv.bias") && w.contains("q_bias") {
            // LAVIS-style names: separate q and v biases, k has none.
            let q = w.get("q_bias", &[d])?;
            let v = w.get("v_bias", &[d])?;
            let k = q.f_zeros_like()?;
            Some(Tensor::f_cat(&[q, k, v], 0)?)
        } else {
            Some(w.get("qkv.bias", &[3 * d])?)
        };
        Ok(Self {
            qkv: Linear { weight, bias },
            projection: Linear::load(&w.pp("projection"), d, d, true)?,
            num_heads: cfg.num_attention_heads,
            kernel: cfg.attention,
        })
    }

    /// The attention output and, when `with_cls`, the head-averaged `[CLS]`
    /// row of the attention probabilities, in f32.
    ///
    /// # Shapes
    /// `[batch, tokens, hidden]` → `[batch, tokens, hidden]` and
    /// `[batch, tokens - 1]`
    fn forward(&self, xs: &Tensor, with_cls: bool) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, d) = xs.size3()?;
        let h = self.num_heads;
        let mixed = self
            .qkv
            .forward(xs)?
            .f_view([b, t, 3, h, d / h])?
            .f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (
            mixed.f_select(0, 0)?,
            mixed.f_select(0, 1)?,
            mixed.f_select(0, 2)?,
        );
        let cls = if with_cls {
            Some(head_mean_cls_attention(&q, &k)?)
        } else {
            None
        };
        let out = attention::attention_with(self.kernel, &q, &k, &v, AttentionOptions::default())?;
        let out = self.projection.forward(&attention::merge_heads(&out)?)?;
        Ok((out, cls))
    }
}

/// Per head `softmax(q_cls kᵀ / sqrt(head_dim))`, mean over heads, in f32,
/// `[CLS]` column dropped.
///
/// # Shapes
/// q, k `[batch, heads, tokens, head_dim]` → `[batch, tokens - 1]`
fn head_mean_cls_attention(q: &Tensor, k: &Tensor) -> Result<Tensor> {
    let head_dim = q.size()[3];
    let q_cls = q.f_narrow(2, 0, 1)?.f_to_kind(Kind::Float)?;
    let k = k.f_to_kind(Kind::Float)?;
    let scores = q_cls
        .f_matmul(&k.f_transpose(2, 3)?)?
        .f_mul_scalar((head_dim as f64).powf(-0.5))?;
    let probs = scores.f_softmax(-1, Kind::Float)?; // [b, h, 1, t]
    let mean = probs
        .f_mean_dim([1i64].as_slice(), false, Kind::Float)?
        .f_squeeze_dim(1)?;
    vit::drop_cls_column(&mean)
}

/// One pre-norm encoder layer (HF `InstructBlipEncoderLayer`).
pub type EvaEncoderLayer = vit::EncoderLayer<EvaAttention>;

impl vit::TowerAttention for EvaAttention {
    fn attend(&self, xs: &Tensor, with_cls: bool) -> Result<(Tensor, Option<Tensor>)> {
        self.forward(xs, with_cls)
    }
}

fn load_layer(w: &Weights, cfg: &EvaVisionConfig) -> Result<EvaEncoderLayer> {
    vit::EncoderLayer::load(
        w,
        EvaAttention::load(&w.pp("self_attn"), cfg)?,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.layer_norm_eps,
        cfg.hidden_act,
    )
}

/// The result of an [`EvaVisionTower`] forward.
#[derive(Debug)]
pub struct EvaOutput {
    /// Post-LayerNorm last hidden state `[batch, patches + 1, hidden]`,
    /// `[CLS]` first: the Q-Former's image tokens.
    pub last_hidden_state: Tensor,
    /// `[batch, patches]` in f32 when requested.
    pub cls_attention: Option<Tensor>,
}

/// The EVA ViT of InstructBLIP.
#[derive(Debug)]
pub struct EvaVisionTower {
    /// `embeddings`: `[CLS]`, patch and position embeddings.
    pub embeddings: EvaEmbeddings,
    /// `encoder.layers`
    pub layers: Vec<EvaEncoderLayer>,
    /// `post_layernorm`: the LayerNorm over the last hidden state, `[hidden]`.
    pub post_layernorm: LayerNorm,
    config: EvaVisionConfig,
}

impl EvaVisionTower {
    /// Loads the tower from `w` (the position of `embeddings`, `encoder` and
    /// `post_layernorm`, i.e. `vision_model`).
    pub fn load(w: &Weights, cfg: &EvaVisionConfig) -> Result<Self> {
        let lw = w.pp("encoder").pp("layers");
        Ok(Self {
            embeddings: EvaEmbeddings::load(&w.pp("embeddings"), cfg)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| load_layer(&lw.pp(i), cfg))
                .collect::<Result<Vec<_>>>()?,
            post_layernorm: LayerNorm::load(
                &w.pp("post_layernorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
            config: cfg.clone(),
        })
    }

    /// The tower's config.
    pub fn config(&self) -> &EvaVisionConfig {
        &self.config
    }

    /// Runs the tower; `cls_attention_layer` (`layers[i]` indexing, negative
    /// from the end) selects the layer whose DAMRO `[CLS]` attention to return.
    ///
    /// # Shapes
    /// pixels `[batch, 3, image_size, image_size]` → last hidden state
    /// `[batch, patches + 1, hidden]`, `[CLS]` attention `[batch, patches]`
    /// (f32)
    pub fn forward(&self, pixels: &Tensor, cls_attention_layer: Option<i64>) -> Result<EvaOutput> {
        let cfg = &self.config;
        let cls_layer = cls_attention_layer
            .map(|l| vit::layer_index(l, cfg.num_hidden_layers))
            .transpose()?;
        let pixels = vit::check_pixels(pixels, 3, cfg.image_size, &self.post_layernorm.weight)?;
        let mut xs = self.embeddings.forward(&pixels)?;
        let mut cls_attention = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let (next, cls) = layer.forward(&xs, cls_layer == Some(i as i64))?;
            xs = next;
            if cls.is_some() {
                cls_attention = cls;
            }
        }
        Ok(EvaOutput {
            last_hidden_state: self.post_layernorm.forward(&xs)?,
            cls_attention,
        })
    }
}

//! The CLIP vision tower of LLaVA-1.5 (HF `CLIPVisionModel`, transformers
//! 5.23 `models/clip/modeling_clip.py`), with what DAMRO needs from it.
//!
//! The forward runs only as many encoder layers as the request needs and
//! keeps only the hidden states asked for. It can also return the `[CLS]`-row
//! attention of one layer in the form of DAMRO's LLaVA code: with `x` the
//! layer's input after `layer_norm1`, `q = q_proj(x)` and `k = k_proj(x)`
//! over the full hidden width (not split into heads),
//! `softmax(q_cls · Kᵀ / sqrt(hidden_size))` over all tokens, `[CLS]` column
//! dropped. Only the `[CLS]` query row is computed.

use damro_nn::attention::{self, AttentionImpl, AttentionOptions};
use damro_nn::{Embedding, LayerNorm, Linear, Module, Weights};
use tch::{Kind, Tensor};

use crate::config::ClipVisionConfig;
use crate::vit;
use crate::{Error, Result};

/// Class token, patch convolution and learned positions.
#[derive(Debug)]
pub struct ClipEmbeddings {
    /// `[hidden]`
    pub class_embedding: Tensor,
    /// Convolution weight `[hidden, channels, patch, patch]`, no bias.
    pub patch_embedding: Tensor,
    /// `[patches + 1, hidden]`
    pub position_embedding: Embedding,
    patch_size: i64,
}

impl ClipEmbeddings {
    fn load(w: &Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            class_embedding: w.get("class_embedding", &[d])?,
            patch_embedding: w.get(
                "patch_embedding.weight",
                &[d, cfg.num_channels, cfg.patch_size, cfg.patch_size],
            )?,
            position_embedding: Embedding::load(
                &w.pp("position_embedding"),
                cfg.num_positions(),
                d,
            )?,
            patch_size: cfg.patch_size,
        })
    }

    /// # Shapes
    /// `[batch, C, H, W]` → `[batch, patches + 1, hidden]`
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let patches = vit::patchify(pixels, &self.patch_embedding, None, self.patch_size)?;
        let (b, _, d) = patches.size3()?;
        let cls = self
            .class_embedding
            .f_view([1, 1, d])?
            .f_expand([b, 1, d], false)?;
        let tokens = Tensor::f_cat(&[cls, patches], 1)?;
        Ok(tokens.f_add(&self.position_embedding.weight.f_unsqueeze(0)?)?)
    }
}

/// Multi-head self-attention with q/k/v/out projections, all with biases.
#[derive(Debug)]
pub struct ClipAttention {
    /// `q_proj`: `[hidden, hidden]` with bias `[hidden]`.
    pub q_proj: Linear,
    /// `k_proj`: `[hidden, hidden]` with bias `[hidden]`.
    pub k_proj: Linear,
    /// `v_proj`: `[hidden, hidden]` with bias `[hidden]`.
    pub v_proj: Linear,
    /// `out_proj`: `[hidden, hidden]` with bias `[hidden]`.
    pub out_proj: Linear,
    num_heads: i64,
    kernel: AttentionImpl,
}

impl ClipAttention {
    fn load(w: &Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: Linear::load(&w.pp("q_proj"), d, d, true)?,
            k_proj: Linear::load(&w.pp("k_proj"), d, d, true)?,
            v_proj: Linear::load(&w.pp("v_proj"), d, d, true)?,
            out_proj: Linear::load(&w.pp("out_proj"), d, d, true)?,
            num_heads: cfg.num_attention_heads,
            kernel: cfg.attention,
        })
    }

    /// The attention output and, when `with_cls`, the `[CLS]` row of DAMRO's
    /// full-width attention (see the module docs), in f32.
    ///
    /// # Shapes
    /// `[batch, tokens, hidden]` → `[batch, tokens, hidden]` and
    /// `[batch, tokens - 1]`
    fn forward(&self, xs: &Tensor, with_cls: bool) -> Result<(Tensor, Option<Tensor>)> {
        let q = self.q_proj.forward(xs)?;
        let k = self.k_proj.forward(xs)?;
        let v = self.v_proj.forward(xs)?;
        let cls = if with_cls {
            Some(full_width_cls_attention(&q, &k)?)
        } else {
            None
        };
        let heads = |t: &Tensor| attention::split_heads(t, self.num_heads);
        let out = attention::attention_with(
            self.kernel,
            &heads(&q)?,
            &heads(&k)?,
            &heads(&v)?,
            AttentionOptions::default(),
        )?;
        let out = self.out_proj.forward(&attention::merge_heads(&out)?)?;
        Ok((out, cls))
    }
}

/// `softmax(q_cls · Kᵀ / sqrt(width))` in f32, `[CLS]` column dropped.
///
/// # Shapes
/// q, k `[batch, tokens, width]` → `[batch, tokens - 1]`
fn full_width_cls_attention(q: &Tensor, k: &Tensor) -> Result<Tensor> {
    let width = q.size()[2];
    let q_cls = q.f_narrow(1, 0, 1)?.f_to_kind(Kind::Float)?;
    let k = k.f_to_kind(Kind::Float)?;
    let scores = q_cls
        .f_matmul(&k.f_transpose(1, 2)?)?
        .f_div_scalar((width as f64).sqrt())?;
    let probs = scores.f_softmax(-1, Kind::Float)?.f_squeeze_dim(1)?;
    vit::drop_cls_column(&probs)
}

/// One pre-norm encoder layer (HF `CLIPEncoderLayer`).
pub type ClipEncoderLayer = vit::EncoderLayer<ClipAttention>;

impl vit::TowerAttention for ClipAttention {
    fn attend(&self, xs: &Tensor, with_cls: bool) -> Result<(Tensor, Option<Tensor>)> {
        self.forward(xs, with_cls)
    }
}

fn load_layer(w: &Weights, cfg: &ClipVisionConfig) -> Result<ClipEncoderLayer> {
    vit::EncoderLayer::load(
        w,
        ClipAttention::load(&w.pp("self_attn"), cfg)?,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.layer_norm_eps,
        cfg.hidden_act,
    )
}

/// What a forward of [`ClipVisionTower`] returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClipRequest<'a> {
    /// Hidden states to return, with HF's `hidden_states[i]` indexing
    /// (0 = embeddings after `pre_layrnorm`, `i` = output of layer `i - 1`,
    /// negative from the end: `-2` is the output of the penultimate layer).
    pub hidden_states: &'a [i64],
    /// Layer (`layers[i]` indexing, negative from the end) whose DAMRO
    /// `[CLS]` attention to return.
    pub cls_attention_layer: Option<i64>,
}

/// The result of a [`ClipVisionTower`] forward.
#[derive(Debug)]
pub struct ClipOutput {
    /// The requested hidden states, in request order, each
    /// `[batch, patches + 1, hidden]` (before `post_layernorm`).
    pub hidden_states: Vec<Tensor>,
    /// `[batch, patches]` in f32 when requested.
    pub cls_attention: Option<Tensor>,
}

/// The CLIP vision transformer, possibly truncated after the last layer a
/// model needs.
#[derive(Debug)]
pub struct ClipVisionTower {
    /// `embeddings`: `[CLS]`, patch and position embeddings.
    pub embeddings: ClipEmbeddings,
    /// `pre_layrnorm` (spelled as in the checkpoint): the LayerNorm applied to
    /// the embeddings before the first layer, `[hidden]`.
    pub pre_layrnorm: LayerNorm,
    /// `encoder.layers`, the first [`ClipVisionTower::loaded_layers`] of them.
    pub layers: Vec<ClipEncoderLayer>,
    /// Present when the whole tower was loaded.
    pub post_layernorm: Option<LayerNorm>,
    config: ClipVisionConfig,
}

impl ClipVisionTower {
    /// Loads the whole tower from `w` (the position of `embeddings`,
    /// `pre_layrnorm`, `encoder` and `post_layernorm`).
    pub fn load(w: &Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        Self::load_inner(w, cfg, cfg.num_hidden_layers, true)
    }

    /// Loads the embeddings, `pre_layrnorm` and the first `layers` encoder
    /// layers; the later layers and `post_layernorm` are marked as ignored.
    pub fn load_layers(w: &Weights, cfg: &ClipVisionConfig, layers: i64) -> Result<Self> {
        if !(0..=cfg.num_hidden_layers).contains(&layers) {
            return Err(Error::input(
                "CLIP layers to load",
                format!("0..={}", cfg.num_hidden_layers),
                layers,
            ));
        }
        Self::load_inner(w, cfg, layers, false)
    }

    fn load_inner(w: &Weights, cfg: &ClipVisionConfig, layers: i64, post: bool) -> Result<Self> {
        let d = cfg.hidden_size;
        // A buffer older checkpoints store; positions are implicit here.
        w.ignore("embeddings.position_ids");
        let embeddings = ClipEmbeddings::load(&w.pp("embeddings"), cfg)?;
        let pre_layrnorm = LayerNorm::load(&w.pp("pre_layrnorm"), d, cfg.layer_norm_eps)?;
        let lw = w.pp("encoder").pp("layers");
        let layers_vec = (0..layers)
            .map(|i| load_layer(&lw.pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        for i in layers..cfg.num_hidden_layers {
            lw.ignore(&i.to_string());
        }
        let post_layernorm = if post {
            Some(LayerNorm::load(
                &w.pp("post_layernorm"),
                d,
                cfg.layer_norm_eps,
            )?)
        } else {
            w.ignore("post_layernorm");
            None
        };
        Ok(Self {
            embeddings,
            pre_layrnorm,
            layers: layers_vec,
            post_layernorm,
            config: cfg.clone(),
        })
    }

    /// The tower's config.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// Number of encoder layers loaded.
    pub fn loaded_layers(&self) -> i64 {
        self.layers.len() as i64
    }

    /// Runs the tower as far as `request` needs.
    ///
    /// # Shapes
    /// pixels `[batch, channels, image_size, image_size]` →
    /// hidden states `[batch, patches + 1, hidden]`, `[CLS]` attention
    /// `[batch, patches]` (f32)
    pub fn forward(&self, pixels: &Tensor, request: &ClipRequest<'_>) -> Result<ClipOutput> {
        let cfg = &self.config;
        let layers = cfg.num_hidden_layers;
        let wanted = request
            .hidden_states
            .iter()
            .map(|&i| vit::hidden_state_index(i, layers))
            .collect::<Result<Vec<_>>>()?;
        let cls_layer = request
            .cls_attention_layer
            .map(|l| vit::layer_index(l, layers))
            .transpose()?;
        let needed = wanted
            .iter()
            .copied()
            .chain(cls_layer.map(|l| l + 1))
            .max()
            .unwrap_or(0);
        if needed > self.loaded_layers() {
            return Err(Error::input(
                "CLIP request",
                format!(
                    "at most {} layers (the tower was loaded truncated)",
                    self.loaded_layers()
                ),
                format!("a request that needs {needed} layers"),
            ));
        }

        let pixels = vit::check_pixels(
            pixels,
            cfg.num_channels,
            cfg.image_size,
            &self.pre_layrnorm.weight,
        )?;
        let mut xs = self
            .pre_layrnorm
            .forward(&self.embeddings.forward(&pixels)?)?;
        let mut states: Vec<Option<Tensor>> = wanted.iter().map(|_| None).collect();
        let keep = |index: i64, xs: &Tensor, states: &mut Vec<Option<Tensor>>| {
            for (slot, _) in states.iter_mut().zip(&wanted).filter(|(_, w)| **w == index) {
                *slot = Some(xs.shallow_clone());
            }
        };
        keep(0, &xs, &mut states);
        let mut cls_attention = None;
        for (i, layer) in self.layers.iter().take(needed as usize).enumerate() {
            let i = i as i64;
            let (next, cls) = layer.forward(&xs, cls_layer == Some(i))?;
            xs = next;
            if cls.is_some() {
                cls_attention = cls;
            }
            keep(i + 1, &xs, &mut states);
        }
        Ok(ClipOutput {
            hidden_states: states.into_iter().flatten().collect(),
            cls_attention,
        })
    }
}

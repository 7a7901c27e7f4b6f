//! The Q-Former of InstructBLIP (HF `InstructBlipQFormerModel`,
//! transformers 5.23 `models/instructblip/modeling_instructblip.py`).
//!
//! A BERT-style encoder over the learned query tokens followed by the
//! instruction text. Every layer runs self-attention over queries and text
//! (text padding masked, queries always attended); layers with
//! `layer % cross_attention_frequency == 0` let the queries cross-attend to
//! the image tokens; queries and text then go through separate feed-forwards
//! (`intermediate_query`/`output_query` and `intermediate`/`output`). The
//! result is the query part of the last hidden state.

use damro_nn::attention::{self, AttentionImpl, AttentionOptions};
use damro_nn::{Activation, Embedding, LayerNorm, Linear, Module, Weights};
use tch::{Kind, Tensor};

use crate::config::QFormerConfig;
use crate::qformer_tokenizer::QFormerInput;
use crate::{Error, Result};

/// Word and absolute position embeddings of the text, and the LayerNorm
/// applied to queries and text together.
#[derive(Debug)]
pub struct QFormerEmbeddings {
    /// `word_embeddings`: `[vocab, hidden]` (vocabulary size read from the
    /// tensor).
    pub word_embeddings: Embedding,
    /// `position_embeddings`: `[max_position_embeddings, hidden]`, for the text
    /// tokens only.
    pub position_embeddings: Embedding,
    /// `layernorm`: over queries and text together, `[hidden]`.
    pub layernorm: LayerNorm,
}

impl QFormerEmbeddings {
    fn load(w: &Weights, cfg: &QFormerConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        // The vocabulary size comes from the tensor: InstructBLIP configs
        // are known to disagree with their checkpoints.
        let vocab = w
            .shape_of("word_embeddings.weight")
            .filter(|s| s.len() == 2 && s[1] == d)
            .map_or(cfg.vocab_size, |s| s[0]);
        // A buffer older checkpoints store; positions are implicit here.
        w.ignore("position_ids");
        Ok(Self {
            word_embeddings: Embedding::load(&w.pp("word_embeddings"), vocab, d)?,
            position_embeddings: Embedding::load(
                &w.pp("position_embeddings"),
                cfg.max_position_embeddings,
                d,
            )?,
            layernorm: LayerNorm::load(&w.pp("layernorm"), d, cfg.layer_norm_eps)?,
        })
    }

    /// # Shapes
    /// queries `[batch, Q, hidden]`, ids `[batch, T]` → `[batch, Q + T, hidden]`
    fn forward(&self, queries: &Tensor, input_ids: Option<&Tensor>) -> Result<Tensor> {
        let xs = match input_ids {
            Some(ids) => {
                let t = ids.size()[1];
                let max = self.position_embeddings.vocab_size();
                if t > max {
                    return Err(Error::input(
                        "Q-Former text",
                        format!("at most {max} tokens (max_position_embeddings)"),
                        t,
                    ));
                }
                let positions = Tensor::f_arange(t, (Kind::Int64, ids.device()))?;
                let text = self
                    .word_embeddings
                    .forward(ids)?
                    .f_add(&self.position_embeddings.forward(&positions)?)?;
                Tensor::f_cat(&[queries, &text.f_to_kind(queries.kind())?], 1)?
            }
            None => queries.shallow_clone(),
        };
        Ok(self.layernorm.forward(&xs)?)
    }
}

/// Multi-head attention with separate query/key/value projections; keys and
/// values come from the image tokens in cross-attention.
#[derive(Debug)]
pub struct QFormerMultiHeadAttention {
    /// `query`: `[hidden, hidden]` with bias.
    pub query: Linear,
    /// `key`: `[hidden, kv_dim]` with bias; `kv_dim` is `hidden` in
    /// self-attention and `encoder_hidden_size` (the vision width) in
    /// cross-attention.
    pub key: Linear,
    /// `value`: `[hidden, kv_dim]` with bias, as `key`.
    pub value: Linear,
    num_heads: i64,
    kernel: AttentionImpl,
}

/// Attention followed by `dense`, residual and LayerNorm (HF
/// `InstructBlipQFormerAttention` = `attention` + `output`).
#[derive(Debug)]
pub struct QFormerAttention {
    /// `attention`: the query/key/value projections.
    pub attention: QFormerMultiHeadAttention,
    /// `output.dense` and `output.LayerNorm`.
    pub output: DenseNorm,
}

/// `LayerNorm(dense(x) + residual)` (BERT's `SelfOutput` / `Output`).
#[derive(Debug)]
pub struct DenseNorm {
    /// `dense`: `[hidden, in]` with bias (`in` is `hidden` after attention,
    /// `intermediate_size` after a feed-forward).
    pub dense: Linear,
    /// Checkpoint name `LayerNorm`.
    pub layer_norm: LayerNorm,
}

impl DenseNorm {
    fn load(w: &Weights, in_dim: i64, d: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(&w.pp("dense"), in_dim, d, true)?,
            layer_norm: LayerNorm::load(&w.pp("LayerNorm"), d, eps)?,
        })
    }

    fn forward(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = self.dense.forward(xs)?.f_add(residual)?;
        Ok(self.layer_norm.forward(&h)?)
    }
}

impl QFormerAttention {
    fn load(w: &Weights, cfg: &QFormerConfig, kv_dim: i64) -> Result<Self> {
        let d = cfg.hidden_size;
        let a = w.pp("attention");
        Ok(Self {
            attention: QFormerMultiHeadAttention {
                query: Linear::load(&a.pp("query"), d, d, true)?,
                key: Linear::load(&a.pp("key"), kv_dim, d, true)?,
                value: Linear::load(&a.pp("value"), kv_dim, d, true)?,
                num_heads: cfg.num_attention_heads,
                kernel: cfg.attention,
            },
            output: DenseNorm::load(&w.pp("output"), d, d, cfg.layer_norm_eps)?,
        })
    }

    /// `xs` attends to `kv` (itself for self-attention) under `mask`
    /// (boolean, `true` = attend, broadcastable to `[batch, heads, q, k]`).
    fn forward(&self, xs: &Tensor, kv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let a = &self.attention;
        let split = |t: Tensor| attention::split_heads(&t, a.num_heads);
        let q = split(a.query.forward(xs)?)?;
        let k = split(a.key.forward(kv)?)?;
        let v = split(a.value.forward(kv)?)?;
        let opts = AttentionOptions {
            mask,
            ..AttentionOptions::default()
        };
        let out = attention::merge_heads(&attention::attention_with(a.kernel, &q, &k, &v, opts)?)?;
        self.output.forward(&out, xs)
    }
}

/// `dense → activation` (BERT's `Intermediate`).
#[derive(Debug)]
pub struct QFormerIntermediate {
    /// `dense`: `[intermediate_size, hidden]` with bias.
    pub dense: Linear,
    /// After `dense` (`hidden_act`).
    pub activation: Activation,
}

/// One Q-Former layer.
#[derive(Debug)]
pub struct QFormerLayer {
    /// `attention`: self-attention over queries and text.
    pub attention: QFormerAttention,
    /// Present on layers with `layer % cross_attention_frequency == 0`.
    pub crossattention: Option<QFormerAttention>,
    /// `intermediate`: first half of the text tokens' feed-forward.
    pub intermediate: QFormerIntermediate,
    /// `output`: second half of the text tokens' feed-forward, with residual
    /// and LayerNorm.
    pub output: DenseNorm,
    /// `intermediate_query`: first half of the query tokens' feed-forward.
    pub intermediate_query: QFormerIntermediate,
    /// `output_query`: second half of the query tokens' feed-forward, with
    /// residual and LayerNorm.
    pub output_query: DenseNorm,
}

impl QFormerLayer {
    fn load(w: &Weights, cfg: &QFormerConfig, index: i64) -> Result<Self> {
        let (d, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let intermediate = |name: &str| -> Result<QFormerIntermediate> {
            Ok(QFormerIntermediate {
                dense: Linear::load(&w.pp(name).pp("dense"), d, i, true)?,
                activation: cfg.hidden_act,
            })
        };
        Ok(Self {
            attention: QFormerAttention::load(&w.pp("attention"), cfg, d)?,
            crossattention: if cfg.has_cross_attention(index) {
                Some(QFormerAttention::load(
                    &w.pp("crossattention"),
                    cfg,
                    cfg.encoder_hidden_size,
                )?)
            } else {
                None
            },
            intermediate: intermediate("intermediate")?,
            output: DenseNorm::load(&w.pp("output"), i, d, eps)?,
            intermediate_query: intermediate("intermediate_query")?,
            output_query: DenseNorm::load(&w.pp("output_query"), i, d, eps)?,
        })
    }

    fn feed_forward(inter: &QFormerIntermediate, out: &DenseNorm, xs: &Tensor) -> Result<Tensor> {
        let h = inter.activation.forward(&inter.dense.forward(xs)?)?;
        out.forward(&h, xs)
    }

    fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        image: &Tensor,
        image_mask: Option<&Tensor>,
        queries: i64,
    ) -> Result<Tensor> {
        let attended = self.attention.forward(xs, xs, mask)?;
        let total = attended.size()[1];
        let mut query_part = attended.f_narrow(1, 0, queries)?;
        if let Some(cross) = &self.crossattention {
            query_part = cross.forward(&query_part, image, image_mask)?;
        }
        let query_out =
            Self::feed_forward(&self.intermediate_query, &self.output_query, &query_part)?;
        if total == queries {
            return Ok(query_out);
        }
        let text = attended.f_narrow(1, queries, total - queries)?;
        let text_out = Self::feed_forward(&self.intermediate, &self.output, &text)?;
        Ok(Tensor::f_cat(&[query_out, text_out], 1)?)
    }
}

/// The Q-Former.
#[derive(Debug)]
pub struct QFormer {
    /// `embeddings`: the text embeddings and the LayerNorm over queries and
    /// text.
    pub embeddings: QFormerEmbeddings,
    /// `encoder.layer`
    pub layers: Vec<QFormerLayer>,
    config: QFormerConfig,
}

impl QFormer {
    /// Loads the Q-Former from `w` (the position of `embeddings` and
    /// `encoder`, i.e. `qformer`).
    pub fn load(w: &Weights, cfg: &QFormerConfig) -> Result<Self> {
        let lw = w.pp("encoder").pp("layer");
        Ok(Self {
            embeddings: QFormerEmbeddings::load(&w.pp("embeddings"), cfg)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| QFormerLayer::load(&lw.pp(i), cfg, i))
                .collect::<Result<Vec<_>>>()?,
            config: cfg.clone(),
        })
    }

    /// The Q-Former's config.
    pub fn config(&self) -> &QFormerConfig {
        &self.config
    }

    /// Runs the queries, the instruction text and the image tokens through
    /// the Q-Former and returns the query part of the last hidden state.
    /// `image_mask` (1 = attend) defaults to all image tokens.
    ///
    /// # Shapes
    /// queries `[batch or 1, Q, hidden]`, text `[batch, T]`, image
    /// `[batch, N, encoder_hidden]`, image mask `[batch, N]` →
    /// `[batch, Q, hidden]`
    pub fn forward(
        &self,
        queries: &Tensor,
        text: Option<&QFormerInput>,
        image: &Tensor,
        image_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let kind = self.embeddings.layernorm.weight.kind();
        let (batch, tokens, width) = match image.size()[..] {
            [b, n, e] if b > 0 && n > 0 && e == cfg.encoder_hidden_size => (b, n, e),
            ref other => {
                return Err(Error::input(
                    "Q-Former image tokens",
                    format!("[batch, tokens, {}]", cfg.encoder_hidden_size),
                    other.to_vec(),
                ));
            }
        };
        let queries = match queries.size()[..] {
            [b, q, d] if (b == 1 || b == batch) && q > 0 && d == cfg.hidden_size => {
                queries.f_expand([batch, q, d], false)?.f_to_kind(kind)?
            }
            ref other => {
                return Err(Error::input(
                    "Q-Former query tokens",
                    format!("[{batch} or 1, queries, {}]", cfg.hidden_size),
                    other.to_vec(),
                ));
            }
        };
        let num_queries = queries.size()[1];
        let image = image.f_to_kind(kind)?;

        let mask = match text {
            Some(t) => {
                let ids_shape = t.input_ids.size();
                if ids_shape.len() != 2
                    || ids_shape[0] != batch
                    || t.attention_mask.size() != ids_shape
                {
                    return Err(Error::input(
                        "Q-Former text ids and mask",
                        format!("two [{batch}, tokens] tensors"),
                        (ids_shape, t.attention_mask.size()),
                    ));
                }
                let device = queries.device();
                let text_mask = t.attention_mask.f_to_device(device)?.f_ne(0)?;
                let query_mask = Tensor::f_ones([batch, num_queries], (Kind::Bool, device))?;
                let full = Tensor::f_cat(&[query_mask, text_mask], 1)?;
                Some(full.f_view([batch, 1, 1, -1])?)
            }
            None => None,
        };
        let image_mask = match image_mask {
            Some(m) if m.size() == [batch, tokens] => {
                Some(m.f_ne(0)?.f_view([batch, 1, 1, tokens])?)
            }
            Some(m) => {
                return Err(Error::input(
                    "Q-Former image mask",
                    format!("[{batch}, {tokens}] for image tokens of width {width}"),
                    m.size(),
                ));
            }
            None => None,
        };

        let ids = text
            .map(|t| t.input_ids.f_to_device(queries.device()))
            .transpose()?;
        let mut xs = self.embeddings.forward(&queries, ids.as_ref())?;
        for layer in &self.layers {
            xs = layer.forward(&xs, mask.as_ref(), &image, image_mask.as_ref(), num_queries)?;
        }
        Ok(xs.f_narrow(1, 0, num_queries)?)
    }
}

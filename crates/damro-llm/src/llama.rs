//! The LLaMA / Vicuna decoder behind LLaVA-1.5 and InstructBLIP-Vicuna.
//!
//! Follows transformers 5.23's `models/llama/modeling_llama.py`: pre-norm
//! decoder layers (RMS norm, self-attention with RoPE and grouped-query
//! heads, RMS norm, SwiGLU MLP), a final RMS norm and a tied or untied
//! `lm_head`. Attention runs through libtorch's fused SDPA with a boolean
//! mask built from the cache's padding mask and causality.
//!
//! The model takes input embeddings, so a caller can splice visual tokens
//! in ([`Llama::embed`] turns token ids into embeddings), and runs on a
//! [`KvCache`] owned by the caller. Logits are computed only where asked
//! ([`LogitsAt`]), never for a whole prefill unless requested.

use damro_nn::attention::{
    AttentionImpl, AttentionOptions, attend_rows, attention_with, decode_attention, merge_heads,
    split_heads,
};
use damro_nn::{Activation, Embedding, Linear, Module, RmsNorm, Weights, linear_kernel};
use tch::{Kind, Tensor};

use crate::capture::{AttentionCapture, CapturedAttention, Recorder, attention_with_weights};
use crate::config::LlamaConfig;
use crate::kv_cache::{CacheShape, KvCache, StepMask};
use crate::rope::{RotaryEmbedding, apply_rotary};
use crate::{Error, Result};

/// Which positions of a step get logits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogitsAt {
    /// The last column only (what generation needs); with left padding the
    /// last column is real for every row.
    Last,
    /// Every column of the step.
    All,
    /// These columns of the step (0-based within the step).
    Columns(Vec<i64>),
}

/// The input of one forward step: embeddings, optionally left-padded.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// `[batch, step, hidden]`, in the model's dtype and on its device.
    pub embeds: &'a Tensor,
    /// Real tokens per row (the last ones of the step; the rest is left
    /// padding). `None`: every column is real.
    pub row_lengths: Option<&'a [i64]>,
}

impl<'a> Input<'a> {
    /// Every column of every row is a real token.
    pub fn new(embeds: &'a Tensor) -> Self {
        Self {
            embeds,
            row_lengths: None,
        }
    }

    /// Rows left-padded to a common length (see [`crate::left_pad`]).
    pub fn left_padded(embeds: &'a Tensor, row_lengths: &'a [i64]) -> Self {
        Self {
            embeds,
            row_lengths: Some(row_lengths),
        }
    }
}

impl<'a> From<&'a Tensor> for Input<'a> {
    fn from(embeds: &'a Tensor) -> Self {
        Self::new(embeds)
    }
}

/// SwiGLU feed-forward: `down(act(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    /// `gate_proj`: `[intermediate, hidden]`, the activated branch.
    pub gate_proj: Linear,
    /// `up_proj`: `[intermediate, hidden]`, the linear branch.
    pub up_proj: Linear,
    /// `down_proj`: `[hidden, intermediate]`, back to the residual width.
    pub down_proj: Linear,
    /// Activation of the gate (`hidden_act`; SiLU for LLaMA).
    pub act: Activation,
}

impl Mlp {
    fn load(w: &Weights, cfg: &LlamaConfig) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: Linear::load(&w.pp("gate_proj"), h, i, bias)?,
            up_proj: Linear::load(&w.pp("up_proj"), h, i, bias)?,
            down_proj: Linear::load(&w.pp("down_proj"), i, h, bias)?,
            act: cfg.hidden_act,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> damro_nn::Result<Tensor> {
        let gate = self.act.forward(&self.gate_proj.forward(xs)?)?;
        self.down_proj
            .forward(&gate.f_mul(&self.up_proj.forward(xs)?)?)
    }
}

/// Multi-head self-attention with RoPE and grouped-query heads.
#[derive(Debug)]
pub struct Attention {
    /// `q_proj`: `[heads * head_dim, hidden]`.
    pub q_proj: Linear,
    /// `k_proj`: `[kv_heads * head_dim, hidden]`.
    pub k_proj: Linear,
    /// `v_proj`: `[kv_heads * head_dim, hidden]`.
    pub v_proj: Linear,
    /// `o_proj`: `[hidden, heads * head_dim]`.
    pub o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    scale: f64,
}

impl Attention {
    fn load(w: &Weights, cfg: &LlamaConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let q = cfg.num_attention_heads * cfg.head_dim;
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: Linear::load(&w.pp("q_proj"), h, q, bias)?,
            k_proj: Linear::load(&w.pp("k_proj"), h, kv, bias)?,
            v_proj: Linear::load(&w.pp("v_proj"), h, kv, bias)?,
            o_proj: Linear::load(&w.pp("o_proj"), q, h, bias)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            scale: (cfg.head_dim as f64).powf(-0.5),
        })
    }

    /// Under [`LayerContext::last_only`] only the step's last column
    /// queries: the keys and values of every new token are still computed
    /// and cached, and that query attends to every key of its row (no
    /// causal mask); the result is then that column's alone.
    ///
    /// # Shapes
    /// xs `[batch, step, hidden]`, cos/sin `[batch, step, head_dim]` →
    /// `[batch, step, hidden]` (`[batch, 1, hidden]` under `last_only`)
    fn forward(&self, xs: &Tensor, ctx: &mut LayerContext<'_>) -> Result<Tensor> {
        let k = split_heads(&self.k_proj.forward(xs)?, self.kv_heads)?;
        let v = split_heads(&self.v_proj.forward(xs)?, self.kv_heads)?;
        let k = apply_rotary(&k, ctx.cos, ctx.sin)?;
        let (k, v) = ctx.cache.write(ctx.layer, ctx.start, &k, &v)?;
        let narrowed;
        let (queries, cos, sin, mask, causal) = if ctx.last_only {
            let last = |t: &Tensor| t.f_narrow(1, t.size()[1] - 1, 1);
            // The last query's row of the step mask ([batch, 1, 1, keys]).
            let mask = ctx
                .mask
                .map(|m| m.f_narrow(2, m.size()[2] - 1, 1))
                .transpose()?;
            narrowed = (last(xs)?, last(ctx.cos)?, last(ctx.sin)?, mask);
            let (x, cos, sin, mask) = &narrowed;
            (x, cos, sin, mask.as_ref(), false)
        } else {
            (xs, ctx.cos, ctx.sin, ctx.mask, ctx.causal)
        };
        let q = split_heads(&self.q_proj.forward(queries)?, self.heads)?;
        let q = apply_rotary(&q, cos, sin)?;
        if let Some(recorder) = ctx.capture.as_deref_mut()
            && recorder.wants_layer(ctx.layer)
        {
            let (out, weights) = attention_with_weights(&q, &k, &v, mask, causal, self.scale)?;
            recorder.record(&weights)?;
            return Ok(self.o_proj.forward(&merge_heads(&out)?)?);
        }
        let opts = AttentionOptions {
            mask,
            causal,
            scale: Some(self.scale),
            gqa: self.heads != self.kv_heads,
        };
        let out = match ctx.row_starts {
            Some(first) if ctx.native_attention => decode_attention(&q, &k, &v, first, self.scale)?,
            Some(first) => attend_rows(ctx.implementation, &q, &k, &v, first, opts)?,
            None => attention_with(ctx.implementation, &q, &k, &v, opts)?,
        };
        Ok(self.o_proj.forward(&merge_heads(&out)?)?)
    }
}

/// What every layer of one step shares.
struct LayerContext<'a> {
    cache: &'a mut KvCache,
    layer: usize,
    start: i64,
    cos: &'a Tensor,
    sin: &'a Tensor,
    /// The step's attention mask, shared by every layer (`None`: none).
    mask: Option<&'a Tensor>,
    /// Causal masking from column 0 instead of a mask.
    causal: bool,
    /// Per row, the first real key column, when each row attends over its
    /// own keys alone: left-padded decode steps on the CPU (one call per
    /// row, [`attend_rows`]), and every decode step that takes damro's own
    /// decode kernel.
    row_starts: Option<&'a [i64]>,
    /// Decode steps attend with damro's own kernel
    /// ([`damro_nn::attention::decode`]: every row and head in one call).
    native_attention: bool,
    implementation: AttentionImpl,
    /// Set while an attention capture runs.
    capture: Option<&'a mut Recorder>,
    /// The layer computes the step's last column alone (the final layer
    /// of a prompt whose logits are wanted only there).
    last_only: bool,
}

/// The attention mask of one step, built once and shared by every layer.
///
/// Left-padded decode steps ([`StepMask::Ranges`], e.g. DAMRO's two
/// branches in one cache) get the cache's padding mask: on CUDA (and any
/// device but the CPU) every row attends in one masked call, as one launch
/// per row and layer would dominate the step; on the CPU each row attends
/// over its real keys alone (damro's decode kernel, every row in one call,
/// or one SDPA call per row with [`attend_rows`], as the calibration chose)
/// and the mask is built only for an attention capture. SDPA gets an
/// additive mask in the model's dtype (0 or -inf), which libtorch would
/// otherwise rebuild from a boolean one in every layer; the eager kernel
/// keeps the boolean mask it fills with the dtype's lowest value, as
/// transformers does.
///
/// # Shapes
/// → `[batch, 1, step, start + step]` (`None` when no mask applies)
fn step_attention_mask(
    mask: &StepMask,
    cache: &KvCache,
    kind: Kind,
    implementation: AttentionImpl,
) -> Result<Option<Tensor>> {
    let allowed = match mask {
        StepMask::Explicit(m) => m.shallow_clone(),
        StepMask::Ranges(_) => {
            // One new column per row, every row's real keys one run: the
            // used part of the padding mask is exactly what each row sees.
            let real = cache.padding_mask()?;
            real.f_unsqueeze(1)?.f_unsqueeze(1)?
        }
        _ => return Ok(None),
    };
    Ok(Some(match implementation {
        AttentionImpl::Eager => allowed,
        AttentionImpl::Sdpa => {
            let blocked = allowed.f_logical_not()?;
            Tensor::f_zeros(allowed.size(), (kind, allowed.device()))?
                .f_masked_fill(&blocked, f64::NEG_INFINITY)?
        }
    }))
}

/// One pre-norm decoder layer.
#[derive(Debug)]
pub struct DecoderLayer {
    /// Causal self-attention (`self_attn`).
    pub self_attn: Attention,
    /// Feed-forward block (`mlp`).
    pub mlp: Mlp,
    /// RMS norm before the attention (`input_layernorm`, weight `[hidden]`).
    pub input_layernorm: RmsNorm,
    /// RMS norm before the MLP (`post_attention_layernorm`, weight `[hidden]`).
    pub post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn load(w: &Weights, cfg: &LlamaConfig) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::load(&w.pp("self_attn"), cfg)?,
            mlp: Mlp::load(&w.pp("mlp"), cfg)?,
            input_layernorm: RmsNorm::load(
                &w.pp("input_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            post_attention_layernorm: RmsNorm::load(
                &w.pp("post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
        })
    }

    /// # Shapes
    /// xs `[batch, step, hidden]` → `[batch, step, hidden]`
    /// (`[batch, 1, hidden]` under [`LayerContext::last_only`])
    fn forward(&self, xs: &Tensor, ctx: &mut LayerContext<'_>) -> Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.input_layernorm.forward(xs)?, ctx)?;
        let residual = if ctx.last_only {
            xs.f_narrow(1, xs.size()[1] - 1, 1)?
        } else {
            xs.shallow_clone()
        };
        let xs = residual.f_add(&attn)?;
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&xs)?)?;
        Ok(xs.f_add(&mlp)?)
    }
}

/// A LLaMA causal language model (`LlamaForCausalLM`).
#[derive(Debug)]
pub struct Llama {
    /// Token embedding (`model.embed_tokens`, `[vocab, hidden]`).
    pub embed_tokens: Embedding,
    /// The decoder layers (`model.layers.{i}`), `num_hidden_layers` of them.
    pub layers: Vec<DecoderLayer>,
    /// Final RMS norm before the LM head (`model.norm`, weight `[hidden]`).
    pub norm: RmsNorm,
    /// `[vocab, hidden]`; the embedding matrix itself when tied.
    pub lm_head: Linear,
    rotary: RotaryEmbedding,
    config: LlamaConfig,
    kind: Kind,
    attention: AttentionImpl,
}

impl Llama {
    /// Loads from a `Weights` position holding `model.*` and `lm_head.*`
    /// (for LLaVA and InstructBLIP: `w.pp("language_model")`). With tied
    /// embeddings the `lm_head` is the embedding matrix and a stored
    /// `lm_head.weight` is ignored, as transformers does.
    pub fn load(w: &Weights, config: &LlamaConfig) -> Result<Self> {
        let cfg = config;
        let m = w.pp("model");
        let embed_tokens = Embedding::load(&m.pp("embed_tokens"), cfg.vocab_size, cfg.hidden_size)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(&m.pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&m.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            w.ignore("lm_head");
            Linear {
                weight: embed_tokens.weight.shallow_clone(),
                bias: None,
            }
        } else {
            Linear::load(&w.pp("lm_head"), cfg.hidden_size, cfg.vocab_size, false)?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: RotaryEmbedding::new(cfg, w.device())?,
            config: cfg.clone(),
            kind: w.kind(),
            attention: AttentionImpl::default(),
        })
    }

    /// Chooses the attention kernel: fused SDPA (the default) or HF's eager
    /// order of operations, which reproduces references computed with
    /// `attn_implementation="eager"` to the last bit.
    pub fn with_attention(mut self, implementation: AttentionImpl) -> Self {
        self.attention = implementation;
        self
    }

    /// The attention kernel in use.
    pub fn attention(&self) -> AttentionImpl {
        self.attention
    }

    /// The config the model was built from.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The dtype of weights and activations.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The device of the weights.
    pub fn device(&self) -> tch::Device {
        self.embed_tokens.weight.device()
    }

    /// The geometry of this model's caches.
    pub fn cache_shape(&self) -> CacheShape {
        CacheShape {
            num_layers: self.config.num_hidden_layers,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
            kind: self.kind,
            device: self.device(),
        }
    }

    /// An empty cache for `batch` rows with room for `capacity` tokens.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> Result<KvCache> {
        KvCache::new(self.cache_shape(), batch, capacity)
    }

    /// Token embeddings.
    ///
    /// # Shapes
    /// ids `[..]` (int64, on the model's device) → `[.., hidden]`
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.forward(ids)?)
    }

    /// Token embeddings of a list of ids.
    ///
    /// # Shapes
    /// → `[1, ids.len(), hidden]`
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Tensor> {
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let t = Tensor::f_from_slice(&ids)?
            .f_to_device(self.device())?
            .f_unsqueeze(0)?;
        self.embed(&t)
    }

    /// Runs one step on `cache` and returns the final (normed) hidden
    /// states of every column of the step. The step's keys and values are
    /// appended to the cache; on error the cache is left as it was.
    ///
    /// # Shapes
    /// embeds `[batch, step, hidden]` → `[batch, step, hidden]`
    pub fn forward_hidden<'a>(
        &self,
        input: impl Into<Input<'a>>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        self.forward_hidden_with(input.into(), cache, None, false)
    }

    /// With `last_only`, the final layer runs the last column alone and
    /// the result is `[batch, 1, hidden]` (the cache is filled as always).
    fn forward_hidden_with(
        &self,
        input: Input<'_>,
        cache: &mut KvCache,
        capture: Option<&mut Recorder>,
        last_only: bool,
    ) -> Result<Tensor> {
        self.check_input(input.embeds, cache)?;
        let step_len = input.embeds.size()[1];
        let before = cache.len();
        let result = self.run_layers(input, step_len, cache, capture, last_only);
        if result.is_err() && cache.len() > before {
            // Undo the half-written step so the cache stays usable.
            cache.truncate(before)?;
        }
        result
    }

    fn run_layers(
        &self,
        input: Input<'_>,
        step_len: i64,
        cache: &mut KvCache,
        capture: Option<&mut Recorder>,
        last_only: bool,
    ) -> Result<Tensor> {
        let step = cache.begin_step(step_len, input.row_lengths)?;
        let (cos, sin) = self
            .rotary
            .cos_sin(&step.positions, step.max_row_len, self.kind)?;
        // damro's decode kernel where the calibration chose it (SDPA
        // semantics: the eager kernel stays HF's, for parity checks).
        let native_attention = step_len == 1
            && self.attention == AttentionImpl::Sdpa
            && linear_kernel::native_decode_attention(cache.batch(), self.kind, self.device());
        let every_key;
        let row_starts = match &step.mask {
            StepMask::Ranges(first) if self.device() == tch::Device::Cpu => Some(first.as_slice()),
            StepMask::None if native_attention => {
                every_key = vec![0; cache.batch() as usize];
                Some(every_key.as_slice())
            }
            _ => None,
        };
        // Rows attending over their own keys need no mask, unless a
        // capture reads it.
        let mask = match row_starts {
            Some(_) if capture.is_none() => None,
            _ => step_attention_mask(&step.mask, cache, self.kind, self.attention)?,
        };
        let mut ctx = LayerContext {
            cache,
            layer: 0,
            start: step.start,
            cos: &cos,
            sin: &sin,
            mask: mask.as_ref(),
            causal: matches!(step.mask, StepMask::Causal),
            row_starts,
            native_attention,
            implementation: self.attention,
            capture,
            last_only: false,
        };
        let mut xs = input.embeds.shallow_clone();
        let final_layer = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            ctx.layer = i;
            ctx.last_only = last_only && i == final_layer;
            xs = layer.forward(&xs, &mut ctx)?;
        }
        Ok(self.norm.forward(&xs)?)
    }

    /// Logits of final hidden states.
    ///
    /// # Shapes
    /// `[.., hidden]` → `[.., vocab]`
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?)
    }

    /// Runs one step on `cache` and returns logits at the asked columns.
    ///
    /// A decoding step (one new token per row) runs its small-batch linear
    /// layers on the kernels calibrated for this machine
    /// ([`damro_nn::linear_kernel`]); the first decoding step of a batch
    /// size first calibrates them on throw-away copies of itself (the
    /// cache is rolled back after each), so every returned result comes
    /// from the same kernels.
    ///
    /// # Shapes
    /// embeds `[batch, step, hidden]` → `[batch, n, vocab]` with `n` = 1
    /// ([`LogitsAt::Last`]), `step` ([`LogitsAt::All`]) or the number of
    /// columns asked for
    pub fn forward<'a>(
        &self,
        input: impl Into<Input<'a>>,
        cache: &mut KvCache,
        at: LogitsAt,
    ) -> Result<Tensor> {
        let input = input.into();
        if input.embeds.size().get(1) != Some(&1) {
            return self.forward_at(input, cache, at);
        }
        let keys = self.small_batch_keys(cache.batch());
        if !linear_kernel::is_calibrated(keys)? {
            let before = cache.len();
            linear_kernel::calibrate_kernels(|| {
                let trial = self.forward_at(input, cache, LogitsAt::Last);
                cache.truncate(before)?;
                trial.map(drop)
            })?;
        }
        linear_kernel::with_tuned_kernels(|| self.forward_at(input, cache, at))
    }

    /// The calibration keys of every linear layer of a decoding step over
    /// `rows` rows (none off the CPU or in another dtype than f32).
    fn small_batch_keys(&self, rows: i64) -> Vec<linear_kernel::LinearKey> {
        self.layers
            .iter()
            .flat_map(|l| {
                let (a, m) = (&l.self_attn, &l.mlp);
                [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]
                    .into_iter()
                    .chain([&m.gate_proj, &m.up_proj, &m.down_proj])
            })
            .chain([&self.lm_head])
            .filter_map(|linear| linear.small_batch_key(rows))
            .collect()
    }

    /// [`Llama::forward`] on the kernels of the current scope.
    fn forward_at(&self, input: Input<'_>, cache: &mut KvCache, at: LogitsAt) -> Result<Tensor> {
        let step = input.embeds.size().get(1).copied().unwrap_or(0);
        let index = match &at {
            LogitsAt::Columns(cols) => {
                if let Some(bad) = cols.iter().find(|&&c| c < 0 || c >= step) {
                    return Err(Error::shape(
                        "LogitsAt::Columns",
                        format!("columns in 0..{step}"),
                        bad,
                    ));
                }
                Some(Tensor::f_from_slice(cols)?.f_to_device(self.device())?)
            }
            _ => None,
        };
        // Logits at the last column of a multi-token step (a prompt): the
        // final layer's attention output and MLP are needed there alone,
        // about a tenth of an 8-layer prefill saved (a 32-layer one: 1/40).
        let last_only = matches!(at, LogitsAt::Last) && step > 1;
        let hidden = self.forward_hidden_with(input, cache, None, last_only)?;
        let hidden = match (at, index) {
            (LogitsAt::Last, _) if last_only => hidden,
            (LogitsAt::Last, _) => hidden.f_narrow(1, step - 1, 1)?,
            (_, Some(index)) => hidden.f_index_select(1, &index)?,
            (_, None) => hidden,
        };
        self.logits(&hidden)
    }

    /// [`Llama::forward`] that also records the attention weights the
    /// capture selects (see [`crate::capture`]): per row, the step's last
    /// query over the row's real tokens, averaged over the selected heads
    /// and layers. The selected layers run HF's eager attention instead of
    /// the fused kernel (equal to ~1e-6, so near-tied greedy choices may
    /// differ from an uncaptured run).
    ///
    /// # Shapes
    /// as [`Llama::forward`]; each captured row `[row's tokens]`
    ///
    /// # Errors
    /// As [`Llama::forward`], and [`Error::Capture`] for a selection out of
    /// the model's range.
    pub fn forward_with_attention<'a>(
        &self,
        input: impl Into<Input<'a>>,
        cache: &mut KvCache,
        at: LogitsAt,
        capture: &AttentionCapture,
    ) -> Result<(Tensor, CapturedAttention)> {
        capture.validate(
            self.config.num_hidden_layers as usize,
            self.config.num_attention_heads as usize,
        )?;
        let mut recorder = Recorder::new(capture, self.device())?;
        let input = input.into();
        let step = input.embeds.size().get(1).copied().unwrap_or(0);
        let hidden = self.forward_hidden_with(input, cache, Some(&mut recorder), false)?;
        let captured = recorder.finish(cache)?;
        let hidden = match at {
            LogitsAt::Last => hidden.f_narrow(1, step - 1, 1)?,
            LogitsAt::All => hidden,
            LogitsAt::Columns(cols) => {
                if let Some(bad) = cols.iter().find(|&&c| c < 0 || c >= step) {
                    return Err(Error::shape(
                        "LogitsAt::Columns",
                        format!("columns in 0..{step}"),
                        bad,
                    ));
                }
                let index = Tensor::f_from_slice(&cols)?.f_to_device(self.device())?;
                hidden.f_index_select(1, &index)?
            }
        };
        Ok((self.logits(&hidden)?, captured))
    }

    fn check_input(&self, embeds: &Tensor, cache: &KvCache) -> Result<()> {
        let size = embeds.size();
        let ok_shape = matches!(size[..], [b, t, h] if b == cache.batch() && t > 0 && h == self.config.hidden_size);
        if !ok_shape {
            return Err(Error::shape(
                "input embeddings",
                format!("[{}, step > 0, {}]", cache.batch(), self.config.hidden_size),
                size,
            ));
        }
        if embeds.kind() != self.kind || embeds.device() != self.device() {
            return Err(Error::shape(
                "input embeddings",
                format!("{:?} on {:?}", self.kind, self.device()),
                format!("{:?} on {:?}", embeds.kind(), embeds.device()),
            ));
        }
        if cache.shape() != self.cache_shape() {
            return Err(Error::Cache(format!(
                "cache of shape {:?} does not fit this model ({:?})",
                cache.shape(),
                self.cache_shape()
            )));
        }
        Ok(())
    }
}

//! A small GPT-2-style decoder (learned absolute positions, LayerNorm,
//! fused q/k/v, GELU MLP, tied head) that is not damro's LLaMA, running on
//! damro's public [`KvCache`] write path.

use damro::llm::{CacheShape, KvCache, Step};
use damro::nn::attention::{AttentionOptions, attention, merge_heads, split_heads};
use damro::{LanguageModel, Result, Rows};
use tch::{Device, Kind, Tensor};

/// The decoder's sizes.
#[derive(Debug, Clone, Copy)]
pub struct GptConfig {
    /// Vocabulary size.
    pub vocab: i64,
    /// Hidden size.
    pub hidden: i64,
    /// Attention heads.
    pub heads: i64,
    /// Decoder blocks.
    pub layers: i64,
    /// Learned positions.
    pub max_positions: i64,
}

/// `x Wᵀ + b`.
#[derive(Debug)]
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn random(inp: i64, out: i64, opts: (Kind, Device)) -> Self {
        let scale = (inp as f64).powf(-0.5);
        Self {
            weight: Tensor::randn([out, inp], opts) * scale,
            bias: Tensor::randn([out], opts) * 0.02,
        }
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.f_linear(&self.weight, Some(&self.bias))?)
    }
}

#[derive(Debug)]
struct Block {
    ln_1: (Tensor, Tensor),
    c_attn: Dense,
    c_proj: Dense,
    ln_2: (Tensor, Tensor),
    c_fc: Dense,
    mlp_proj: Dense,
}

fn layer_norm(xs: &Tensor, (w, b): &(Tensor, Tensor)) -> Result<Tensor> {
    Ok(xs.f_layer_norm(w.size(), Some(w), Some(b), 1e-5, true)?)
}

/// The decoder.
#[derive(Debug)]
pub struct TinyGpt {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: (Tensor, Tensor),
    config: GptConfig,
}

impl TinyGpt {
    /// Random weights drawn after `tch::manual_seed(seed)`.
    pub fn random(config: GptConfig, seed: i64, kind: Kind, device: Device) -> Self {
        tch::manual_seed(seed);
        let o = (kind, device);
        let h = config.hidden;
        let norm = || (Tensor::ones([h], o), Tensor::zeros([h], o));
        let blocks = (0..config.layers)
            .map(|_| Block {
                ln_1: norm(),
                c_attn: Dense::random(h, 3 * h, o),
                c_proj: Dense::random(h, h, o),
                ln_2: norm(),
                c_fc: Dense::random(h, 4 * h, o),
                mlp_proj: Dense::random(4 * h, h, o),
            })
            .collect();
        Self {
            wte: Tensor::randn([config.vocab, h], o) * 0.3,
            wpe: Tensor::randn([config.max_positions, h], o) * 0.5,
            blocks,
            ln_f: norm(),
            config,
        }
    }

    /// Token embeddings.
    ///
    /// # Shapes
    /// ids `[..]` → `[.., hidden]`
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_embedding(&self.wte, ids, -1, false, false)?)
    }

    /// The whole sequence at once, no cache, causal: what a naive
    /// implementation recomputes at every step.
    ///
    /// # Shapes
    /// embeds `[1, len, hidden]` → logits `[1, len, vocab]`
    pub fn forward_full(&self, embeds: &Tensor) -> Result<Tensor> {
        let len = embeds.size()[1];
        let positions = Tensor::f_arange(len, (Kind::Int64, embeds.device()))?.f_unsqueeze(0)?;
        let mut xs = embeds.f_add(&self.wpe.f_index_select(0, &positions.f_view([-1])?)?)?;
        for block in &self.blocks {
            xs = self.block(block, &xs, |q, k, v| {
                let causal = AttentionOptions {
                    causal: true,
                    ..Default::default()
                };
                Ok(attention(q, k, v, causal)?)
            })?;
        }
        self.head(&xs)
    }

    fn head(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(layer_norm(xs, &self.ln_f)?.f_matmul(&self.wte.f_tr()?)?)
    }

    fn block(
        &self,
        b: &Block,
        xs: &Tensor,
        attend: impl FnOnce(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let qkv = b.c_attn.forward(&layer_norm(xs, &b.ln_1)?)?;
        let parts = qkv.f_split(self.config.hidden, -1)?;
        let heads = |t: &Tensor| Ok::<_, damro::Error>(split_heads(t, self.config.heads)?);
        let out = attend(&heads(&parts[0])?, &heads(&parts[1])?, &heads(&parts[2])?)?;
        let xs = xs.f_add(&b.c_proj.forward(&merge_heads(&out)?)?)?;
        let mlp = b.c_fc.forward(&layer_norm(&xs, &b.ln_2)?)?.f_gelu("tanh")?;
        Ok(xs.f_add(&b.mlp_proj.forward(&mlp)?)?)
    }

    /// One cached step: positions from the cache, keys and values written
    /// through [`KvCache::write`], attention under the cache's mask.
    fn step(&self, embeds: &Tensor, step: &Step, cache: &mut KvCache) -> Result<Tensor> {
        let mask = cache.attention_mask(step)?;
        let mut xs = embeds.f_add(&Tensor::f_embedding(
            &self.wpe,
            &step.positions,
            -1,
            false,
            false,
        )?)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            xs = self.block(block, &xs, |q, k, v| {
                let (k, v) = cache.write(layer, step.start, k, v)?;
                let opts = AttentionOptions {
                    mask: mask.as_ref(),
                    ..Default::default()
                };
                Ok(attention(q, &k, &v, opts)?)
            })?;
        }
        self.head(&xs)
    }
}

impl LanguageModel for TinyGpt {
    type Cache = KvCache;
    type RowState = ();

    fn device(&self) -> Device {
        self.wte.device()
    }

    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed(&ids.f_unsqueeze(1)?)
    }

    fn new_cache(&self, rows: i64, capacity: i64) -> Result<KvCache> {
        let shape = CacheShape {
            num_layers: self.config.layers,
            kv_heads: self.config.heads,
            head_dim: self.config.hidden / self.config.heads,
            kind: self.wte.kind(),
            device: self.wte.device(),
        };
        Ok(KvCache::new(shape, rows, capacity)?)
    }

    fn forward(&self, rows: Rows<'_, ()>, cache: &mut KvCache) -> Result<Tensor> {
        let len = rows.embeds.size()[1];
        let before = cache.len();
        let step = cache.begin_step(len, Some(rows.row_lengths))?;
        match self.step(rows.embeds, &step, cache) {
            Ok(logits) => Ok(logits.f_select(1, len - 1)?),
            Err(e) => {
                // The cache's contract: undo a half-written step.
                cache.truncate(before)?;
                Err(e)
            }
        }
    }
}

//! Opt-in capture of the decoder's attention weights, for the paper's
//! analysis (which image tokens the decoder attends to when it generates a
//! word).
//!
//! With an [`AttentionCapture`], [`crate::Llama::forward_with_attention`]
//! computes the selected layers' attention in HF's eager order of
//! operations (`softmax(q kᵀ · scale + mask)` in f32), so the weights exist,
//! and reduces them on the fly to the mean over the selected heads and
//! layers: memory stays one `[batch, step, keys]` buffer whatever the model
//! size. Layers that are not selected keep the fused kernel. Without a
//! capture nothing changes: the decoder never computes weights.

use tch::{Kind, Tensor};

use crate::kv_cache::KvCache;
use crate::{Error, Result};

/// Which layers or heads a capture averages over.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Selection {
    /// All of them (the default: the paper pins neither).
    #[default]
    All,
    /// These indices (0-based).
    Only(Vec<usize>),
}

impl Selection {
    fn contains(&self, i: usize) -> bool {
        match self {
            Selection::All => true,
            Selection::Only(v) => v.contains(&i),
        }
    }
}

/// What to capture: the mean of the attention weights over the selected
/// layers and heads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttentionCapture {
    /// Decoder layers averaged over.
    pub layers: Selection,
    /// Heads averaged over (query heads).
    pub heads: Selection,
}

impl AttentionCapture {
    /// Checks the selection against a model of `layers` layers and `heads`
    /// heads.
    ///
    /// # Errors
    /// [`Error::Capture`] for an empty selection or an index out of range.
    pub fn validate(&self, layers: usize, heads: usize) -> Result<()> {
        for (what, sel, n) in [
            ("layer", &self.layers, layers),
            ("head", &self.heads, heads),
        ] {
            if let Selection::Only(v) = sel {
                if v.is_empty() {
                    return Err(Error::Capture(format!("no {what} selected")));
                }
                if let Some(bad) = v.iter().find(|&&i| i >= n) {
                    return Err(Error::Capture(format!(
                        "{what} {bad} out of range (the model has {n})"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The running mean of one forward's selected attention weights.
#[derive(Debug)]
pub(crate) struct Recorder {
    spec: AttentionCapture,
    head_index: Option<Tensor>,
    sum: Option<Tensor>,
    layers: usize,
}

impl Recorder {
    pub(crate) fn new(spec: &AttentionCapture, device: tch::Device) -> Result<Self> {
        let head_index = match &spec.heads {
            Selection::All => None,
            Selection::Only(v) => {
                let ids: Vec<i64> = v.iter().map(|&i| i as i64).collect();
                Some(Tensor::f_from_slice(&ids)?.f_to_device(device)?)
            }
        };
        Ok(Self {
            spec: spec.clone(),
            head_index,
            sum: None,
            layers: 0,
        })
    }

    pub(crate) fn wants_layer(&self, layer: usize) -> bool {
        self.spec.layers.contains(layer)
    }

    /// Adds one layer's weights `[batch, heads, step, keys]`.
    pub(crate) fn record(&mut self, weights: &Tensor) -> Result<()> {
        let picked = match &self.head_index {
            Some(index) => weights.f_index_select(1, index)?,
            None => weights.shallow_clone(),
        };
        let mean = picked.f_mean_dim(1, false, Kind::Float)?;
        self.sum = Some(match self.sum.take() {
            Some(sum) => sum.f_add(&mean)?,
            None => mean,
        });
        self.layers += 1;
        Ok(())
    }

    /// The last query's mean attention of every row over that row's real
    /// tokens, in token order, on the CPU.
    pub(crate) fn finish(self, cache: &KvCache) -> Result<CapturedAttention> {
        let Some(sum) = self.sum else {
            return Err(Error::Capture("no layer was captured".into()));
        };
        let mean = sum.f_div_scalar(self.layers as f64)?;
        let step = mean.size()[1];
        let last = mean.f_select(1, step - 1)?.f_to_device(tch::Device::Cpu)?;
        let keys = last.size()[1];
        let rows = (0..cache.batch())
            .map(|row| {
                let real: Vec<i64> = (0..keys)
                    .filter(|&c| cache.is_real(row as usize, c as usize))
                    .collect();
                let index = Tensor::f_from_slice(&real)?;
                Ok(last.f_select(0, row)?.f_index_select(0, &index)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CapturedAttention { rows })
    }
}

/// What a capturing forward recorded: per row, the attention of the step's
/// last query (the position whose logits choose the next token) over the
/// row's real tokens (padding removed), averaged over the selected heads
/// and layers.
#[derive(Debug)]
pub struct CapturedAttention {
    /// Row `r`: `[tokens of row r]` f32 on the CPU, summing to 1.
    pub rows: Vec<Tensor>,
}

/// Attention that also returns its weights, in HF's eager order of
/// operations (see [`damro_nn::attention::eager_attention`]).
///
/// # Shapes
/// q `[batch, heads, q_len, d]`, k and v `[batch, kv_heads, k_len, d]` →
/// output `[batch, heads, q_len, d]`, weights `[batch, heads, q_len, k_len]`
pub(crate) fn attention_with_weights(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let heads = q.size()[1];
    let kv_heads = k.size()[1];
    let (k, v) = if kv_heads != heads {
        let groups = heads / kv_heads;
        (
            k.f_repeat_interleave_self_int(groups, 1, None)?,
            v.f_repeat_interleave_self_int(groups, 1, None)?,
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let mut w = q.f_matmul(&k.f_transpose(-2, -1)?)?.f_mul_scalar(scale)?;
    let lowest = lowest(w.kind());
    if causal {
        let (q_len, k_len) = (q.size()[2], k.size()[2]);
        let above =
            Tensor::f_ones([q_len, k_len], (Kind::Bool, q.device()))?.f_triu(k_len - q_len + 1)?;
        w = w.f_masked_fill(&above, lowest)?;
    }
    if let Some(keep) = mask {
        w = if keep.kind() == Kind::Bool {
            w.f_masked_fill(&keep.f_logical_not()?, lowest)?
        } else {
            w.f_add(keep)?
        };
    }
    let weights = w.f_softmax(-1, Kind::Float)?.f_to_kind(q.kind())?;
    Ok((weights.f_matmul(&v)?, weights))
}

fn lowest(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.389_531_389_251_535e38,
        Kind::Double => f64::MIN,
        _ => f64::from(f32::MIN),
    }
}

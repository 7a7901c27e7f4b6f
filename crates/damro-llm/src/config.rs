//! LLaMA configuration, in two levels.
//!
//! [`LlamaConfigJson`] mirrors HF transformers' `LlamaConfig` as written in a
//! `config.json` (or in the `text_config` of a LLaVA / InstructBLIP config):
//! every field optional, because real files omit defaults. LLaVA-1.5's
//! `text_config`, for one, lists only a handful of fields and relies on
//! `LlamaConfig`'s defaults for the rest. [`LlamaConfigJson::into_config`]
//! fills in the defaults of transformers 5.23 (`models/llama/configuration_llama.py`,
//! `modeling_rope_utils.py`) and validates the result into [`LlamaConfig`],
//! the struct the model uses; a bad value is an error naming its field.
//!
//! Defaults: vocab 32000, hidden 4096, intermediate 11008, 32 layers, 32
//! heads, key/value heads = attention heads, `head_dim = hidden / heads`,
//! SiLU, 2048 positions, `rms_norm_eps` 1e-6, RoPE theta 10000, untied
//! embeddings, no biases, BOS 1, EOS 2.
//!
//! RoPE parameters come from `rope_scaling` (transformers 4) or
//! `rope_parameters` (transformers 5), the type from `rope_type` or `type`;
//! the base from that dict's `rope_theta`, else the top-level `rope_theta`,
//! else 10000. Supported types: `default`, `linear`, `dynamic`, `llama3`.

use std::path::Path;

use damro_nn::{Activation, Weights};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// RoPE parameters as written (`rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RopeParametersJson {
    /// `default`, `linear`, `dynamic` or `llama3`.
    pub rope_type: Option<String>,
    /// transformers 4 name of `rope_type`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// `rope_theta` inside the dict (transformers 5); overrides the top-level
    /// `rope_theta`. Default: the top-level value, else 10000.
    pub rope_theta: Option<f64>,
    /// `factor`: the scaling factor, required by the `linear`, `dynamic` and
    /// `llama3` types. No default.
    pub factor: Option<f64>,
    /// `low_freq_factor` of the `llama3` type (required there). No default.
    pub low_freq_factor: Option<f64>,
    /// `high_freq_factor` of the `llama3` type (required there; must exceed
    /// `low_freq_factor`). No default.
    pub high_freq_factor: Option<f64>,
    /// `original_max_position_embeddings` of the `llama3` type: the context
    /// length the model was trained with. Default: the config's
    /// `max_position_embeddings`.
    pub original_max_position_embeddings: Option<i64>,
    /// `partial_rotary_factor`: the share of each head that is rotated; only
    /// 1.0 (the default) is supported.
    pub partial_rotary_factor: Option<f64>,
}

/// `eos_token_id` is a single id or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id (`"eos_token_id": 2`).
    One(i64),
    /// A list of ids (`"eos_token_id": [128001, 128009]`).
    Many(Vec<i64>),
}

/// A LLaMA config as written in `config.json` / `text_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfigJson {
    /// `model_type`: must be `llama` when present.
    pub model_type: Option<String>,
    /// `architectures` (e.g. `["LlamaForCausalLM"]`): read but not used.
    pub architectures: Option<Vec<String>>,
    /// `vocab_size`: rows of the token embedding and the LM head. Default
    /// 32000.
    pub vocab_size: Option<i64>,
    /// `hidden_size`: width of the residual stream. Default 4096.
    pub hidden_size: Option<i64>,
    /// `intermediate_size`: width of the SwiGLU MLP's hidden layer. Default
    /// 11008.
    pub intermediate_size: Option<i64>,
    /// `num_hidden_layers`: number of decoder layers. Default 32.
    pub num_hidden_layers: Option<i64>,
    /// `num_attention_heads`: query heads per layer; must divide `hidden_size`.
    /// Default 32.
    pub num_attention_heads: Option<i64>,
    /// `num_key_value_heads`: key/value heads (grouped-query attention); must
    /// divide `num_attention_heads`. Default: `num_attention_heads`.
    pub num_key_value_heads: Option<i64>,
    /// `head_dim`: width of one head; must be even (RoPE). Default:
    /// `hidden_size / num_attention_heads`.
    pub head_dim: Option<i64>,
    /// `hidden_act`: the MLP activation's HF name. Default `silu`.
    pub hidden_act: Option<String>,
    /// `max_position_embeddings`: the context length the model was trained
    /// with. Default 2048.
    pub max_position_embeddings: Option<i64>,
    /// `rms_norm_eps`: epsilon of every RMS norm. Default 1e-6.
    pub rms_norm_eps: Option<f64>,
    /// `rope_theta` (transformers 4, top level): RoPE base wavelength. Default
    /// 10000.
    pub rope_theta: Option<f64>,
    /// `rope_scaling` (transformers 4): RoPE type and parameters; wins over
    /// `rope_parameters`. Default: plain RoPE.
    pub rope_scaling: Option<RopeParametersJson>,
    /// `rope_parameters` (transformers 5): RoPE type, parameters and base.
    /// Default: plain RoPE.
    pub rope_parameters: Option<RopeParametersJson>,
    /// `tie_word_embeddings`: whether the LM head reuses the token embedding.
    /// Default false.
    pub tie_word_embeddings: Option<bool>,
    /// `attention_bias`: whether the q/k/v/o projections have biases. Default
    /// false.
    pub attention_bias: Option<bool>,
    /// `mlp_bias`: whether the MLP projections have biases. Default false.
    pub mlp_bias: Option<bool>,
    /// `bos_token_id`: the beginning-of-sequence id. Default 1.
    pub bos_token_id: Option<i64>,
    /// `eos_token_id`: one end-of-sequence id or several. Default 2.
    pub eos_token_id: Option<TokenIds>,
    /// `pad_token_id`: the padding id, if any. Default none.
    pub pad_token_id: Option<i64>,
}

/// How RoPE frequencies are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// The original RoPE.
    None,
    /// Frequencies divided by `factor` (position interpolation).
    Linear {
        /// Position scale (`rope_scaling.factor`, > 0).
        factor: f64,
    },
    /// Dynamic NTK: the base grows once the sequence is longer than
    /// `max_position_embeddings`.
    Dynamic {
        /// How fast the base grows with the length (`rope_scaling.factor`, >
        /// 0).
        factor: f64,
    },
    /// Llama 3.1's band-wise frequency scaling.
    Llama3 {
        /// Wavelength scale of the low-frequency band (`factor`, > 0).
        factor: f64,
        /// Wavelengths longer than `original_max_position_embeddings /
        /// low_freq_factor` are scaled by `factor`.
        low_freq_factor: f64,
        /// Wavelengths shorter than `original_max_position_embeddings /
        /// high_freq_factor` are kept; in between, the two are interpolated.
        high_freq_factor: f64,
        /// The context length of pre-training
        /// (`original_max_position_embeddings`).
        original_max_position_embeddings: i64,
    },
}

/// Rotary position embedding settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    /// Base wavelength (`rope_theta`).
    pub theta: f64,
    /// Frequency scaling (from `rope_scaling` / `rope_parameters`).
    pub scaling: RopeScaling,
}

/// A validated LLaMA config: what the model is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Rows of the token embedding and the LM head (`vocab_size`).
    pub vocab_size: i64,
    /// Width of the residual stream (`hidden_size`).
    pub hidden_size: i64,
    /// Width of the MLP's hidden layer (`intermediate_size`).
    pub intermediate_size: i64,
    /// Number of decoder layers (`num_hidden_layers`).
    pub num_hidden_layers: i64,
    /// Query heads per layer (`num_attention_heads`).
    pub num_attention_heads: i64,
    /// Key/value heads per layer (`num_key_value_heads`); divides
    /// `num_attention_heads`.
    pub num_key_value_heads: i64,
    /// Width of one head (`head_dim`); even.
    pub head_dim: i64,
    /// The MLP activation (`hidden_act`).
    pub hidden_act: Activation,
    /// Context length of training (`max_position_embeddings`); dynamic RoPE
    /// scaling starts beyond it.
    pub max_position_embeddings: i64,
    /// Epsilon of every RMS norm (`rms_norm_eps`).
    pub rms_norm_eps: f64,
    /// Rotary position embedding settings.
    pub rope: RopeConfig,
    /// Whether the LM head reuses the token embedding (`tie_word_embeddings`).
    pub tie_word_embeddings: bool,
    /// Whether the attention projections have biases (`attention_bias`).
    pub attention_bias: bool,
    /// Whether the MLP projections have biases (`mlp_bias`).
    pub mlp_bias: bool,
    /// As the config says. InstructBLIP-Vicuna's config is wrong here (0,
    /// 1, -1): take BOS/EOS from the tokenizer files instead
    /// ([`crate::LlamaTokenizer::special_tokens`]).
    pub bos_token_id: Option<i64>,
    /// End-of-sequence ids as the config says (`eos_token_id`, one or several).
    /// See `bos_token_id` about InstructBLIP.
    pub eos_token_ids: Vec<i64>,
    /// The padding id (`pad_token_id`), if any.
    pub pad_token_id: Option<i64>,
}

impl LlamaConfigJson {
    /// Reads a `config.json` that is itself a LLaMA config.
    pub fn from_file(path: &Path) -> Result<Self> {
        Ok(damro_nn::read_json(path)?)
    }

    /// Reads a config from a JSON value, e.g. the `text_config` object of a
    /// LLaVA or InstructBLIP `config.json`.
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        serde_json::from_value(value).map_err(|e| Error::config("text_config", e.to_string()))
    }

    /// Fills in HF defaults and validates.
    pub fn into_config(self) -> Result<LlamaConfig> {
        if let Some(t) = &self.model_type
            && t != "llama"
        {
            return Err(Error::config(
                "model_type",
                format!("`{t}` is not a LLaMA config (expected `llama`)"),
            ));
        }
        let positive = |field: &str, value: Option<i64>, default: i64| -> Result<i64> {
            let v = value.unwrap_or(default);
            if v > 0 {
                Ok(v)
            } else {
                Err(Error::config(field, format!("must be positive, got {v}")))
            }
        };
        let vocab_size = positive("vocab_size", self.vocab_size, 32000)?;
        let hidden_size = positive("hidden_size", self.hidden_size, 4096)?;
        let intermediate_size = positive("intermediate_size", self.intermediate_size, 11008)?;
        let num_hidden_layers = positive("num_hidden_layers", self.num_hidden_layers, 32)?;
        let num_attention_heads = positive("num_attention_heads", self.num_attention_heads, 32)?;
        let num_key_value_heads = positive(
            "num_key_value_heads",
            self.num_key_value_heads,
            num_attention_heads,
        )?;
        if hidden_size % num_attention_heads != 0 {
            return Err(Error::config(
                "hidden_size",
                format!(
                    "{hidden_size} is not a multiple of num_attention_heads = {num_attention_heads}"
                ),
            ));
        }
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::config(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"
                ),
            ));
        }
        let head_dim = positive("head_dim", self.head_dim, hidden_size / num_attention_heads)?;
        if head_dim % 2 != 0 {
            return Err(Error::config(
                "head_dim",
                format!("RoPE needs an even head_dim, got {head_dim}"),
            ));
        }
        let act_name = self.hidden_act.unwrap_or_else(|| "silu".to_string());
        let hidden_act: Activation =
            serde_json::from_value(serde_json::Value::String(act_name.clone())).map_err(|_| {
                Error::config("hidden_act", format!("unknown activation `{act_name}`"))
            })?;
        let max_position_embeddings = positive(
            "max_position_embeddings",
            self.max_position_embeddings,
            2048,
        )?;
        let rms_norm_eps = self.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(Error::config(
                "rms_norm_eps",
                format!("must be a positive number, got {rms_norm_eps}"),
            ));
        }
        let rope = rope_config(
            self.rope_scaling.or(self.rope_parameters),
            self.rope_theta,
            max_position_embeddings,
        )?;
        let eos_token_ids = match self.eos_token_id {
            None => vec![2],
            Some(TokenIds::One(id)) => vec![id],
            Some(TokenIds::Many(ids)) => ids,
        };
        Ok(LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            hidden_act,
            max_position_embeddings,
            rms_norm_eps,
            rope,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias: self.attention_bias.unwrap_or(false),
            mlp_bias: self.mlp_bias.unwrap_or(false),
            bos_token_id: self.bos_token_id.or(Some(1)),
            eos_token_ids,
            pad_token_id: self.pad_token_id,
        })
    }
}

fn rope_config(
    params: Option<RopeParametersJson>,
    top_level_theta: Option<f64>,
    max_position_embeddings: i64,
) -> Result<RopeConfig> {
    let params = params.unwrap_or_default();
    let theta = params.rope_theta.or(top_level_theta).unwrap_or(10_000.0);
    let field = if params.rope_theta.is_some() {
        "rope_parameters.rope_theta"
    } else {
        "rope_theta"
    };
    if !(theta.is_finite() && theta > 0.0) {
        return Err(Error::config(
            field,
            format!("must be a positive number, got {theta}"),
        ));
    }
    if let Some(p) = params.partial_rotary_factor
        && p != 1.0
    {
        return Err(Error::config(
            "rope_parameters.partial_rotary_factor",
            format!("partial rotary embeddings are not supported (got {p})"),
        ));
    }
    let kind = params
        .rope_type
        .clone()
        .or(params.type_.clone())
        .unwrap_or_else(|| "default".to_string());
    let factor = || -> Result<f64> {
        match params.factor {
            Some(f) if f.is_finite() && f > 0.0 => Ok(f),
            Some(f) => Err(Error::config(
                "rope_scaling.factor",
                format!("must be a positive number, got {f}"),
            )),
            None => Err(Error::config(
                "rope_scaling.factor",
                format!("required by rope type `{kind}`"),
            )),
        }
    };
    let scaling = match kind.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::Dynamic { factor: factor()? },
        "llama3" => {
            let need = |name: &str, v: Option<f64>| {
                v.ok_or_else(|| {
                    Error::config(
                        format!("rope_scaling.{name}"),
                        "required by rope type `llama3`",
                    )
                })
            };
            let low_freq_factor = need("low_freq_factor", params.low_freq_factor)?;
            let high_freq_factor = need("high_freq_factor", params.high_freq_factor)?;
            if !(high_freq_factor > low_freq_factor && low_freq_factor > 0.0) {
                return Err(Error::config(
                    "rope_scaling.high_freq_factor",
                    format!(
                        "must exceed low_freq_factor > 0 (got {high_freq_factor} and {low_freq_factor})"
                    ),
                ));
            }
            let original_max_position_embeddings = params
                .original_max_position_embeddings
                .unwrap_or(max_position_embeddings);
            if original_max_position_embeddings <= 0 {
                return Err(Error::config(
                    "rope_scaling.original_max_position_embeddings",
                    "must be positive",
                ));
            }
            RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }
        }
        other => {
            return Err(Error::config(
                "rope_scaling.rope_type",
                format!(
                    "unsupported rope type `{other}` (expected default, linear, dynamic or llama3)"
                ),
            ));
        }
    };
    Ok(RopeConfig { theta, scaling })
}

impl LlamaConfig {
    /// Vicuna-7B v1.5 (the LLM of LLaVA-1.5-7B before LLaVA adds its image
    /// and pad tokens): 4096 hidden, 32 layers, 32 heads, 4096 positions,
    /// `rms_norm_eps` 1e-5.
    pub fn vicuna_7b_v1_5() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 32,
            head_dim: 128,
            hidden_act: Activation::Silu,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-5,
            rope: RopeConfig {
                theta: 10_000.0,
                scaling: RopeScaling::None,
            },
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: None,
        }
    }

    /// Takes the vocabulary size from the embedding matrix at
    /// `w.pp("model.embed_tokens")` instead of the config, for checkpoints
    /// whose config is wrong about it (InstructBLIP-Vicuna) or omits it.
    /// `w` is the position [`crate::Llama::load`] is given.
    pub fn with_vocab_from_weights(mut self, w: &Weights) -> Result<Self> {
        let name = "model.embed_tokens.weight";
        match w.shape_of(name).as_deref() {
            Some(&[vocab, hidden]) if hidden == self.hidden_size => {
                self.vocab_size = vocab;
                Ok(self)
            }
            Some(shape) => Err(Error::shape(
                w.path(name),
                format!("[vocab, {}]", self.hidden_size),
                shape,
            )),
            None => Err(Error::config(
                "vocab_size",
                format!(
                    "cannot take it from the weights: {} is missing",
                    w.path(name)
                ),
            )),
        }
    }

    /// Number of query heads per key/value head.
    pub fn gqa_groups(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llava_text_config_gets_hf_defaults() {
        // llava-hf/llava-1.5-7b-hf's text_config lists only these fields.
        let json = serde_json::json!({
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "pad_token_id": 0,
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": 32064
        });
        let cfg = LlamaConfigJson::from_value(json)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(cfg.vocab_size, 32064);
        assert_eq!(cfg.hidden_size, 4096);
        assert_eq!(cfg.intermediate_size, 11008);
        assert_eq!(cfg.num_hidden_layers, 32);
        assert_eq!(cfg.num_key_value_heads, 32);
        assert_eq!(cfg.head_dim, 128);
        assert_eq!(cfg.rms_norm_eps, 1e-5);
        assert_eq!(cfg.rope.theta, 10_000.0);
        assert_eq!(cfg.rope.scaling, RopeScaling::None);
        assert!(!cfg.tie_word_embeddings);
        assert_eq!(cfg.hidden_act, Activation::Silu);
        assert_eq!(cfg.eos_token_ids, vec![2]);
        assert_eq!(cfg.pad_token_id, Some(0));
    }

    #[test]
    fn empty_config_is_llama_7b_with_eps_1e_6() {
        let cfg = LlamaConfigJson::default().into_config().unwrap();
        assert_eq!(cfg.rms_norm_eps, 1e-6);
        assert_eq!(cfg.max_position_embeddings, 2048);
        assert_eq!(cfg.vocab_size, 32000);
    }

    #[test]
    fn rope_parameters_in_both_spellings() {
        let v4 = serde_json::json!({
            "rope_theta": 500000.0,
            "rope_scaling": {"type": "linear", "factor": 2.0}
        });
        let cfg = LlamaConfigJson::from_value(v4)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(cfg.rope.theta, 500000.0);
        assert_eq!(cfg.rope.scaling, RopeScaling::Linear { factor: 2.0 });

        let v5 = serde_json::json!({
            "max_position_embeddings": 8192,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                "low_freq_factor": 1.0, "high_freq_factor": 4.0}
        });
        let cfg = LlamaConfigJson::from_value(v5)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(cfg.rope.theta, 500000.0);
        assert_eq!(
            cfg.rope.scaling,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            }
        );

        let dynamic = serde_json::json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}});
        let cfg = LlamaConfigJson::from_value(dynamic)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(cfg.rope.scaling, RopeScaling::Dynamic { factor: 2.0 });
        let null = serde_json::json!({"rope_scaling": null, "head_dim": null});
        let cfg = LlamaConfigJson::from_value(null)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(cfg.rope.scaling, RopeScaling::None);
    }

    #[test]
    fn errors_name_the_field() {
        let field_of = |json: serde_json::Value| match LlamaConfigJson::from_value(json)
            .unwrap()
            .into_config()
        {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(
            field_of(serde_json::json!({"hidden_size": 100})),
            "hidden_size"
        );
        assert_eq!(
            field_of(serde_json::json!({"num_key_value_heads": 5})),
            "num_key_value_heads"
        );
        assert_eq!(
            field_of(serde_json::json!({"hidden_act": "tanhh"})),
            "hidden_act"
        );
        assert_eq!(
            field_of(serde_json::json!({"rms_norm_eps": -1.0})),
            "rms_norm_eps"
        );
        assert_eq!(
            field_of(serde_json::json!({"rope_scaling": {"type": "yarn", "factor": 2.0}})),
            "rope_scaling.rope_type"
        );
        assert_eq!(
            field_of(serde_json::json!({"rope_scaling": {"type": "linear"}})),
            "rope_scaling.factor"
        );
        assert_eq!(
            field_of(serde_json::json!({"model_type": "opt"})),
            "model_type"
        );
        assert_eq!(field_of(serde_json::json!({"vocab_size": 0})), "vocab_size");
    }

    #[test]
    fn eos_list_and_gqa() {
        let json = serde_json::json!({"eos_token_id": [2, 32000], "num_attention_heads": 32,
                                      "num_key_value_heads": 8});
        let cfg = LlamaConfigJson::from_value(json)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(cfg.eos_token_ids, vec![2, 32000]);
        assert_eq!(cfg.gqa_groups(), 4);
    }
}

//! The vision side of LLaVA-1.5 (HF `LlavaModel.get_image_features`,
//! transformers 5.23 `models/llava/modeling_llava.py`): the CLIP tower, the
//! feature selection (`vision_feature_layer`, `vision_feature_select_strategy`)
//! and `multi_modal_projector`, plus DAMRO's `[CLS]` attention of
//! `layers[-2]`.
//!
//! Checkpoints are opened with [`KeyMap::llava`], so hub, transformers 5
//! file and transformers 5 in-memory layouts all load; the language model's
//! tensors live under `language_model.*` and are left to the caller.

use std::path::Path;

use damro_nn::attention::AttentionImpl;
use damro_nn::{Checkpoint, KeyMap, LoadOptions, Module, Weights, read_json};
use serde::Deserialize;
use tch::Tensor;

use crate::clip::{ClipRequest, ClipVisionTower};
use crate::config::{self, ClipVisionConfig, RawClipVisionConfig};
use crate::projector::{LlavaProjector, LlavaProjectorConfig};
use crate::vit;
use crate::{Error, Result};

/// The encoder layer whose `[CLS]` attention DAMRO ranks outliers by
/// (`layers[-2]`).
pub const DAMRO_CLS_ATTENTION_LAYER: i64 = -2;

/// `vision_feature_layer` as written: one hidden-state index or several
/// (their features are concatenated).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawFeatureLayer {
    /// One hidden-state index (`-2` in LLaVA-1.5).
    One(i64),
    /// Several indices whose features are concatenated.
    Many(Vec<i64>),
}

/// The top level of a LLaVA `config.json`, as written (HF `LlavaConfig`
/// defaults for what is left out).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawLlavaConfig {
    /// Absent: CLIP ViT-L/14-336, as `LlavaConfig` builds it.
    pub vision_config: Option<RawClipVisionConfig>,
    /// Parsed by the language-model crate.
    pub text_config: Option<serde_json::Value>,
    /// `image_token_index` (transformers 5: `image_token_id`): the id of the
    /// `<image>` placeholder in the prompt. Default 32000.
    #[serde(alias = "image_token_id")]
    pub image_token_index: i64,
    /// `image_seq_length`: image tokens per image. Default 576.
    pub image_seq_length: i64,
    /// `projector_hidden_act`: the projector's activation's HF name. Default
    /// `gelu`.
    pub projector_hidden_act: String,
    /// `vision_feature_select_strategy`: `default` (drop `[CLS]`) or `full`.
    /// Default `default`.
    pub vision_feature_select_strategy: String,
    /// `vision_feature_layer`: hidden state(s) fed to the projector. Default
    /// -2.
    pub vision_feature_layer: RawFeatureLayer,
    /// `multimodal_projector_bias`: whether the projector's layers have biases.
    /// Default true.
    pub multimodal_projector_bias: bool,
}

impl Default for RawLlavaConfig {
    fn default() -> Self {
        Self {
            vision_config: None,
            text_config: None,
            image_token_index: 32000,
            image_seq_length: 576,
            projector_hidden_act: "gelu".to_string(),
            vision_feature_select_strategy: "default".to_string(),
            vision_feature_layer: RawFeatureLayer::One(-2),
            multimodal_projector_bias: true,
        }
    }
}

/// `vision_feature_select_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSelectStrategy {
    /// Drop the `[CLS]` token (`default`).
    Default,
    /// Keep every token (`full`).
    Full,
}

/// A validated LLaVA config (vision side, plus the raw `text_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaConfig {
    /// The CLIP tower (`vision_config`).
    pub vision: ClipVisionConfig,
    /// Hidden-state indices whose features feed the projector, concatenated
    /// in this order (HF `hidden_states[i]` indexing).
    pub feature_layers: Vec<i64>,
    /// Whether `[CLS]` is dropped from the features
    /// (`vision_feature_select_strategy`).
    pub select_strategy: FeatureSelectStrategy,
    /// The projector's geometry (`projector_hidden_act`,
    /// `multimodal_projector_bias`, the tower's and the language model's
    /// widths).
    pub projector: LlavaProjectorConfig,
    /// The id of the `<image>` placeholder in the prompt (`image_token_index`).
    pub image_token_index: i64,
    /// Image tokens per image (`image_seq_length`).
    pub image_seq_length: i64,
    /// The `text_config` section as written, for the language-model crate.
    pub text_config: serde_json::Value,
    /// Layer (`layers[i]` indexing) whose `[CLS]` attention
    /// [`LlavaVision::encode`] returns; DAMRO uses
    /// [`DAMRO_CLS_ATTENTION_LAYER`]. `None` skips it.
    pub cls_attention_layer: Option<i64>,
}

impl RawLlavaConfig {
    /// Validates the config.
    pub fn into_config(self) -> Result<LlavaConfig> {
        let vision = match self.vision_config {
            Some(raw) => raw
                .into_config()
                .map_err(|e| e.in_section("vision_config"))?,
            None => ClipVisionConfig::vit_large_patch14_336(),
        };
        let feature_layers = match self.vision_feature_layer {
            RawFeatureLayer::One(i) => vec![i],
            RawFeatureLayer::Many(v) => v,
        };
        if feature_layers.is_empty() {
            return Err(Error::config("vision_feature_layer", "is an empty list"));
        }
        for &i in &feature_layers {
            vit::hidden_state_index(i, vision.num_hidden_layers).map_err(|_| {
                Error::config(
                    "vision_feature_layer",
                    format!(
                        "{i} is not a hidden state of a {}-layer tower",
                        vision.num_hidden_layers
                    ),
                )
            })?;
        }
        let select_strategy = match self.vision_feature_select_strategy.as_str() {
            "default" => FeatureSelectStrategy::Default,
            "full" => FeatureSelectStrategy::Full,
            other => {
                return Err(Error::config(
                    "vision_feature_select_strategy",
                    format!("expected `default` or `full`, got `{other}`"),
                ));
            }
        };
        let text_config = self.text_config.unwrap_or(serde_json::Value::Null);
        let text_hidden = config::text_hidden_size(&text_config, "llama")?;
        Ok(LlavaConfig {
            projector: LlavaProjectorConfig {
                in_dim: vision.hidden_size * feature_layers.len() as i64,
                out_dim: text_hidden,
                activation: config::activation("projector_hidden_act", &self.projector_hidden_act)?,
                bias: self.multimodal_projector_bias,
            },
            vision,
            feature_layers,
            select_strategy,
            image_token_index: self.image_token_index,
            image_seq_length: config::positive("image_seq_length", self.image_seq_length)?,
            text_config,
            cls_attention_layer: Some(DAMRO_CLS_ATTENTION_LAYER),
        })
    }
}

impl LlavaConfig {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let raw: RawLlavaConfig = read_json(&dir.as_ref().join("config.json"))?;
        raw.into_config()
    }

    /// `llava-hf/llava-1.5-7b-hf` (vision side; `text_config` holds only the
    /// hidden size).
    pub fn llava_1_5_7b() -> Self {
        Self::llava_1_5(4096)
    }

    /// `llava-hf/llava-1.5-13b-hf` (vision side; `text_config` holds only the
    /// hidden size).
    pub fn llava_1_5_13b() -> Self {
        Self::llava_1_5(5120)
    }

    fn llava_1_5(text_hidden: i64) -> Self {
        let vision = ClipVisionConfig::vit_large_patch14_336();
        Self {
            projector: LlavaProjectorConfig {
                in_dim: vision.hidden_size,
                out_dim: text_hidden,
                activation: damro_nn::Activation::Gelu,
                bias: true,
            },
            vision,
            feature_layers: vec![-2],
            select_strategy: FeatureSelectStrategy::Default,
            image_token_index: 32000,
            image_seq_length: 576,
            text_config: serde_json::json!({ "hidden_size": text_hidden }),
            cls_attention_layer: Some(DAMRO_CLS_ATTENTION_LAYER),
        }
    }

    /// Chooses the attention kernel of the vision tower.
    pub fn set_attention(&mut self, kernel: AttentionImpl) {
        self.vision.attention = kernel;
    }

    /// Encoder layers a forward must run: up to the deepest feature layer
    /// and the `[CLS]`-attention layer.
    pub fn layers_needed(&self) -> Result<i64> {
        let layers = self.vision.num_hidden_layers;
        let mut needed = 0;
        for &i in &self.feature_layers {
            needed = needed.max(vit::hidden_state_index(i, layers)?);
        }
        if let Some(l) = self.cls_attention_layer {
            needed = needed.max(vit::layer_index(l, layers)? + 1);
        }
        Ok(needed)
    }
}

/// What [`LlavaVision::encode`] returns for a batch of images.
#[derive(Debug)]
pub struct LlavaImageFeatures {
    /// Selected vision features, the projector's input
    /// `[batch, 576, hidden * feature_layers]` (`[batch, 577, …]` with the
    /// `full` strategy). DAMRO gathers the outlier tokens from these.
    pub features: Tensor,
    /// Projected features `[batch, tokens, text_hidden]`.
    pub embeds: Tensor,
    /// DAMRO scores `[batch, 576]` (f32) of [`LlavaConfig::cls_attention_layer`].
    pub cls_attention: Option<Tensor>,
}

/// LLaVA's vision tower and projector.
#[derive(Debug)]
pub struct LlavaVision {
    /// `vision_tower.vision_model`, loaded up to the last layer needed.
    pub vision_tower: ClipVisionTower,
    /// `multi_modal_projector`: vision features to the language model's width.
    pub multi_modal_projector: LlavaProjector,
    config: LlavaConfig,
}

impl LlavaVision {
    /// Loads the vision side of a LLaVA model directory alone: the language
    /// model's tensors are skipped and every other tensor must be used.
    pub fn load(dir: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        Self::load_with_config(dir, &LlavaConfig::from_dir(dir)?, options)
    }

    /// Like [`Self::load`] with a config read (and possibly changed)
    /// beforehand.
    pub fn load_with_config(
        dir: impl AsRef<Path>,
        config: &LlavaConfig,
        options: LoadOptions,
    ) -> Result<Self> {
        let root = Weights::new(Checkpoint::open(dir, &KeyMap::llava())?, options)?;
        let vision = Self::load_from(&root, config)?;
        root.ignore("language_model");
        root.finish()?;
        Ok(vision)
    }

    /// Loads from the root of a checkpoint opened with [`KeyMap::llava`],
    /// without calling [`Weights::finish`]: a caller loading the language
    /// model from the same root calls it once at the end.
    pub fn load_from(root: &Weights, config: &LlavaConfig) -> Result<Self> {
        let layers = config.layers_needed()?;
        Ok(Self {
            vision_tower: ClipVisionTower::load_layers(
                &root.pp("vision_tower").pp("vision_model"),
                &config.vision,
                layers,
            )?,
            multi_modal_projector: LlavaProjector::load(
                &root.pp("multi_modal_projector"),
                &config.projector,
            )?,
            config: config.clone(),
        })
    }

    /// The config the model was loaded with.
    pub fn config(&self) -> &LlavaConfig {
        &self.config
    }

    /// Selected vision features and the `[CLS]` attention, without the
    /// projector.
    ///
    /// # Shapes
    /// pixels `[batch, 3, 336, 336]` → features `[batch, 576, hidden * n]`,
    /// `[CLS]` attention `[batch, 576]` (f32)
    pub fn features(&self, pixels: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let out = self.vision_tower.forward(
            pixels,
            &ClipRequest {
                hidden_states: &self.config.feature_layers,
                cls_attention_layer: self.config.cls_attention_layer,
            },
        )?;
        let selected = out
            .hidden_states
            .iter()
            .map(|h| match self.config.select_strategy {
                FeatureSelectStrategy::Default => {
                    let tokens = h.size()[1];
                    Ok(h.f_narrow(1, 1, tokens - 1)?)
                }
                FeatureSelectStrategy::Full => Ok(h.shallow_clone()),
            })
            .collect::<Result<Vec<_>>>()?;
        let features = match &selected[..] {
            [one] => one.shallow_clone(),
            many => Tensor::f_cat(many, -1)?,
        };
        Ok((features, out.cls_attention))
    }

    /// Projects vision features (all of them, or DAMRO's gathered outlier
    /// tokens) into the language model's embedding space.
    ///
    /// # Shapes
    /// `[batch, tokens, hidden * n]` → `[batch, tokens, text_hidden]`
    pub fn project(&self, features: &Tensor) -> Result<Tensor> {
        Ok(self.multi_modal_projector.forward(features)?)
    }

    /// Features, projected embeddings and `[CLS]` attention of a batch of
    /// preprocessed images.
    ///
    /// # Shapes
    /// pixels `[batch, 3, 336, 336]` → see [`LlavaImageFeatures`]
    pub fn encode(&self, pixels: &Tensor) -> Result<LlavaImageFeatures> {
        let (features, cls_attention) = self.features(pixels)?;
        let embeds = self.project(&features)?;
        Ok(LlavaImageFeatures {
            features,
            embeds,
            cls_attention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_config_parses_to_the_preset() {
        let raw: RawLlavaConfig = serde_json::from_str(
            r#"{"architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100,
                "image_token_index": 32000, "model_type": "llava", "pad_token_id": 32001,
                "projector_hidden_act": "gelu",
                "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
                "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
                "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                    "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                    "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
                "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064}"#,
        )
        .unwrap();
        let cfg = raw.into_config().unwrap();
        let preset = LlavaConfig::llava_1_5_7b();
        assert_eq!(cfg.vision, preset.vision);
        assert_eq!(cfg.projector, preset.projector);
        assert_eq!(cfg.feature_layers, [-2]);
        assert_eq!(cfg.select_strategy, FeatureSelectStrategy::Default);
        assert_eq!(cfg.layers_needed().unwrap(), 23);
    }

    #[test]
    fn bad_fields_are_named() {
        let err =
            serde_json::from_str::<RawLlavaConfig>(r#"{"vision_feature_select_strategy": "cls"}"#)
                .unwrap()
                .into_config()
                .unwrap_err();
        assert!(
            matches!(&err, Error::Config { field, .. } if field == "vision_feature_select_strategy")
        );
        let err = serde_json::from_str::<RawLlavaConfig>(r#"{"vision_feature_layer": 30}"#)
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(matches!(&err, Error::Config { field, .. } if field == "vision_feature_layer"));
        let err = serde_json::from_str::<RawLlavaConfig>(
            r#"{"vision_config": {"layer_norm_eps": -1.0, "patch_size": 14}}"#,
        )
        .unwrap()
        .into_config()
        .unwrap_err();
        assert!(
            matches!(&err, Error::Config { field, .. } if field == "vision_config.layer_norm_eps")
        );
    }
}

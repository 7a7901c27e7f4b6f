//! The vision side of InstructBLIP (HF
//! `InstructBlipForConditionalGeneration.get_image_features`, transformers
//! 5.23 `models/instructblip/modeling_instructblip.py`): the EVA tower, the
//! learned `query_tokens`, the Q-Former fed with the instruction text and
//! `language_projection`, plus DAMRO's `[CLS]` attention of `layers[-2]`.
//!
//! Hub and transformers 5 checkpoints use the same names, so checkpoints are
//! opened with [`KeyMap::identity`]; the language model's tensors live under
//! `language_model.*` and are left to the caller.

use std::path::Path;

use damro_nn::attention::AttentionImpl;
use damro_nn::{Checkpoint, KeyMap, LoadOptions, Module, Weights, read_json};
use serde::Deserialize;
use tch::Tensor;

use crate::config::{self, EvaVisionConfig, QFormerConfig, RawEvaVisionConfig, RawQFormerConfig};
use crate::eva::{EvaOutput, EvaVisionTower};
use crate::projector::LanguageProjection;
use crate::qformer::QFormer;
use crate::qformer_tokenizer::QFormerInput;
use crate::{Error, Result};

/// The encoder layer whose `[CLS]` attention DAMRO ranks outliers by
/// (`layers[-2]`, index 37 of 39 in ViT-g).
pub const DAMRO_CLS_ATTENTION_LAYER: i64 = -2;

/// The top level of an InstructBLIP `config.json`, as written (HF
/// `InstructBlipConfig` defaults for what is left out).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawInstructBlipConfig {
    /// `vision_config`: the EVA tower. Absent: `InstructBlipVisionConfig`'s
    /// defaults (EVA ViT-g/14 at 224 px).
    pub vision_config: Option<RawEvaVisionConfig>,
    /// `qformer_config`: the Q-Former. Absent: `InstructBlipQFormerConfig`'s
    /// defaults.
    pub qformer_config: Option<RawQFormerConfig>,
    /// Parsed by the language-model crate.
    pub text_config: Option<serde_json::Value>,
    /// `num_query_tokens`: learned queries, i.e. image tokens the language
    /// model sees. Default 32.
    pub num_query_tokens: i64,
    /// `image_token_index` (transformers 5: `image_token_id`): the placeholder
    /// id of the query outputs in the prompt, if the checkpoint has one.
    /// Default none.
    #[serde(alias = "image_token_id")]
    pub image_token_index: Option<i64>,
}

impl Default for RawInstructBlipConfig {
    fn default() -> Self {
        Self {
            vision_config: None,
            qformer_config: None,
            text_config: None,
            num_query_tokens: 32,
            image_token_index: None,
        }
    }
}

/// A validated InstructBLIP config (vision side, plus the raw
/// `text_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct InstructBlipConfig {
    /// The EVA tower (`vision_config`).
    pub vision: EvaVisionConfig,
    /// Its `encoder_hidden_size` is the vision width, as HF sets it.
    pub qformer: QFormerConfig,
    /// Learned queries, i.e. image tokens per image (`num_query_tokens`).
    pub num_query_tokens: i64,
    /// Output width of `language_projection`.
    pub text_hidden_size: i64,
    /// The placeholder id of the query outputs in the prompt
    /// (`image_token_index`), if any.
    pub image_token_index: Option<i64>,
    /// The `text_config` section as written, for the language-model crate.
    pub text_config: serde_json::Value,
    /// Layer (`layers[i]` indexing) whose `[CLS]` attention
    /// [`InstructBlipVision::encode_image`] returns; DAMRO uses
    /// [`DAMRO_CLS_ATTENTION_LAYER`]. `None` skips it.
    pub cls_attention_layer: Option<i64>,
}

impl RawInstructBlipConfig {
    /// Validates the config.
    pub fn into_config(self) -> Result<InstructBlipConfig> {
        let vision = self
            .vision_config
            .unwrap_or_default()
            .into_config()
            .map_err(|e| e.in_section("vision_config"))?;
        let mut qformer = self
            .qformer_config
            .unwrap_or_default()
            .into_config()
            .map_err(|e| e.in_section("qformer_config"))?;
        qformer.encoder_hidden_size = vision.hidden_size;
        let text_config = self.text_config.unwrap_or(serde_json::Value::Null);
        Ok(InstructBlipConfig {
            vision,
            qformer,
            num_query_tokens: config::positive("num_query_tokens", self.num_query_tokens)?,
            text_hidden_size: config::text_hidden_size(&text_config, "opt")?,
            image_token_index: self.image_token_index,
            text_config,
            cls_attention_layer: Some(DAMRO_CLS_ATTENTION_LAYER),
        })
    }
}

impl InstructBlipConfig {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let raw: RawInstructBlipConfig = read_json(&dir.as_ref().join("config.json"))?;
        raw.into_config()
    }

    /// Chooses the attention kernel of the vision tower and the Q-Former.
    pub fn set_attention(&mut self, kernel: AttentionImpl) {
        self.vision.attention = kernel;
        self.qformer.attention = kernel;
    }

    /// `Salesforce/instructblip-vicuna-7b` (vision side; `text_config` holds
    /// only the hidden size).
    pub fn instructblip_vicuna_7b() -> Self {
        Self {
            vision: EvaVisionConfig::eva_vit_g14_224(),
            qformer: QFormerConfig::instructblip_vicuna_7b(),
            num_query_tokens: 32,
            text_hidden_size: 4096,
            image_token_index: None,
            text_config: serde_json::json!({ "hidden_size": 4096, "model_type": "llama" }),
            cls_attention_layer: Some(DAMRO_CLS_ATTENTION_LAYER),
        }
    }
}

/// What [`InstructBlipVision::encode`] returns for a batch of images.
#[derive(Debug)]
pub struct InstructBlipImageFeatures {
    /// Post-LayerNorm vision output `[batch, 257, vision_hidden]`, `[CLS]`
    /// first. DAMRO gathers the outlier tokens from these.
    pub image_embeds: Tensor,
    /// DAMRO scores `[batch, 256]` (f32) of
    /// [`InstructBlipConfig::cls_attention_layer`].
    pub cls_attention: Option<Tensor>,
    /// Q-Former query outputs `[batch, num_query_tokens, qformer_hidden]`.
    pub query_output: Tensor,
    /// Projected query outputs `[batch, num_query_tokens, text_hidden]`,
    /// the language model's image prefix.
    pub embeds: Tensor,
}

/// InstructBLIP's vision tower, Q-Former and projection.
#[derive(Debug)]
pub struct InstructBlipVision {
    /// `vision_model`: the EVA tower.
    pub vision_model: EvaVisionTower,
    /// `[1, num_query_tokens, qformer_hidden]`
    pub query_tokens: Tensor,
    /// `qformer`: the Q-Former.
    pub qformer: QFormer,
    /// `language_projection`: from the Q-Former's width to the language
    /// model's.
    pub language_projection: LanguageProjection,
    config: InstructBlipConfig,
}

impl InstructBlipVision {
    /// Loads the vision side of an InstructBLIP model directory alone: the
    /// language model's tensors are skipped and every other tensor must be
    /// used.
    pub fn load(dir: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        Self::load_with_config(dir, &InstructBlipConfig::from_dir(dir)?, options)
    }

    /// Like [`Self::load`] with a config read (and possibly changed)
    /// beforehand.
    pub fn load_with_config(
        dir: impl AsRef<Path>,
        config: &InstructBlipConfig,
        options: LoadOptions,
    ) -> Result<Self> {
        let root = Weights::new(Checkpoint::open(dir, &KeyMap::identity())?, options)?;
        let vision = Self::load_from(&root, config)?;
        root.ignore("language_model");
        root.finish()?;
        Ok(vision)
    }

    /// Loads from the root of a checkpoint opened with
    /// [`KeyMap::identity`], without calling [`Weights::finish`]: a caller
    /// loading the language model from the same root calls it once at the
    /// end.
    pub fn load_from(root: &Weights, config: &InstructBlipConfig) -> Result<Self> {
        let q = &config.qformer;
        Ok(Self {
            vision_model: EvaVisionTower::load(&root.pp("vision_model"), &config.vision)?,
            query_tokens: root.get("query_tokens", &[1, config.num_query_tokens, q.hidden_size])?,
            qformer: QFormer::load(&root.pp("qformer"), q)?,
            language_projection: LanguageProjection::load(
                &root.pp("language_projection"),
                q.hidden_size,
                config.text_hidden_size,
            )?,
            config: config.clone(),
        })
    }

    /// The config the model was loaded with.
    pub fn config(&self) -> &InstructBlipConfig {
        &self.config
    }

    /// The vision tower's output and the `[CLS]` attention.
    ///
    /// # Shapes
    /// pixels `[batch, 3, 224, 224]` → `[batch, 257, vision_hidden]`,
    /// `[batch, 256]` (f32)
    pub fn encode_image(&self, pixels: &Tensor) -> Result<EvaOutput> {
        self.vision_model
            .forward(pixels, self.config.cls_attention_layer)
    }

    /// The Q-Former's query outputs for image tokens (all of them, or
    /// DAMRO's gathered outlier tokens) and the instruction text.
    /// `image_mask` (1 = attend) defaults to all tokens.
    ///
    /// # Shapes
    /// image tokens `[batch, N, vision_hidden]`, text `[batch, T]` →
    /// `[batch, num_query_tokens, qformer_hidden]`
    pub fn query(
        &self,
        image_embeds: &Tensor,
        text: &QFormerInput,
        image_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.qformer
            .forward(&self.query_tokens, Some(text), image_embeds, image_mask)
    }

    /// Projects query outputs into the language model's embedding space.
    ///
    /// # Shapes
    /// `[batch, Q, qformer_hidden]` → `[batch, Q, text_hidden]`
    pub fn project(&self, query_output: &Tensor) -> Result<Tensor> {
        Ok(self.language_projection.forward(query_output)?)
    }

    /// The language model's image prefix for image tokens and text:
    /// [`Self::query`] then [`Self::project`].
    ///
    /// # Shapes
    /// `[batch, N, vision_hidden]`, `[batch, T]` → `[batch, Q, text_hidden]`
    pub fn image_prefix(&self, image_embeds: &Tensor, text: &QFormerInput) -> Result<Tensor> {
        self.project(&self.query(image_embeds, text, None)?)
    }

    /// Everything the full branch needs from a batch of preprocessed images
    /// and their instruction texts.
    ///
    /// # Shapes
    /// pixels `[batch, 3, 224, 224]`, text `[batch, T]` → see
    /// [`InstructBlipImageFeatures`]
    pub fn encode(
        &self,
        pixels: &Tensor,
        text: &QFormerInput,
    ) -> Result<InstructBlipImageFeatures> {
        let batch = pixels.size().first().copied().unwrap_or(0);
        if text.batch_size() != batch {
            return Err(Error::input(
                "Q-Former text batch",
                format!("{batch} rows, one per image"),
                text.batch_size(),
            ));
        }
        let EvaOutput {
            last_hidden_state,
            cls_attention,
        } = self.encode_image(pixels)?;
        let query_output = self.query(&last_hidden_state, text, None)?;
        let embeds = self.project(&query_output)?;
        Ok(InstructBlipImageFeatures {
            image_embeds: last_hidden_state,
            cls_attention,
            query_output,
            embeds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_vicuna_7b_model() {
        let raw: RawInstructBlipConfig = serde_json::from_str(
            r#"{"qformer_config": {"vocab_size": 30523, "encoder_hidden_size": 1},
                "text_config": {"model_type": "llama", "vocab_size": 32001}}"#,
        )
        .unwrap();
        let cfg = raw.into_config().unwrap();
        let preset = InstructBlipConfig::instructblip_vicuna_7b();
        assert_eq!(cfg.vision, preset.vision);
        assert_eq!(cfg.qformer, preset.qformer);
        assert_eq!(cfg.text_hidden_size, 4096);
        assert_eq!(cfg.num_query_tokens, 32);
    }

    #[test]
    fn bad_fields_are_named() {
        let err = serde_json::from_str::<RawInstructBlipConfig>(
            r#"{"qformer_config": {"cross_attention_frequency": 0}}"#,
        )
        .unwrap()
        .into_config()
        .unwrap_err();
        assert!(
            matches!(&err, Error::Config { field, .. } if field == "qformer_config.cross_attention_frequency"),
            "{err}"
        );
        let err = serde_json::from_str::<RawInstructBlipConfig>(r#"{"num_query_tokens": 0}"#)
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(matches!(&err, Error::Config { field, .. } if field == "num_query_tokens"));
    }
}

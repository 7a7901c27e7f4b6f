//! Configs of the vision towers and the Q-Former, in two levels.
//!
//! `Raw*` structs mirror the `vision_config` / `qformer_config` sections of a
//! HuggingFace `config.json` as written, with the defaults of transformers
//! 5.23's config classes (`CLIPVisionConfig`, `InstructBlipVisionConfig`,
//! `InstructBlipQFormerConfig`) for the fields real files leave out.
//! `into_config` validates them into the structs the models use; its errors
//! name the offending field. Presets give the real models' geometry.

use damro_nn::Activation;
use damro_nn::attention::AttentionImpl;
use serde::Deserialize;

use crate::{Error, Result};

/// An `image_size` / `patch_size` as HF writes it: one number, or
/// `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// A square size.
    Square(i64),
    /// `[height, width]`.
    Pair([i64; 2]),
}

impl RawSize {
    /// The side of a square size; rectangular sizes are not supported.
    fn square(self, field: &str) -> Result<i64> {
        let side = match self {
            RawSize::Square(s) => s,
            RawSize::Pair([h, w]) if h == w => h,
            RawSize::Pair([h, w]) => {
                return Err(Error::config(
                    field,
                    format!("only square sizes are supported, got [{h}, {w}]"),
                ));
            }
        };
        positive(field, side)
    }
}

pub(crate) fn positive(field: &str, value: i64) -> Result<i64> {
    if value > 0 {
        Ok(value)
    } else {
        Err(Error::config(
            field,
            format!("must be positive, got {value}"),
        ))
    }
}

fn positive_eps(field: &str, value: f64) -> Result<f64> {
    if value > 0.0 && value.is_finite() {
        Ok(value)
    } else {
        Err(Error::config(
            field,
            format!("must be a positive number, got {value}"),
        ))
    }
}

/// Parses a HF activation name (`hidden_act`, `projector_hidden_act`).
pub(crate) fn activation(field: &str, name: &str) -> Result<Activation> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
        Error::config(
            field,
            format!(
                "unknown activation `{name}` (expected quick_gelu, gelu, gelu_new, \
                 gelu_pytorch_tanh, silu or relu)"
            ),
        )
    })
}

fn heads_divide(hidden: i64, heads: i64) -> Result<i64> {
    positive("num_attention_heads", heads)?;
    if hidden % heads != 0 {
        return Err(Error::config(
            "num_attention_heads",
            format!("{heads} heads do not divide hidden_size {hidden}"),
        ));
    }
    Ok(heads)
}

impl Error {
    /// Puts a config error's field under `section` (`vision_config.…`).
    pub(crate) fn in_section(self, section: &str) -> Self {
        match self {
            Error::Config { field, reason } => Error::Config {
                field: format!("{section}.{field}"),
                reason,
            },
            other => other,
        }
    }
}

/// `vision_config` of a LLaVA checkpoint, as written (HF `CLIPVisionConfig`
/// defaults for what is left out).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawClipVisionConfig {
    /// `hidden_size`: width of the patch tokens. Default 768.
    pub hidden_size: i64,
    /// `intermediate_size`: width of the MLP's hidden layer. Default 3072.
    pub intermediate_size: i64,
    /// `num_hidden_layers`: number of encoder layers. Default 12.
    pub num_hidden_layers: i64,
    /// `num_attention_heads`: attention heads per layer; must divide
    /// `hidden_size`. Default 12.
    pub num_attention_heads: i64,
    /// `num_channels`: channels of the input image. Default 3.
    pub num_channels: i64,
    /// `image_size`: side of the (square) input image in pixels. Default 224.
    pub image_size: RawSize,
    /// `patch_size`: side of one (square) patch in pixels. Default 32.
    pub patch_size: RawSize,
    /// `hidden_act`: the MLP activation's HF name. Default `quick_gelu`.
    pub hidden_act: String,
    /// `layer_norm_eps`: epsilon of every layer norm. Default 1e-5.
    pub layer_norm_eps: f64,
}

impl Default for RawClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: RawSize::Square(224),
            patch_size: RawSize::Square(32),
            hidden_act: "quick_gelu".to_string(),
            layer_norm_eps: 1e-5,
        }
    }
}

/// The square image and patch sides of a vision config: the image within
/// [`damro_nn::limits::MAX_IMAGE_SIDE`] (so patch counts cannot overflow),
/// the patch no larger than the image.
fn patch_geometry(image_size: RawSize, patch_size: RawSize) -> Result<(i64, i64)> {
    let image_size = image_size.square("image_size")?;
    let patch_size = patch_size.square("patch_size")?;
    let limit = damro_nn::limits::MAX_IMAGE_SIDE;
    if image_size > limit {
        return Err(Error::config(
            "image_size",
            format!("{image_size} is larger than the limit of {limit} pixels"),
        ));
    }
    if patch_size > image_size {
        return Err(Error::config(
            "patch_size",
            format!("{patch_size} is larger than image_size {image_size}"),
        ));
    }
    Ok((image_size, patch_size))
}

impl RawClipVisionConfig {
    /// Validates the section.
    pub fn into_config(self) -> Result<ClipVisionConfig> {
        let hidden_size = positive("hidden_size", self.hidden_size)?;
        let (image_size, patch_size) = patch_geometry(self.image_size, self.patch_size)?;
        Ok(ClipVisionConfig {
            hidden_size,
            intermediate_size: positive("intermediate_size", self.intermediate_size)?,
            num_hidden_layers: positive("num_hidden_layers", self.num_hidden_layers)?,
            num_attention_heads: heads_divide(hidden_size, self.num_attention_heads)?,
            num_channels: positive("num_channels", self.num_channels)?,
            image_size,
            patch_size,
            hidden_act: activation("hidden_act", &self.hidden_act)?,
            layer_norm_eps: positive_eps("layer_norm_eps", self.layer_norm_eps)?,
            attention: AttentionImpl::Sdpa,
        })
    }
}

/// The CLIP vision tower's geometry (HF `CLIPVisionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    /// Width of the patch tokens (`hidden_size`; 1024 for ViT-L/14).
    pub hidden_size: i64,
    /// Width of the MLP's hidden layer (`intermediate_size`).
    pub intermediate_size: i64,
    /// Number of encoder layers (`num_hidden_layers`).
    pub num_hidden_layers: i64,
    /// Attention heads per layer (`num_attention_heads`); divides
    /// `hidden_size`.
    pub num_attention_heads: i64,
    /// Channels of the input image (`num_channels`).
    pub num_channels: i64,
    /// Side of the square input image in pixels (`image_size`).
    pub image_size: i64,
    /// Side of one square patch in pixels (`patch_size`); at most `image_size`.
    pub patch_size: i64,
    /// The MLP activation (`hidden_act`).
    pub hidden_act: Activation,
    /// Epsilon of every layer norm (`layer_norm_eps`).
    pub layer_norm_eps: f64,
    /// Attention kernel (not part of `config.json`; fused by default).
    pub attention: AttentionImpl,
}

impl ClipVisionConfig {
    /// CLIP ViT-L/14 at 336 px, the tower of LLaVA-1.5 7B and 13B.
    pub fn vit_large_patch14_336() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 336,
            patch_size: 14,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            attention: AttentionImpl::Sdpa,
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Number of patch tokens (576 for ViT-L/14 at 336 px).
    pub fn num_patches(&self) -> i64 {
        self.grid() * self.grid()
    }

    /// Patch tokens plus `[CLS]`.
    pub fn num_positions(&self) -> i64 {
        self.num_patches() + 1
    }
}

/// `vision_config` of an InstructBLIP checkpoint, as written (HF
/// `InstructBlipVisionConfig` defaults for what is left out).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawEvaVisionConfig {
    /// `hidden_size`: width of the patch tokens. Default 1408.
    pub hidden_size: i64,
    /// `intermediate_size`: width of the MLP's hidden layer. Default 6144.
    pub intermediate_size: i64,
    /// `num_hidden_layers`: number of encoder layers. Default 39.
    pub num_hidden_layers: i64,
    /// `num_attention_heads`: attention heads per layer; must divide
    /// `hidden_size`. Default 16.
    pub num_attention_heads: i64,
    /// `image_size`: side of the (square) input image in pixels. Default 224.
    pub image_size: RawSize,
    /// `patch_size`: side of one (square) patch in pixels. Default 14.
    pub patch_size: RawSize,
    /// `hidden_act`: the MLP activation's HF name. Default `gelu`.
    pub hidden_act: String,
    /// `layer_norm_eps`: epsilon of every layer norm. Default 1e-6.
    pub layer_norm_eps: f64,
    /// `qkv_bias`: whether the attention has learned q and v biases. Default
    /// true.
    pub qkv_bias: bool,
}

impl Default for RawEvaVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1408,
            intermediate_size: 6144,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            image_size: RawSize::Square(224),
            patch_size: RawSize::Square(14),
            hidden_act: "gelu".to_string(),
            layer_norm_eps: 1e-6,
            qkv_bias: true,
        }
    }
}

impl RawEvaVisionConfig {
    /// Validates the section.
    pub fn into_config(self) -> Result<EvaVisionConfig> {
        let hidden_size = positive("hidden_size", self.hidden_size)?;
        let (image_size, patch_size) = patch_geometry(self.image_size, self.patch_size)?;
        Ok(EvaVisionConfig {
            hidden_size,
            intermediate_size: positive("intermediate_size", self.intermediate_size)?,
            num_hidden_layers: positive("num_hidden_layers", self.num_hidden_layers)?,
            num_attention_heads: heads_divide(hidden_size, self.num_attention_heads)?,
            image_size,
            patch_size,
            hidden_act: activation("hidden_act", &self.hidden_act)?,
            layer_norm_eps: positive_eps("layer_norm_eps", self.layer_norm_eps)?,
            qkv_bias: self.qkv_bias,
            attention: AttentionImpl::Sdpa,
        })
    }
}

/// The BLIP-2 / EVA vision tower's geometry (HF `InstructBlipVisionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct EvaVisionConfig {
    /// Width of the patch tokens (`hidden_size`; 1408 for ViT-g/14).
    pub hidden_size: i64,
    /// Width of the MLP's hidden layer (`intermediate_size`).
    pub intermediate_size: i64,
    /// Number of encoder layers (`num_hidden_layers`).
    pub num_hidden_layers: i64,
    /// Attention heads per layer (`num_attention_heads`); divides
    /// `hidden_size`.
    pub num_attention_heads: i64,
    /// Side of the square input image in pixels (`image_size`).
    pub image_size: i64,
    /// Side of one square patch in pixels (`patch_size`); at most `image_size`.
    pub patch_size: i64,
    /// The MLP activation (`hidden_act`).
    pub hidden_act: Activation,
    /// Epsilon of every layer norm (`layer_norm_eps`).
    pub layer_norm_eps: f64,
    /// Learned q and v biases (k has none).
    pub qkv_bias: bool,
    /// Attention kernel (not part of `config.json`; fused by default).
    pub attention: AttentionImpl,
}

impl EvaVisionConfig {
    /// EVA ViT-g/14 at 224 px, the tower of InstructBLIP (Vicuna 7B/13B).
    pub fn eva_vit_g14_224() -> Self {
        Self {
            hidden_size: 1408,
            intermediate_size: 6144,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            image_size: 224,
            patch_size: 14,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-6,
            qkv_bias: true,
            attention: AttentionImpl::Sdpa,
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Number of patch tokens (256 for ViT-g/14 at 224 px).
    pub fn num_patches(&self) -> i64 {
        self.grid() * self.grid()
    }

    /// Patch tokens plus `[CLS]`.
    pub fn num_positions(&self) -> i64 {
        self.num_patches() + 1
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

/// `qformer_config` of an InstructBLIP checkpoint, as written (HF
/// `InstructBlipQFormerConfig` defaults for what is left out).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawQFormerConfig {
    /// `vocab_size`: rows of the Q-Former's word embedding (BERT's vocabulary).
    /// Default 30522.
    pub vocab_size: i64,
    /// `hidden_size`: width of the query tokens. Default 768.
    pub hidden_size: i64,
    /// `num_hidden_layers`: number of Q-Former layers. Default 12.
    pub num_hidden_layers: i64,
    /// `num_attention_heads`: attention heads per layer; must divide
    /// `hidden_size`. Default 12.
    pub num_attention_heads: i64,
    /// `intermediate_size`: width of the feed-forward hidden layer. Default
    /// 3072.
    pub intermediate_size: i64,
    /// `hidden_act`: the feed-forward activation's HF name. Default `gelu`.
    pub hidden_act: String,
    /// `max_position_embeddings`: rows of the position embedding, the longest
    /// instruction the Q-Former takes. Default 512.
    pub max_position_embeddings: i64,
    /// `layer_norm_eps`: epsilon of every layer norm. Default 1e-12.
    pub layer_norm_eps: f64,
    /// `pad_token_id`: id of the padding token of the Q-Former's tokenizer.
    /// Default 0.
    pub pad_token_id: Option<i64>,
    /// `cross_attention_frequency`: every how many layers one cross-attends to
    /// the image. Default 2.
    pub cross_attention_frequency: i64,
    /// `encoder_hidden_size`: width of the image tokens it cross-attends to.
    /// Default 1408.
    pub encoder_hidden_size: i64,
    /// Written by transformers 4.x; only `absolute` exists in InstructBLIP.
    pub position_embedding_type: Option<String>,
}

impl Default for RawQFormerConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".to_string(),
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            pad_token_id: Some(0),
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
            position_embedding_type: None,
        }
    }
}

impl RawQFormerConfig {
    /// Validates the section.
    pub fn into_config(self) -> Result<QFormerConfig> {
        let hidden_size = positive("hidden_size", self.hidden_size)?;
        if let Some(kind) = self.position_embedding_type.as_deref()
            && kind != "absolute"
        {
            return Err(Error::config(
                "position_embedding_type",
                format!("only `absolute` is supported, got `{kind}`"),
            ));
        }
        Ok(QFormerConfig {
            vocab_size: positive("vocab_size", self.vocab_size)?,
            hidden_size,
            num_hidden_layers: positive("num_hidden_layers", self.num_hidden_layers)?,
            num_attention_heads: heads_divide(hidden_size, self.num_attention_heads)?,
            intermediate_size: positive("intermediate_size", self.intermediate_size)?,
            hidden_act: activation("hidden_act", &self.hidden_act)?,
            max_position_embeddings: positive(
                "max_position_embeddings",
                self.max_position_embeddings,
            )?,
            layer_norm_eps: positive_eps("layer_norm_eps", self.layer_norm_eps)?,
            pad_token_id: self.pad_token_id,
            cross_attention_frequency: positive(
                "cross_attention_frequency",
                self.cross_attention_frequency,
            )?,
            encoder_hidden_size: positive("encoder_hidden_size", self.encoder_hidden_size)?,
            attention: AttentionImpl::Sdpa,
        })
    }
}

/// The Q-Former's geometry (HF `InstructBlipQFormerConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct QFormerConfig {
    /// Rows of the word embedding (`vocab_size`; 30523 for InstructBLIP). At
    /// load the checkpoint's tensor wins where the two disagree.
    pub vocab_size: i64,
    /// Width of the query tokens (`hidden_size`).
    pub hidden_size: i64,
    /// Number of Q-Former layers (`num_hidden_layers`).
    pub num_hidden_layers: i64,
    /// Attention heads per layer (`num_attention_heads`); divides
    /// `hidden_size`.
    pub num_attention_heads: i64,
    /// Width of the feed-forward hidden layer (`intermediate_size`).
    pub intermediate_size: i64,
    /// The feed-forward activation (`hidden_act`).
    pub hidden_act: Activation,
    /// Rows of the position embedding (`max_position_embeddings`): the most
    /// instruction tokens the Q-Former takes.
    pub max_position_embeddings: i64,
    /// Epsilon of every layer norm (`layer_norm_eps`).
    pub layer_norm_eps: f64,
    /// Padding token id of the Q-Former's tokenizer (`pad_token_id`), if any.
    pub pad_token_id: Option<i64>,
    /// Layer `i` cross-attends to the image when `i % frequency == 0`.
    pub cross_attention_frequency: i64,
    /// Width of the image tokens (the vision tower's `hidden_size`).
    pub encoder_hidden_size: i64,
    /// Attention kernel (not part of `config.json`; fused by default).
    pub attention: AttentionImpl,
}

impl QFormerConfig {
    /// The Q-Former of `Salesforce/instructblip-vicuna-7b` (BERT-base with
    /// one added token).
    pub fn instructblip_vicuna_7b() -> Self {
        Self {
            vocab_size: 30523,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            pad_token_id: Some(0),
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
            attention: AttentionImpl::Sdpa,
        }
    }

    /// Whether layer `layer` has cross-attention to the image.
    pub fn has_cross_attention(&self, layer: i64) -> bool {
        layer % self.cross_attention_frequency == 0
    }
}

/// The language model's `hidden_size` from a `text_config` section, with the
/// default of its `model_type` (`default_model_type` when the section does
/// not say) where the field is left out.
pub(crate) fn text_hidden_size(
    text_config: &serde_json::Value,
    default_model_type: &str,
) -> Result<i64> {
    match text_config.get("hidden_size") {
        Some(value) => value.as_i64().filter(|&h| h > 0).ok_or_else(|| {
            Error::config(
                "text_config.hidden_size",
                format!("must be a positive integer, got {value}"),
            )
        }),
        None => {
            let model_type = text_config
                .get("model_type")
                .and_then(|t| t.as_str())
                .unwrap_or(default_model_type);
            match model_type {
                "llama" => Ok(4096),
                "opt" => Ok(768),
                other => Err(Error::config(
                    "text_config.hidden_size",
                    format!("missing, and model_type `{other}` has no known default"),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_defaults_are_hf_defaults() {
        let raw: RawClipVisionConfig = serde_json::from_str(
            r#"{"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14,
                "projection_dim": 768, "model_type": "clip_vision_model"}"#,
        )
        .unwrap();
        assert_eq!(
            raw.into_config().unwrap(),
            ClipVisionConfig::vit_large_patch14_336()
        );
        let empty = RawClipVisionConfig::default().into_config().unwrap();
        assert_eq!((empty.image_size, empty.patch_size), (224, 32));
        assert_eq!(empty.hidden_act, Activation::QuickGelu);
    }

    #[test]
    fn eva_and_qformer_defaults_are_instructblip() {
        let eva: RawEvaVisionConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(
            eva.into_config().unwrap(),
            EvaVisionConfig::eva_vit_g14_224()
        );
        let q: RawQFormerConfig = serde_json::from_str(r#"{"vocab_size": 30523}"#).unwrap();
        assert_eq!(
            q.into_config().unwrap(),
            QFormerConfig::instructblip_vicuna_7b()
        );
    }

    #[test]
    fn errors_name_the_field() {
        let raw: RawClipVisionConfig =
            serde_json::from_str(r#"{"hidden_size": 100, "num_attention_heads": 16}"#).unwrap();
        let err = raw.into_config().unwrap_err().in_section("vision_config");
        assert!(
            matches!(&err, Error::Config { field, .. } if field == "vision_config.num_attention_heads"),
            "{err}"
        );
        let raw: RawClipVisionConfig = serde_json::from_str(r#"{"hidden_act": "swiglu"}"#).unwrap();
        let err = raw.into_config().unwrap_err();
        assert!(matches!(&err, Error::Config { field, .. } if field == "hidden_act"));
        let raw: RawEvaVisionConfig =
            serde_json::from_str(r#"{"image_size": [224, 336]}"#).unwrap();
        assert!(
            raw.into_config()
                .unwrap_err()
                .to_string()
                .contains("image_size")
        );
        let raw: RawQFormerConfig =
            serde_json::from_str(r#"{"position_embedding_type": "relative_key"}"#).unwrap();
        assert!(
            raw.into_config()
                .unwrap_err()
                .to_string()
                .contains("position_embedding_type")
        );
    }
}

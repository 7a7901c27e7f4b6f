//! The vision side of LLaVA-NeXT (HF `llava-hf/llava-v1.6-*-hf`) as the DAMRO
//! authors run it: transformers 4.43's `LlavaNextForConditionalGeneration`
//! with their DAMRO branch (`tools/damro_reference_next.py` is a readable
//! Python reference).
//!
//! - All tiles of an image (base tile first, see
//!   [`crate::preprocess::anyres`]) go through the CLIP tower as one batch;
//!   per tile: the features of `vision_feature_layer` without `[CLS]`, and
//!   DAMRO's full-width `[CLS]` scores of `layers[-2]` (as LLaVA-1.5).
//! - Full branch: every tile's features projected, then packed
//!   ([`crate::anyres_pack`]): base tile, then the un-padded grid with
//!   `image_newline` after every row, in 4.43's grid layout by default.
//! - Contrast branch: top-k of the base tile's scores only; those k features
//!   in top-k order, projected, then one `image_newline` (k + 1 tokens).
//!
//! Weights: the LLaVA-1.5 layouts ([`KeyMap::llava`]) plus `image_newline`
//! `[text_hidden]` at the top level.

use std::path::Path;

use damro_nn::{Checkpoint, KeyMap, LoadOptions, Weights, read_json};
use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::anyres_pack::{GridLayout, PackPlan};
use crate::llava::{LlavaConfig, LlavaVision, RawLlavaConfig};
use crate::preprocess::anyres::{GridPinpoints, LLAVA_NEXT_PINPOINTS};
use crate::{Error, Result};

/// A LLaVA-NeXT `config.json` as written: LLaVA's fields plus
/// `image_grid_pinpoints` (absent: 4.43's default, [`LLAVA_NEXT_PINPOINTS`]).
#[derive(Debug, Clone, Deserialize)]
pub struct RawLlavaNextConfig {
    /// The fields LLaVA-NeXT shares with LLaVA, at the top level of the same
    /// file.
    #[serde(flatten)]
    pub llava: RawLlavaConfig,
    /// `(height, width)` pairs in pixels.
    #[serde(default)]
    pub image_grid_pinpoints: Option<Vec<[u32; 2]>>,
}

impl RawLlavaNextConfig {
    /// Validates the config; the pinpoints must be multiples of the vision
    /// tower's `image_size`.
    pub fn into_config(self) -> Result<LlavaNextConfig> {
        let llava = self.llava.into_config()?;
        let pinpoints = self
            .image_grid_pinpoints
            .map(|list| list.into_iter().map(|[h, w]| (h, w)).collect())
            .unwrap_or_else(|| LLAVA_NEXT_PINPOINTS.to_vec());
        let tile = u32::try_from(llava.vision.image_size)
            .map_err(|_| Error::config("vision_config.image_size", "does not fit in u32"))?;
        let pinpoints = GridPinpoints::new(pinpoints, tile)
            .map_err(|e| Error::config("image_grid_pinpoints", e.to_string()))?;
        Ok(LlavaNextConfig { llava, pinpoints })
    }
}

/// A validated LLaVA-NeXT config (vision side).
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaNextConfig {
    /// The LLaVA fields: tower, feature layer, projector, image token,
    /// `[CLS]`-attention layer.
    pub llava: LlavaConfig,
    /// `image_grid_pinpoints`, tiles of `vision_config.image_size`.
    pub pinpoints: GridPinpoints,
}

impl LlavaNextConfig {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let raw: RawLlavaNextConfig = read_json(&dir.as_ref().join("config.json"))?;
        raw.into_config()
    }

    /// `llava-hf/llava-v1.6-vicuna-7b-hf` (vision side; `text_config` holds
    /// only the hidden size).
    pub fn llava_v1_6_vicuna_7b() -> Self {
        Self {
            llava: LlavaConfig::llava_1_5_7b(),
            pinpoints: GridPinpoints::llava_next(),
        }
    }

    /// Patches per tile side (24 for ViT-L/14 at 336).
    pub fn patches_per_side(&self) -> i64 {
        self.llava.vision.grid()
    }

    /// The full branch's packing for an image of `(height, width)`.
    pub fn pack_plan(&self, image_size: (u32, u32), layout: GridLayout) -> Result<PackPlan> {
        let grid = self.pinpoints.grid_shape(image_size.0, image_size.1);
        PackPlan::new(image_size, grid, self.patches_per_side(), layout)
    }
}

/// What the tower gives for the tiles of one image.
#[derive(Debug)]
pub struct TileFeatures {
    /// `[tiles, 576, hidden * feature_layers]`: the projector's input.
    pub features: Tensor,
    /// DAMRO `[CLS]` scores `[tiles, 576]` (f32), when the config asks for
    /// them.
    pub cls_attention: Option<Tensor>,
}

/// The contrast branch's image tokens.
#[derive(Debug)]
pub struct OutlierTokens {
    /// `[1, k + 1, text_hidden]`: the base tile's k outlier features in
    /// top-k order, projected, then `image_newline`.
    pub tokens: Tensor,
    /// The base tile's outlier patch indices (0..576), descending score.
    pub outlier_indices: Vec<i64>,
}

/// What [`LlavaNextVision::encode`] returns for one image.
#[derive(Debug)]
pub struct LlavaNextImageFeatures {
    /// The full branch's image tokens `[1, n, text_hidden]`.
    pub full: Tensor,
    /// The packing used for `full`.
    pub plan: PackPlan,
    /// The contrast branch, when `k` was given.
    pub outliers: Option<OutlierTokens>,
    /// Per-tile features and scores (for heatmaps of every tile).
    pub tiles: TileFeatures,
}

/// LLaVA-NeXT's vision tower, projector and `image_newline`.
#[derive(Debug)]
pub struct LlavaNextVision {
    /// The tower and projector, as LLaVA-1.5 has them.
    pub llava: LlavaVision,
    /// `image_newline` `[text_hidden]`.
    pub image_newline: Tensor,
    config: LlavaNextConfig,
}

impl LlavaNextVision {
    /// Loads the vision side of a LLaVA-NeXT model directory alone: the
    /// language model's tensors are skipped, every other tensor must be used.
    pub fn load(dir: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        Self::load_with_config(dir, &LlavaNextConfig::from_dir(dir)?, options)
    }

    /// Like [`Self::load`] with a config read (and possibly changed)
    /// beforehand.
    pub fn load_with_config(
        dir: impl AsRef<Path>,
        config: &LlavaNextConfig,
        options: LoadOptions,
    ) -> Result<Self> {
        let root = Weights::new(Checkpoint::open(dir, &KeyMap::llava())?, options)?;
        let vision = Self::load_from(&root, config)?;
        root.ignore("language_model");
        root.finish()?;
        Ok(vision)
    }

    /// Loads from the root of a checkpoint opened with [`KeyMap::llava`],
    /// without calling [`Weights::finish`] (the caller loading the language
    /// model from the same root calls it once at the end).
    pub fn load_from(root: &Weights, config: &LlavaNextConfig) -> Result<Self> {
        Ok(Self {
            llava: LlavaVision::load_from(root, &config.llava)?,
            image_newline: root.get("image_newline", &[config.llava.projector.out_dim])?,
            config: config.clone(),
        })
    }

    /// The config the model was loaded with.
    pub fn config(&self) -> &LlavaNextConfig {
        &self.config
    }

    /// Runs all tiles through the tower in one forward.
    ///
    /// # Shapes
    /// pixels `[tiles, 3, 336, 336]` → features `[tiles, 576, hidden]`,
    /// `[CLS]` scores `[tiles, 576]` (f32)
    pub fn encode_tiles(&self, pixels: &Tensor) -> Result<TileFeatures> {
        let (features, cls_attention) = self.llava.features(pixels)?;
        Ok(TileFeatures {
            features,
            cls_attention,
        })
    }

    /// The full branch's image tokens: every tile projected, then packed.
    ///
    /// # Shapes
    /// features `[tiles, 576, hidden]` → `[1, plan.num_tokens(), text_hidden]`
    pub fn full_tokens(&self, tiles: &TileFeatures, plan: &PackPlan) -> Result<Tensor> {
        let projected = self.llava.project(&tiles.features)?;
        Ok(plan.pack(&projected, &self.image_newline)?.f_unsqueeze(0)?)
    }

    /// The contrast branch's `k + 1` image tokens from the base tile (tile
    /// 0) alone.
    ///
    /// # Errors
    /// [`Error::Input`] without `[CLS]` scores or for `k` outside
    /// `1..=patches`.
    pub fn outlier_tokens(&self, tiles: &TileFeatures, k: i64) -> Result<OutlierTokens> {
        let scores = tiles.cls_attention.as_ref().ok_or_else(|| {
            Error::input(
                "LLaVA-NeXT contrast tokens",
                "[CLS] scores (cls_attention_layer set)",
                "none",
            )
        })?;
        let patches = scores.size()[1];
        if !(1..=patches).contains(&k) {
            return Err(Error::input("outlier k", format!("1..={patches}"), k));
        }
        let (_, index) = scores.f_get(0)?.f_topk(k, -1, true, true)?;
        let index = index.f_to_kind(Kind::Int64)?;
        let base = tiles.features.f_get(0)?;
        let projected = self.llava.project(&base.f_index_select(0, &index)?)?;
        let newline = self.image_newline.f_to_kind(projected.kind())?;
        let tokens = Tensor::f_cat(&[projected, newline.f_unsqueeze(0)?], 0)?.f_unsqueeze(0)?;
        Ok(OutlierTokens {
            tokens,
            outlier_indices: Vec::<i64>::try_from(index.f_to_device(tch::Device::Cpu)?)?,
        })
    }

    /// Both branches' image tokens for one preprocessed image.
    ///
    /// # Shapes
    /// pixels `[tiles, 3, 336, 336]` (base tile first) → see
    /// [`LlavaNextImageFeatures`]
    ///
    /// # Errors
    /// A tile count that does not match `image_size`'s grid, or the errors
    /// of [`Self::outlier_tokens`].
    pub fn encode(
        &self,
        pixels: &Tensor,
        image_size: (u32, u32),
        layout: GridLayout,
        k: Option<i64>,
    ) -> Result<LlavaNextImageFeatures> {
        let plan = self.config.pack_plan(image_size, layout)?;
        let tiles = pixels.size().first().copied().unwrap_or(0);
        if tiles != plan.num_tiles() {
            return Err(Error::input(
                "LLaVA-NeXT pixel values",
                format!(
                    "{} tiles for an image of {}x{} (height x width)",
                    plan.num_tiles(),
                    image_size.0,
                    image_size.1
                ),
                pixels.size(),
            ));
        }
        let tiles = self.encode_tiles(pixels)?;
        let full = self.full_tokens(&tiles, &plan)?;
        let outliers = k.map(|k| self.outlier_tokens(&tiles, k)).transpose()?;
        Ok(LlavaNextImageFeatures {
            full,
            plan,
            outliers,
            tiles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_config_parses_to_the_preset() {
        let raw: RawLlavaNextConfig = serde_json::from_str(
            r#"{"architectures": ["LlavaNextForConditionalGeneration"], "ignore_index": -100,
                "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
                "image_token_index": 32000, "model_type": "llava_next", "projector_hidden_act": "gelu",
                "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "pad_token_id": 0,
                    "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064},
                "torch_dtype": "float16", "use_image_newline_parameter": true,
                "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                    "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                    "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
                "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064}"#,
        )
        .unwrap();
        let cfg = raw.into_config().unwrap();
        let preset = LlavaNextConfig::llava_v1_6_vicuna_7b();
        assert_eq!(cfg.pinpoints, preset.pinpoints);
        assert_eq!(cfg.llava.vision, preset.llava.vision);
        assert_eq!(cfg.llava.projector, preset.llava.projector);
        assert_eq!(cfg.patches_per_side(), 24);
    }

    #[test]
    fn bad_pinpoints_are_named() {
        let err =
            serde_json::from_str::<RawLlavaNextConfig>(r#"{"image_grid_pinpoints": [[336, 500]]}"#)
                .unwrap()
                .into_config()
                .unwrap_err();
        assert!(
            matches!(&err, Error::Config { field, .. } if field == "image_grid_pinpoints"),
            "{err}"
        );
    }
}

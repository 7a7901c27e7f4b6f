//! `preprocessor_config.json`: the file as written, and the validated
//! config the processor runs.
//!
//! Defaults are those of the HF transformers 5.23 classes named by
//! `image_processor_type` (`CLIPImageProcessor`, `LlavaImageProcessor`,
//! `BlipImageProcessor`, with or without the `Fast` / `Pil` suffix); size
//! dictionaries follow HF's `get_size_dict`.

use std::path::Path;

use serde::Deserialize;

use super::{PreprocessError, Result};

/// OpenAI CLIP normalisation mean (`OPENAI_CLIP_MEAN`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP normalisation std (`OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// PIL's `Image.BICUBIC`, the only `resample` value supported.
pub const PIL_BICUBIC: u32 = 3;

/// A size as HF configs write it: an int, `[height, width]`, or a dict.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    /// One int: a square, or the shortest edge when the class does not
    /// default to squares.
    Int(u32),
    /// `[height, width]`.
    List(Vec<u32>),
    /// `{"shortest_edge": ..}`, `{"height": .., "width": ..}`, ...
    Dict(SizeDictFile),
}

/// The keys a size dictionary may hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SizeDictFile {
    /// `height` in pixels (with `width`: an exact size).
    pub height: Option<u32>,
    /// `width` in pixels (with `height`: an exact size).
    pub width: Option<u32>,
    /// `shortest_edge`: resize so the shorter side has this length.
    pub shortest_edge: Option<u32>,
    /// `longest_edge`: with `shortest_edge`, the cap on the longer side.
    pub longest_edge: Option<u32>,
    /// `max_height`: read so that it can be rejected (not supported).
    pub max_height: Option<u32>,
    /// `max_width`: read so that it can be rejected (not supported).
    pub max_width: Option<u32>,
}

/// One float or one per channel.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FloatOrList {
    /// One value for all three channels.
    One(f64),
    /// One value per channel (exactly three).
    List(Vec<f64>),
}

/// `preprocessor_config.json` as written; absent keys take the defaults of
/// the class named by `image_processor_type`. Unknown keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PreprocessorConfigFile {
    /// `image_processor_type`: the HF class (`CLIPImageProcessor`,
    /// `LlavaImageProcessor`, `BlipImageProcessor`, optionally with a `Fast` /
    /// `Pil` suffix). Required by [`PreprocessorConfigFile::into_config`].
    pub image_processor_type: Option<String>,
    /// `do_convert_rgb`: convert to RGB first. Default true.
    pub do_convert_rgb: Option<bool>,
    /// `do_resize`: run the resize step. Default true.
    pub do_resize: Option<bool>,
    /// `size`: the resize target. Default 224 (shortest edge) for CLIP and
    /// LLaVA, 384 (square) for BLIP.
    pub size: Option<SizeSpec>,
    /// `default_to_square`: whether a bare int `size` means a square rather
    /// than a shortest edge. Default false for CLIP and LLaVA, true for BLIP.
    pub default_to_square: Option<bool>,
    /// `resample`: PIL filter id; only 3 (bicubic, the default) is supported.
    pub resample: Option<u32>,
    /// `do_center_crop`: run the centre crop. Default true for CLIP and LLaVA,
    /// false for BLIP.
    pub do_center_crop: Option<bool>,
    /// `crop_size`: the crop's size. Default 224 for CLIP and LLaVA; BLIP has
    /// none.
    pub crop_size: Option<SizeSpec>,
    /// `do_rescale`: multiply pixel values by `rescale_factor`. Default true.
    pub do_rescale: Option<bool>,
    /// `rescale_factor`: finite and non-zero. Default 1/255.
    pub rescale_factor: Option<f64>,
    /// `do_normalize`: subtract `image_mean` and divide by `image_std`. Default
    /// true.
    pub do_normalize: Option<bool>,
    /// `image_mean`: per-channel mean. Default [`OPENAI_CLIP_MEAN`].
    pub image_mean: Option<FloatOrList>,
    /// `image_std`: per-channel std, no zero. Default [`OPENAI_CLIP_STD`].
    pub image_std: Option<FloatOrList>,
    /// `LlavaImageProcessor` only: pad to a square with the mean colour.
    pub do_pad: Option<bool>,
}

/// The HF processor class a config belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessorKind {
    /// `CLIPImageProcessor` (llava-hf's LLaVA-1.5 checkpoints).
    Clip,
    /// `LlavaImageProcessor`: CLIP's pipeline plus optional `do_pad`.
    Llava,
    /// `BlipImageProcessor` (InstructBLIP).
    Blip,
}

impl ProcessorKind {
    /// Parses an `image_processor_type`, ignoring a `Fast` / `Pil` suffix.
    pub fn from_type_name(name: &str) -> Result<Self> {
        let base = name
            .strip_suffix("Fast")
            .or_else(|| name.strip_suffix("Pil"))
            .unwrap_or(name);
        match base {
            "CLIPImageProcessor" => Ok(Self::Clip),
            "LlavaImageProcessor" => Ok(Self::Llava),
            "BlipImageProcessor" => Ok(Self::Blip),
            _ => Err(PreprocessError::UnsupportedProcessor(name.to_string())),
        }
    }
}

/// How the resize step picks the output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Shortest edge to `shortest`, the other scaled and truncated like
    /// HF's `get_resize_output_image_size` (or, with `longest`, capped
    /// like `get_size_with_aspect_ratio`).
    ShortestEdge {
        /// Length of the shorter side after resizing (`shortest_edge`).
        shortest: u32,
        /// Cap on the longer side (`longest_edge`), if any.
        longest: Option<u32>,
    },
    /// Straight to `height x width`.
    Exact {
        /// Output height in pixels.
        height: u32,
        /// Output width in pixels.
        width: u32,
    },
}

/// A `height x width` crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropSize {
    /// Crop height in pixels.
    pub height: u32,
    /// Crop width in pixels.
    pub width: u32,
}

/// Per-channel normalisation, kept in `f64` as the JSON holds it (each
/// backend rounds to `f32` its own way).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// Subtracted per channel (RGB), after rescaling (`image_mean`).
    pub mean: [f64; 3],
    /// Divides per channel (RGB), after subtracting the mean (`image_std`); no
    /// zero.
    pub std: [f64; 3],
}

/// The validated preprocessing config. `None` steps are not run.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessorConfig {
    /// The HF class the config belongs to (`image_processor_type`).
    pub kind: ProcessorKind,
    /// Convert to RGB first (`do_convert_rgb`).
    pub do_convert_rgb: bool,
    /// LLaVA's pad-to-square with the mean colour, before resizing.
    pub pad_to_square: bool,
    /// The resize step (`do_resize`, `size`, `default_to_square`).
    pub resize: Option<ResizeTarget>,
    /// The centre crop (`do_center_crop`, `crop_size`).
    pub center_crop: Option<CropSize>,
    /// Pixel values are multiplied by this (`do_rescale`, `rescale_factor`).
    pub rescale_factor: Option<f64>,
    /// Per-channel normalisation (`do_normalize`, `image_mean`, `image_std`).
    pub normalize: Option<Normalize>,
    /// The mean as configured, even when `do_normalize` is off (the pad
    /// colour is derived from it).
    pub image_mean: [f64; 3],
}

impl PreprocessorConfig {
    /// llava-hf `llava-1.5-{7b,13b}-hf`: CLIP, shortest edge 336, 336 crop.
    pub fn llava_1_5() -> Self {
        Self {
            kind: ProcessorKind::Clip,
            do_convert_rgb: true,
            pad_to_square: false,
            resize: Some(ResizeTarget::ShortestEdge {
                shortest: 336,
                longest: None,
            }),
            center_crop: Some(CropSize {
                height: 336,
                width: 336,
            }),
            rescale_factor: Some(1.0 / 255.0),
            normalize: Some(Normalize {
                mean: OPENAI_CLIP_MEAN,
                std: OPENAI_CLIP_STD,
            }),
            image_mean: OPENAI_CLIP_MEAN,
        }
    }

    /// `Salesforce/instructblip-vicuna-7b`: BLIP, 224 x 224.
    pub fn instructblip() -> Self {
        Self {
            kind: ProcessorKind::Blip,
            resize: Some(ResizeTarget::Exact {
                height: 224,
                width: 224,
            }),
            center_crop: None,
            ..Self::llava_1_5()
        }
    }

    /// Parses a `preprocessor_config.json` text. A transformers-5
    /// `processor_config.json` (with the image processor under
    /// `"image_processor"`) is accepted too.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| PreprocessError::ConfigParse(e.to_string()))?;
        let value = match value.get("image_processor") {
            Some(inner) if inner.is_object() => inner.clone(),
            _ => value,
        };
        let file: PreprocessorConfigFile = serde_json::from_value(value)
            .map_err(|e| PreprocessError::ConfigParse(e.to_string()))?;
        file.into_config()
    }

    /// Reads a config file (see [`Self::from_json_str`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| PreprocessError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_json_str(&text).map_err(|e| PreprocessError::InConfigFile {
            path: path.to_path_buf(),
            error: Box::new(e),
        })
    }

    /// Reads `preprocessor_config.json`, or else `processor_config.json`,
    /// from a HF model directory.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let pre = dir.join("preprocessor_config.json");
        if pre.is_file() {
            return Self::from_file(pre);
        }
        let proc = dir.join("processor_config.json");
        if proc.is_file() {
            return Self::from_file(&proc).map_err(|e| match e {
                PreprocessError::InConfigFile { path, error }
                    if matches!(
                        *error,
                        PreprocessError::InvalidConfig {
                            field: "image_processor_type",
                            ..
                        }
                    ) =>
                {
                    PreprocessError::Io {
                        path: pre,
                        message: format!(
                            "no such file, and {} holds no image processor to use instead",
                            path.display()
                        ),
                    }
                }
                other => other,
            });
        }
        Err(PreprocessError::Io {
            path: pre,
            message: "no such file (nor a processor_config.json with an image processor)".into(),
        })
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> PreprocessError {
    PreprocessError::InvalidConfig {
        field,
        message: message.into(),
    }
}

fn three(field: &'static str, v: Option<FloatOrList>, default: [f64; 3]) -> Result<[f64; 3]> {
    let out = match v {
        None => default,
        Some(FloatOrList::One(x)) => [x; 3],
        Some(FloatOrList::List(list)) => <[f64; 3]>::try_from(list.as_slice())
            .map_err(|_| bad(field, format!("expected 3 values, got {}", list.len())))?,
    };
    if out.iter().any(|x| !x.is_finite()) {
        return Err(bad(field, "values must be finite"));
    }
    Ok(out)
}

/// HF's `get_size_dict` for `size`, then the resize rule the backends use.
fn resize_target(spec: SizeSpec, default_to_square: bool) -> Result<ResizeTarget> {
    let dict = match spec {
        SizeSpec::Int(n) if default_to_square => SizeDictFile {
            height: Some(n),
            width: Some(n),
            ..Default::default()
        },
        SizeSpec::Int(n) => SizeDictFile {
            shortest_edge: Some(n),
            ..Default::default()
        },
        SizeSpec::List(v) if v.len() == 2 => SizeDictFile {
            height: Some(v[0]),
            width: Some(v[1]),
            ..Default::default()
        },
        SizeSpec::List(v) => {
            return Err(bad("size", format!("expected 2 values, got {}", v.len())));
        }
        SizeSpec::Dict(d) => d,
    };
    let target = match dict {
        SizeDictFile {
            shortest_edge: Some(shortest),
            longest_edge,
            ..
        } => ResizeTarget::ShortestEdge {
            shortest,
            longest: longest_edge,
        },
        SizeDictFile {
            height: Some(height),
            width: Some(width),
            max_height: None,
            max_width: None,
            ..
        } => ResizeTarget::Exact { height, width },
        other => {
            return Err(bad(
                "size",
                format!("unsupported size dictionary {other:?}"),
            ));
        }
    };
    let positive = match target {
        ResizeTarget::ShortestEdge { shortest, longest } => {
            shortest > 0 && longest.is_none_or(|l| l > 0)
        }
        ResizeTarget::Exact { height, width } => height > 0 && width > 0,
    };
    if !positive {
        return Err(bad("size", "sizes must be positive"));
    }
    Ok(target)
}

fn crop_size(spec: SizeSpec) -> Result<CropSize> {
    let (height, width) = match spec {
        SizeSpec::Int(n) => (n, n),
        SizeSpec::List(v) if v.len() == 2 => (v[0], v[1]),
        SizeSpec::Dict(SizeDictFile {
            height: Some(h),
            width: Some(w),
            ..
        }) => (h, w),
        other => {
            return Err(bad(
                "crop_size",
                format!("expected height and width, got {other:?}"),
            ));
        }
    };
    if height == 0 || width == 0 {
        return Err(bad("crop_size", "sizes must be positive"));
    }
    Ok(CropSize { height, width })
}

impl PreprocessorConfigFile {
    /// Validates into a [`PreprocessorConfig`], with the class named by
    /// `image_processor_type`.
    ///
    /// # Errors
    /// A missing or unknown processor type, a resample other than bicubic,
    /// malformed sizes, or bad mean/std/rescale values.
    pub fn into_config(self) -> Result<PreprocessorConfig> {
        let name = self
            .image_processor_type
            .clone()
            .ok_or_else(|| bad("image_processor_type", "missing"))?;
        let kind = ProcessorKind::from_type_name(&name)?;
        self.into_config_as(kind)
    }

    /// Validates with the defaults of `kind`, whatever the file names.
    pub fn into_config_as(self, kind: ProcessorKind) -> Result<PreprocessorConfig> {
        let clip_like = matches!(kind, ProcessorKind::Clip | ProcessorKind::Llava);
        let default_to_square = self.default_to_square.unwrap_or(!clip_like);
        let resample = self.resample.unwrap_or(PIL_BICUBIC);
        if resample != PIL_BICUBIC {
            return Err(PreprocessError::UnsupportedResample(resample));
        }
        let resize = if self.do_resize.unwrap_or(true) {
            let spec = self.size.unwrap_or(if clip_like {
                SizeSpec::Int(224)
            } else {
                SizeSpec::Int(384)
            });
            Some(resize_target(spec, default_to_square)?)
        } else {
            None
        };
        let center_crop = if self.do_center_crop.unwrap_or(clip_like) {
            let spec = match (self.crop_size, clip_like) {
                (Some(spec), _) => spec,
                (None, true) => SizeSpec::Int(224),
                (None, false) => {
                    return Err(bad("crop_size", "do_center_crop is set without crop_size"));
                }
            };
            Some(crop_size(spec)?)
        } else {
            None
        };
        let rescale_factor = if self.do_rescale.unwrap_or(true) {
            let f = self.rescale_factor.unwrap_or(1.0 / 255.0);
            if !f.is_finite() || f == 0.0 {
                return Err(bad(
                    "rescale_factor",
                    format!("must be finite and non-zero, got {f}"),
                ));
            }
            Some(f)
        } else {
            None
        };
        let mean = three("image_mean", self.image_mean, OPENAI_CLIP_MEAN)?;
        let std = three("image_std", self.image_std, OPENAI_CLIP_STD)?;
        let normalize = if self.do_normalize.unwrap_or(true) {
            if std.contains(&0.0) {
                return Err(bad("image_std", "must not contain zero"));
            }
            Some(Normalize { mean, std })
        } else {
            None
        };
        let pad_to_square = match (kind, self.do_pad) {
            (ProcessorKind::Llava, Some(p)) => p,
            _ => false,
        };
        Ok(PreprocessorConfig {
            kind,
            do_convert_rgb: self.do_convert_rgb.unwrap_or(true),
            pad_to_square,
            resize,
            center_crop,
            rescale_factor,
            normalize,
            image_mean: mean,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llava_hub_file() {
        let text = r#"{
          "crop_size": {"height": 336, "width": 336}, "do_center_crop": true,
          "do_convert_rgb": true, "do_normalize": true, "do_rescale": true,
          "do_resize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073],
          "image_processor_type": "CLIPImageProcessor",
          "image_std": [0.26862954, 0.26130258, 0.27577711],
          "processor_class": "LlavaProcessor", "resample": 3,
          "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}}"#;
        let cfg = PreprocessorConfig::from_json_str(text).unwrap();
        assert_eq!(cfg, PreprocessorConfig::llava_1_5());
    }

    #[test]
    fn blip_file_and_legacy_ints() {
        let text = r#"{"image_processor_type": "BlipImageProcessor",
          "size": {"height": 224, "width": 224}, "resample": 3}"#;
        assert_eq!(
            PreprocessorConfig::from_json_str(text).unwrap(),
            PreprocessorConfig::instructblip()
        );
        let legacy =
            r#"{"image_processor_type": "CLIPImageProcessor", "size": 336, "crop_size": 336}"#;
        assert_eq!(
            PreprocessorConfig::from_json_str(legacy).unwrap(),
            PreprocessorConfig::llava_1_5()
        );
        let nested = r#"{"image_processor": {"image_processor_type": "BlipImageProcessorFast", "size": 224}}"#;
        assert_eq!(
            PreprocessorConfig::from_json_str(nested).unwrap(),
            PreprocessorConfig::instructblip()
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"image_processor_type": "SiglipImageProcessor"}"#,
                "Siglip",
            ),
            (r#"{"size": 3}"#, "image_processor_type"),
            (
                r#"{"image_processor_type": "CLIPImageProcessor", "resample": 2}"#,
                "resample",
            ),
            (
                r#"{"image_processor_type": "CLIPImageProcessor", "image_std": [1, 0, 1]}"#,
                "image_std",
            ),
            (
                r#"{"image_processor_type": "CLIPImageProcessor", "image_mean": [1, 2]}"#,
                "image_mean",
            ),
            (
                r#"{"image_processor_type": "BlipImageProcessor", "do_center_crop": true}"#,
                "crop_size",
            ),
            (
                r#"{"image_processor_type": "BlipImageProcessor", "size": {"height": 0, "width": 3}}"#,
                "size",
            ),
            (
                r#"{"image_processor_type": "BlipImageProcessor", "size": "big"}"#,
                "SizeSpec",
            ),
            ("{", "EOF"),
        ];
        for (text, needle) in cases {
            let err = PreprocessorConfig::from_json_str(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn llava_do_pad() {
        let text = r#"{"image_processor_type": "LlavaImageProcessor", "do_pad": true,
            "size": {"shortest_edge": 336}, "crop_size": 336}"#;
        let cfg = PreprocessorConfig::from_json_str(text).unwrap();
        assert!(cfg.pad_to_square);
        assert_eq!(cfg.kind, ProcessorKind::Llava);
    }
}

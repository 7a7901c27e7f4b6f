//! LLaVA-NeXT's "anyres" image processor, as transformers 4.43's
//! `LlavaNextImageProcessor` (PIL backend, `use_fast=False`) runs it: the
//! processor the DAMRO authors used for LLaVA-NeXT.
//!
//! For an image of `height x width`:
//! 1. [`select_best_resolution`] picks a `(height, width)` pinpoint;
//! 2. the image is resized keeping its aspect ratio to
//!    [`patch_output_size`] (float64 arithmetic with `ceil`, so a product
//!    like `504.00000000000006` becomes 505), bicubic;
//! 3. it is pasted on a black canvas with the offsets `(target - size) / 2`
//!    on both sides, so an odd margin leaves the canvas one pixel short;
//! 4. the canvas is cut into `tile x tile` tiles row by row (a short edge
//!    tile is smaller); each tile goes through the CLIP pipeline (shortest
//!    edge resize, centre crop, rescale, normalise), which brings a short
//!    tile back to `tile x tile`;
//! 5. a base tile comes first: the whole image resized straight to
//!    `shortest_edge x shortest_edge` (aspect not kept), then the same CLIP
//!    pipeline.
//!
//! `image_sizes` is the original `(height, width)`. The arithmetic of steps
//! 1-3 is in [`AnyResGeometry`]; each step reuses the LLaVA-1.5 processor's
//! pieces ([`ImageProcessor`], the PIL bicubic port).

use std::path::Path;

use image::RgbImage;
use serde::Deserialize;
use tch::Tensor;

use super::config::{PreprocessorConfigFile, ProcessorKind, SizeDictFile, SizeSpec};
use super::pil_bicubic::resize_bicubic_as;
use super::processor::{
    ImageInput, ImageProcessor, PadToSquare, ProcessorOptions, Resampler, check_size,
    resize_torchvision,
};
use super::{PreprocessError, PreprocessorConfig, Result};

/// A grid resolution `(height, width)` in pixels, as `image_grid_pinpoints`
/// lists them.
pub type Resolution = (u32, u32);

/// `image_grid_pinpoints` of `llava-hf/llava-v1.6-*-hf`, `(height, width)`.
pub const LLAVA_NEXT_PINPOINTS: [Resolution; 5] =
    [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)];

/// The candidate grid resolutions, each side a positive multiple of the
/// tile side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridPinpoints {
    pinpoints: Vec<Resolution>,
    tile: u32,
}

impl GridPinpoints {
    /// Validates `pinpoints` (`(height, width)` pairs) for tiles of
    /// `tile x tile` pixels.
    ///
    /// # Errors
    /// [`PreprocessError::InvalidConfig`] (field `image_grid_pinpoints`) for
    /// an empty list, a zero tile, or a side that is not a positive
    /// multiple of the tile.
    pub fn new(pinpoints: Vec<Resolution>, tile: u32) -> Result<Self> {
        let bad = |message: String| PreprocessError::InvalidConfig {
            field: "image_grid_pinpoints",
            message,
        };
        if tile == 0 {
            return Err(bad("the tile side (crop_size) is zero".into()));
        }
        if pinpoints.is_empty() {
            return Err(bad("the list is empty".into()));
        }
        for &(h, w) in &pinpoints {
            if h == 0 || w == 0 || h % tile != 0 || w % tile != 0 {
                return Err(bad(format!(
                    "[{h}, {w}] is not a pair of positive multiples of the tile side {tile}"
                )));
            }
            check_size(w, h)?;
        }
        Ok(Self { pinpoints, tile })
    }

    /// [`LLAVA_NEXT_PINPOINTS`] with 336-pixel tiles.
    pub fn llava_next() -> Self {
        Self {
            pinpoints: LLAVA_NEXT_PINPOINTS.to_vec(),
            tile: 336,
        }
    }

    /// The pinpoints, `(height, width)`.
    pub fn pinpoints(&self) -> &[Resolution] {
        &self.pinpoints
    }

    /// The tile side in pixels.
    pub fn tile(&self) -> u32 {
        self.tile
    }

    /// `(rows, cols)` of grid tiles for an image of `height x width`
    /// (HF `get_anyres_image_grid_shape`, read the intended way round).
    pub fn grid_shape(&self, height: u32, width: u32) -> (u32, u32) {
        let (h, w) = select_best_resolution(height, width, &self.pinpoints);
        (h / self.tile, w / self.tile)
    }

    /// Tiles the processor returns for an image: the base tile plus the
    /// grid (HF `image_size_to_num_patches`).
    pub fn num_tiles(&self, height: u32, width: u32) -> usize {
        let (rows, cols) = self.grid_shape(height, width);
        1 + rows as usize * cols as usize
    }
}

/// HF `select_best_resolution`: the pinpoint that keeps the most of the
/// image's pixels when it is scaled to fit (capped at the original count),
/// ties broken by the least wasted area, then by list order. Float64
/// arithmetic with truncation, as Python does it.
///
/// An empty list gives `(0, 0)`; [`GridPinpoints`] never holds one.
pub fn select_best_resolution(height: u32, width: u32, pinpoints: &[Resolution]) -> Resolution {
    let (oh, ow) = (f64::from(height), f64::from(width));
    let original = u64::from(height) * u64::from(width);
    let mut best = (0, 0);
    let mut max_effective = 0u64;
    let mut min_wasted = u64::MAX;
    for &(h, w) in pinpoints {
        let scale = (f64::from(w) / ow).min(f64::from(h) / oh);
        let (dw, dh) = ((ow * scale) as u64, (oh * scale) as u64);
        let effective = (dw * dh).min(original);
        let wasted = (u64::from(h) * u64::from(w)).saturating_sub(effective);
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            max_effective = effective;
            min_wasted = wasted;
            best = (h, w);
        }
    }
    best
}

/// `_get_patch_output_size` of 4.43: the aspect-keeping size inside
/// `target`, the scaled side rounded up with `math.ceil` of a float64
/// product and capped at the target.
pub fn patch_output_size(height: u32, width: u32, target: Resolution) -> Resolution {
    let (th, tw) = target;
    let scale_w = f64::from(tw) / f64::from(width);
    let scale_h = f64::from(th) / f64::from(height);
    if scale_w < scale_h {
        let h = (f64::from(height) * scale_w).ceil() as u32;
        (h.min(th), tw)
    } else {
        let w = (f64::from(width) * scale_h).ceil() as u32;
        (th, w.min(tw))
    }
}

/// Where an image goes on the anyres canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnyResGeometry {
    /// The original `(height, width)` (`image_sizes`).
    pub image: Resolution,
    /// The chosen pinpoint.
    pub best: Resolution,
    /// The aspect-keeping resize inside it.
    pub resized: Resolution,
    /// Black rows above and below, columns left and right:
    /// `(target - resized) / 2` (floor) on each side.
    pub paste: (u32, u32),
    /// `(rows, cols)` of grid tiles.
    pub grid: (u32, u32),
}

impl AnyResGeometry {
    /// The geometry of an image of `height x width`.
    pub fn new(height: u32, width: u32, pinpoints: &GridPinpoints) -> Result<Self> {
        if height == 0 || width == 0 {
            return Err(PreprocessError::EmptyImage { width, height });
        }
        let best = select_best_resolution(height, width, pinpoints.pinpoints());
        let resized = patch_output_size(height, width, best);
        let tile = pinpoints.tile();
        Ok(Self {
            image: (height, width),
            best,
            resized,
            paste: ((best.0 - resized.0) / 2, (best.1 - resized.1) / 2),
            grid: (best.0 / tile, best.1 / tile),
        })
    }

    /// The padded canvas, `resized + 2 * paste` (one short of `best` on an
    /// axis with an odd margin).
    pub fn canvas(&self) -> Resolution {
        (
            self.resized.0 + 2 * self.paste.0,
            self.resized.1 + 2 * self.paste.1,
        )
    }

    /// Base tile plus grid tiles.
    pub fn num_tiles(&self) -> usize {
        1 + self.grid.0 as usize * self.grid.1 as usize
    }
}

/// `preprocessor_config.json` of a LLaVA-NeXT checkpoint, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaNextPreprocessorConfig {
    /// The CLIP pipeline every tile goes through (no pad-to-square).
    pub tile_pipeline: PreprocessorConfig,
    /// `size.shortest_edge`: the base tile is resized to this square.
    pub base_side: u32,
    /// `image_grid_pinpoints`, with `crop_size.height` as the tile side.
    pub pinpoints: GridPinpoints,
}

#[derive(Debug, Deserialize)]
struct LlavaNextFile {
    #[serde(flatten)]
    base: PreprocessorConfigFile,
    image_grid_pinpoints: Option<Vec<[u32; 2]>>,
}

fn bad(field: &'static str, message: impl Into<String>) -> PreprocessError {
    PreprocessError::InvalidConfig {
        field,
        message: message.into(),
    }
}

impl LlavaNextPreprocessorConfig {
    /// `llava-hf/llava-v1.6-*-hf`: shortest edge 336, 336 crop and tiles,
    /// [`LLAVA_NEXT_PINPOINTS`], CLIP mean/std.
    pub fn llava_v1_6() -> Self {
        Self {
            tile_pipeline: PreprocessorConfig::llava_1_5(),
            base_side: 336,
            pinpoints: GridPinpoints::llava_next(),
        }
    }

    /// Parses a `preprocessor_config.json` text (or a transformers-5
    /// `processor_config.json` with it under `"image_processor"`). Absent
    /// keys take 4.43's `LlavaNextImageProcessor` defaults.
    ///
    /// # Errors
    /// Malformed JSON, an `image_processor_type` other than
    /// `LlavaNextImageProcessor`, `size` without `shortest_edge`, a
    /// non-square `crop_size`, `do_resize` / `do_center_crop` off (LLaVA-NeXT
    /// tiles need both), or bad pinpoints.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| PreprocessError::ConfigParse(e.to_string()))?;
        let value = match value.get("image_processor") {
            Some(inner) if inner.is_object() => inner.clone(),
            _ => value,
        };
        let file: LlavaNextFile = serde_json::from_value(value)
            .map_err(|e| PreprocessError::ConfigParse(e.to_string()))?;
        if let Some(name) = &file.base.image_processor_type {
            let base = name
                .strip_suffix("Fast")
                .or_else(|| name.strip_suffix("Pil"))
                .unwrap_or(name);
            if base != "LlavaNextImageProcessor" {
                return Err(PreprocessError::UnsupportedProcessor(format!(
                    "{name} (expected LlavaNextImageProcessor)"
                )));
            }
        }
        let base_side = match &file.base.size {
            None => 224,
            Some(SizeSpec::Int(n)) => *n,
            Some(SizeSpec::Dict(SizeDictFile {
                shortest_edge: Some(n),
                ..
            })) => *n,
            Some(other) => {
                return Err(bad(
                    "size",
                    format!("LLaVA-NeXT needs `shortest_edge`, got {other:?}"),
                ));
            }
        };
        if base_side == 0 {
            return Err(bad("size", "shortest_edge must be positive"));
        }
        // `do_pad` of this class pads a batch's tile counts, not the image:
        // the CLIP kind ignores it.
        let tile_pipeline = file.base.into_config_as(ProcessorKind::Clip)?;
        let crop = tile_pipeline
            .center_crop
            .ok_or_else(|| bad("do_center_crop", "LLaVA-NeXT tiles need the centre crop"))?;
        if tile_pipeline.resize.is_none() {
            return Err(bad("do_resize", "LLaVA-NeXT tiles need the resize"));
        }
        if crop.height != crop.width {
            return Err(bad(
                "crop_size",
                format!("tiles must be square, got {}x{}", crop.height, crop.width),
            ));
        }
        let pinpoints = match file.image_grid_pinpoints {
            Some(list) => list.into_iter().map(|[h, w]| (h, w)).collect(),
            None => LLAVA_NEXT_PINPOINTS.to_vec(),
        };
        Ok(Self {
            tile_pipeline,
            base_side,
            pinpoints: GridPinpoints::new(pinpoints, crop.height)?,
        })
    }

    /// Reads `preprocessor_config.json`, or else `processor_config.json`,
    /// from a HF model directory.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = ["preprocessor_config.json", "processor_config.json"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| PreprocessError::Io {
                path: dir.join("preprocessor_config.json"),
                message: "neither preprocessor_config.json nor processor_config.json exists".into(),
            })?;
        let text = std::fs::read_to_string(&path).map_err(|e| PreprocessError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            PreprocessError::ConfigParse(m) => {
                PreprocessError::ConfigParse(format!("{}: {m}", path.display()))
            }
            other => other,
        })
    }
}

/// The processor's output for one image.
#[derive(Debug)]
pub struct AnyResPixels {
    /// `[tiles, 3, tile, tile]` `f32` on the CPU, the base tile first, then
    /// the grid tiles row by row.
    pub pixel_values: Tensor,
    /// The original `(height, width)` (`image_sizes`).
    pub image_size: Resolution,
    /// How the image was laid out.
    pub geometry: AnyResGeometry,
}

/// Runs a [`LlavaNextPreprocessorConfig`] on images.
///
/// The default [`ProcessorOptions`] reproduce the DAMRO authors' run:
/// transformers 4.43, PIL bicubic with the horizontal pass first, alpha
/// dropped by `convert("RGB")`. `pad_to_square` does not apply here.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaNextImageProcessor {
    config: LlavaNextPreprocessorConfig,
    tiles: ImageProcessor,
}

impl LlavaNextImageProcessor {
    /// A processor with the default options.
    pub fn new(config: LlavaNextPreprocessorConfig) -> Self {
        Self::with_options(config, ProcessorOptions::default())
    }

    /// A processor with the given resampling and alpha options.
    pub fn with_options(config: LlavaNextPreprocessorConfig, options: ProcessorOptions) -> Self {
        let options = ProcessorOptions {
            pad_to_square: PadToSquare::Never,
            ..options
        };
        let tiles = ImageProcessor::new(config.tile_pipeline.clone()).with_options(options);
        Self { config, tiles }
    }

    /// Reads the config from a HF model directory.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(LlavaNextPreprocessorConfig::from_model_dir(dir)?))
    }

    /// The config.
    pub fn config(&self) -> &LlavaNextPreprocessorConfig {
        &self.config
    }

    /// The options in use.
    pub fn options(&self) -> &ProcessorOptions {
        self.tiles.options()
    }

    /// Decodes and converts one input to 8-bit RGB, then preprocesses it.
    ///
    /// # Shapes
    /// `pixel_values` is `[tiles, 3, tile, tile]`.
    pub fn preprocess(&self, input: ImageInput<'_>) -> Result<AnyResPixels> {
        self.preprocess_rgb(&self.tiles.to_rgb(input)?)
    }

    /// Preprocesses an image file.
    ///
    /// # Shapes
    /// `pixel_values` is `[tiles, 3, tile, tile]`.
    pub fn preprocess_path(&self, path: impl AsRef<Path>) -> Result<AnyResPixels> {
        self.preprocess(ImageInput::Path(path.as_ref()))
    }

    /// Tiles an RGB image and runs every tile through the CLIP pipeline.
    ///
    /// # Shapes
    /// `pixel_values` is `[tiles, 3, tile, tile]`.
    ///
    /// # Errors
    /// An empty image, a step beyond [`super::processor::MAX_PIXELS`], or a
    /// libtorch failure.
    pub fn preprocess_rgb(&self, rgb: &RgbImage) -> Result<AnyResPixels> {
        let geometry = AnyResGeometry::new(rgb.height(), rgb.width(), &self.config.pinpoints)?;
        let side = self.config.base_side;
        let mut data = Vec::new();
        let mut push = |tile: &RgbImage| -> Result<()> {
            let pv = self.tiles.pixel_values(tile)?;
            data.extend_from_slice(&pv.data);
            Ok(())
        };
        push(&self.resize(rgb, side, side)?)?;
        let (rh, rw) = geometry.resized;
        let canvas = pad_black(&self.resize(rgb, rw, rh)?, geometry);
        let tile = self.config.pinpoints.tile();
        for y in (0..canvas.height()).step_by(tile as usize) {
            for x in (0..canvas.width()).step_by(tile as usize) {
                let (w, h) = (tile.min(canvas.width() - x), tile.min(canvas.height() - y));
                push(&image::imageops::crop_imm(&canvas, x, y, w, h).to_image())?;
            }
        }
        let out = self.tiles.output_size(tile, tile);
        let count = data.len() / (3 * out.0 as usize * out.1 as usize);
        if count != geometry.num_tiles() {
            return Err(bad(
                "crop_size",
                format!(
                    "{count} tiles came out of the canvas, the grid needs {}",
                    geometry.num_tiles()
                ),
            ));
        }
        let pixel_values = Tensor::f_from_slice(&data)?.f_view([
            count as i64,
            3,
            i64::from(out.0),
            i64::from(out.1),
        ])?;
        Ok(AnyResPixels {
            pixel_values,
            image_size: geometry.image,
            geometry,
        })
    }

    fn resize(&self, rgb: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
        match self.tiles.options().resampler {
            Resampler::Pil => resize_bicubic_as(rgb, width, height, self.tiles.options().pillow),
            Resampler::Torchvision => resize_torchvision(rgb, width, height),
        }
    }
}

/// The resized image on its black canvas ([`AnyResGeometry::canvas`]).
fn pad_black(resized: &RgbImage, geometry: AnyResGeometry) -> RgbImage {
    let (ch, cw) = geometry.canvas();
    let (py, px) = geometry.paste;
    let mut canvas = RgbImage::new(cw, ch);
    image::imageops::replace(&mut canvas, resized, i64::from(px), i64::from(py));
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_resolution_and_resize_of_known_sizes() {
        let p = GridPinpoints::llava_next();
        // 500x333 (w x h): one row of two tiles; 500 * 336/333 = 504.5 -> 505
        let g = AnyResGeometry::new(333, 500, &p).unwrap();
        assert_eq!(
            (g.best, g.resized, g.paste),
            ((336, 672), (336, 505), (0, 83))
        );
        assert_eq!((g.canvas(), g.num_tiles()), ((336, 671), 3));
        // 200 * 336/150 = 448.00000000000006 rounds up to 449
        assert_eq!(patch_output_size(150, 200, (336, 672)), (336, 449));
        // ties between [336, 672] and [672, 336] go to the first listed
        assert_eq!(select_best_resolution(150, 200, p.pinpoints()), (336, 672));
        assert_eq!(p.grid_shape(680, 150), (3, 1));
        assert_eq!(p.num_tiles(150, 686), 4);
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            (r#"{"image_processor_type": "CLIPImageProcessor"}"#, "CLIP"),
            (r#"{"size": {"height": 336, "width": 336}}"#, "size"),
            (
                r#"{"crop_size": {"height": 336, "width": 300}, "size": 336}"#,
                "crop_size",
            ),
            (r#"{"do_center_crop": false}"#, "do_center_crop"),
            (
                r#"{"image_grid_pinpoints": [[336, 600]], "crop_size": 336}"#,
                "image_grid_pinpoints",
            ),
            (
                r#"{"image_grid_pinpoints": [], "crop_size": 336}"#,
                "image_grid_pinpoints",
            ),
            ("[", "EOF"),
        ];
        for (text, needle) in cases {
            let err = LlavaNextPreprocessorConfig::from_json_str(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn hub_file_parses_to_the_preset() {
        let text = r#"{"aspect_ratio_setting": "anyres", "crop_size": {"height": 336, "width": 336},
          "do_center_crop": true, "do_convert_rgb": true, "do_normalize": true, "do_rescale": true,
          "do_resize": true, "image_grid_pinpoints": [[336,672],[672,336],[672,672],[1008,336],[336,1008]],
          "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "LlavaNextImageProcessor",
          "image_std": [0.26862954, 0.26130258, 0.27577711], "processor_class": "LlavaNextProcessor",
          "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}}"#;
        let cfg = LlavaNextPreprocessorConfig::from_json_str(text).unwrap();
        assert_eq!(cfg, LlavaNextPreprocessorConfig::llava_v1_6());
    }

    #[test]
    fn short_tiles_come_back_full_size() {
        let p = LlavaNextImageProcessor::new(LlavaNextPreprocessorConfig::llava_v1_6());
        let img = RgbImage::from_fn(500, 333, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let out = p.preprocess_rgb(&img).unwrap();
        assert_eq!(out.pixel_values.size(), [3, 3, 336, 336]);
        assert_eq!(out.image_size, (333, 500));
        assert!(matches!(
            p.preprocess_rgb(&RgbImage::new(0, 5)),
            Err(PreprocessError::EmptyImage { .. })
        ));
    }
}

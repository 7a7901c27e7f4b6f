//! [`AutoDecoder`]: picks the adapter from `config.json`'s `model_type`, and
//! the outlier heatmap of a request's image (LLaVA-NeXT: of its base tile,
//! or of every tile with [`AutoDecoder::write_tile_outlier_heatmaps`]).

use std::path::{Path, PathBuf};

use damro_llm::PromptTemplate;
use damro_nn::read_json;
use damro_outlier::{
    HeatmapOptions, OutlierOrder, PatchGrid, image_from_pixel_values, select_outliers,
    write_heatmap,
};
use damro_sampler::{DamroParams, DamroPreset};
use damro_vision::preprocess::PreprocessorConfig;

/// A benchmark whose DAMRO settings the authors tuned per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Benchmark {
    /// POPE (and MME, GPT-4V-aided evaluation).
    Pope,
    /// CHAIR captioning.
    Chair,
}
use tch::{Device, Tensor};

use damro_core::{
    AnalysisInputs, Branches, DamroDecoder, Error, ImageSource, ModelOptions, Request, Result,
    SecondImage, VisualTokens,
};
use damro_llm::Llama;

use crate::loading::check_model_dir;
use crate::{InstructBlipDecoder, LlavaDecoder, LlavaNextDecoder};

/// A LLaVA-1.5, LLaVA-NeXT or InstructBLIP model, chosen from the
/// directory's config.
#[derive(Debug)]
#[non_exhaustive]
pub enum AutoDecoder {
    /// `model_type: "llava"`.
    Llava(Box<LlavaDecoder>),
    /// `model_type: "llava_next"`.
    LlavaNext(Box<LlavaNextDecoder>),
    /// `model_type: "instructblip"`.
    InstructBlip(Box<InstructBlipDecoder>),
}

#[derive(serde::Deserialize)]
struct ModelType {
    model_type: Option<String>,
}

impl AutoDecoder {
    /// Loads the model directory with the adapter its `model_type` names.
    pub fn load(dir: impl AsRef<Path>, options: ModelOptions) -> Result<Self> {
        let dir = dir.as_ref();
        check_model_dir(dir)?;
        let config = dir.join("config.json");
        let ModelType { model_type } = read_json(&config)?;
        match model_type.as_deref() {
            Some("llava") => Ok(Self::Llava(Box::new(LlavaDecoder::load(dir, options)?))),
            Some("llava_next") => Ok(Self::LlavaNext(Box::new(LlavaNextDecoder::load(
                dir, options,
            )?))),
            Some("instructblip") => Ok(Self::InstructBlip(Box::new(InstructBlipDecoder::load(
                dir, options,
            )?))),
            other => Err(Error::invalid(
                "model_type",
                format!(
                    "{other:?} in {} (expected \"llava\", \"llava_next\" or \"instructblip\")",
                    config.display()
                ),
            )),
        }
    }

    /// The prompt template the authors used with this model.
    pub fn default_template(&self) -> PromptTemplate {
        match self {
            Self::Llava(_) | Self::LlavaNext(_) => PromptTemplate::LlavaV1,
            Self::InstructBlip(_) => PromptTemplate::InstructBlip,
        }
    }

    /// The authors' DAMRO settings for this model on POPE (and MME,
    /// GPT-4V-aided): LLaVA-1.5 and LLaVA-NeXT alpha 2, beta 0.1, k 10;
    /// InstructBLIP alpha 0.5, beta 0.1, k 4.
    ///
    /// # Errors
    /// Only if libtorch fails to compute `ln(beta)`.
    pub fn preset(&self) -> Result<DamroPreset> {
        self.preset_for(Benchmark::Pope)
    }

    /// The authors' DAMRO settings for this model on a benchmark
    /// (InstructBLIP uses alpha 1.5 on CHAIR, 0.5 on POPE; the authors
    /// give one setting for LLaVA-NeXT, alpha 2, beta 0.1, k 10 on MME).
    ///
    /// # Errors
    /// Only if libtorch fails to compute `ln(beta)`.
    pub fn preset_for(&self, benchmark: Benchmark) -> Result<DamroPreset> {
        Ok(match (self, benchmark) {
            (Self::Llava(_), _) => DamroPreset::llava_1_5()?,
            (Self::LlavaNext(_), _) => DamroPreset {
                params: DamroParams::new(2.0, 0.1)?,
                outlier_k: 10,
            },
            (Self::InstructBlip(_), Benchmark::Chair) => DamroPreset::instructblip_chair()?,
            (Self::InstructBlip(_), _) => DamroPreset::instructblip_pope()?,
        })
    }

    /// The model family's name.
    pub fn family(&self) -> &'static str {
        match self {
            Self::Llava(_) => "llava",
            Self::LlavaNext(_) => "llava_next",
            Self::InstructBlip(_) => "instructblip",
        }
    }

    /// The options the model was loaded with.
    pub fn options(&self) -> &ModelOptions {
        match self {
            Self::Llava(d) => d.options(),
            Self::LlavaNext(d) => d.options(),
            Self::InstructBlip(d) => d.options(),
        }
    }

    /// Writes the heatmap of the image's `[CLS]` attention over the
    /// preprocessed image, with the top-`k` outliers outlined, to `path`
    /// (PNG, written atomically). Returns the outliers in selection order.
    /// LLaVA-NeXT: the base tile's map (the tile DAMRO takes its outliers
    /// from).
    ///
    /// # Errors
    /// Preprocessing errors, `k` out of range, an unwritable `path`.
    pub fn write_outlier_heatmap(
        &self,
        image: &ImageSource,
        k: usize,
        path: &Path,
    ) -> Result<Vec<i64>> {
        let tiles = self.heatmap_inputs(image)?;
        tiles.write(0, k, path)
    }

    /// Writes one heatmap per tile the vision tower sees (LLaVA-NeXT: the
    /// base tile, then the grid tiles row by row; other models: their one
    /// image), each with its own top-`k` outliers, to
    /// `<stem>_tile<i>.<ext>` beside `path`.
    ///
    /// # Errors
    /// As [`Self::write_outlier_heatmap`].
    pub fn write_tile_outlier_heatmaps(
        &self,
        image: &ImageSource,
        k: usize,
        path: &Path,
    ) -> Result<Vec<TileHeatmap>> {
        let tiles = self.heatmap_inputs(image)?;
        (0..tiles.count())
            .map(|tile| {
                let path = tile_path(path, tile);
                let outliers = tiles.write(tile, k, &path)?;
                Ok(TileHeatmap {
                    tile,
                    path,
                    outliers,
                })
            })
            .collect()
    }

    /// The pixels `[tiles, 3, H, W]` and `[CLS]` scores `[tiles, patches]` of
    /// an image, with the processor config that normalised them.
    fn heatmap_inputs(&self, image: &ImageSource) -> Result<HeatmapInputs<'_>> {
        let options = self.options();
        let (kind, device) = (options.kind, options.device);
        let (pixels, attention, config) = match self {
            Self::Llava(d) => {
                let pixels = image.pixel_values(d.processor(), kind, device)?;
                let attention = d.cls_attention_of(&pixels)?;
                (pixels, attention, d.processor().config())
            }
            Self::LlavaNext(d) => {
                let (pixels, _) = d.tile_pixels(image)?;
                let attention = d.cls_attention_of(&pixels)?;
                (pixels, attention, &d.processor().config().tile_pipeline)
            }
            Self::InstructBlip(d) => {
                let pixels = image.pixel_values(d.processor(), kind, device)?;
                let attention = d.cls_attention_of(&pixels)?;
                (pixels, attention, d.processor().config())
            }
        };
        Ok(HeatmapInputs {
            pixels: pixels
                .f_to_kind(tch::Kind::Float)?
                .f_to_device(Device::Cpu)?,
            attention: attention.f_to_device(Device::Cpu)?,
            config,
        })
    }
}

/// One tile's heatmap, as [`AutoDecoder::write_tile_outlier_heatmaps`]
/// wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TileHeatmap {
    /// The tile (0: the base tile, or the model's one image).
    pub tile: usize,
    /// Where the PNG went.
    pub path: PathBuf,
    /// The tile's top-k outlier patches, in selection order.
    pub outliers: Vec<i64>,
}

/// `dir/stem.ext` → `dir/stem_tile<i>.ext` (`.png` when `path` has no
/// extension).
fn tile_path(path: &Path, tile: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    path.with_file_name(format!("{stem}_tile{tile}.{ext}"))
}

/// What the heatmaps of one image are drawn from (f32, on the CPU).
struct HeatmapInputs<'a> {
    /// `[tiles, 3, H, W]`.
    pixels: Tensor,
    /// `[tiles, patches]`.
    attention: Tensor,
    config: &'a PreprocessorConfig,
}

impl HeatmapInputs<'_> {
    fn count(&self) -> usize {
        self.pixels.size().first().map_or(0, |&n| n as usize)
    }

    /// Writes tile `tile`'s heatmap with its top-`k` outliers outlined.
    fn write(&self, tile: usize, k: usize, path: &Path) -> Result<Vec<i64>> {
        let t = tile as i64;
        let attention = self.attention.f_narrow(0, t, 1)?;
        let outliers = select_outliers(&attention, k, OutlierOrder::ByScore)?;
        let indices = outliers.to_vec()?.into_iter().next().unwrap_or_default();
        let scores: Vec<f32> = Vec::try_from(attention.f_flatten(0, -1)?)?;
        let grid = PatchGrid::square(scores.len())?;
        // Undo the processor's normalisation and rescale to show the image
        // the model saw.
        let (mean, std) = match &self.config.normalize {
            Some(n) => (n.mean.map(|v| v as f32), n.std.map(|v| v as f32)),
            None => ([0.0; 3], [1.0; 3]),
        };
        let scale = self.config.rescale_factor.unwrap_or(1.0) as f32 * 255.0;
        let std = std.map(|s| s / scale);
        let mean = mean.map(|m| m / scale);
        let picture = image_from_pixel_values(&self.pixels.f_narrow(0, t, 1)?, mean, std)?;
        write_heatmap(
            path,
            &picture,
            &scores,
            grid,
            &indices,
            &HeatmapOptions::default(),
        )?;
        Ok(indices)
    }
}

macro_rules! delegate {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            AutoDecoder::Llava($d) => $e,
            AutoDecoder::LlavaNext($d) => $e,
            AutoDecoder::InstructBlip($d) => $e,
        }
    };
}

impl DamroDecoder for AutoDecoder {
    type Lm = Llama;

    fn language_model(&self) -> &Llama {
        delegate!(self, d => d.language_model())
    }

    fn encode_image(&self, request: &Request, second: SecondImage<'_>) -> Result<VisualTokens> {
        delegate!(self, d => d.encode_image(request, second))
    }

    fn branch_embeds(&self, request: &Request, visual: &VisualTokens) -> Result<Branches<()>> {
        delegate!(self, d => d.branch_embeds(request, visual))
    }

    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        delegate!(self, d => d.embed_tokens(ids))
    }

    fn stop_ids(&self) -> Vec<i64> {
        delegate!(self, d => d.stop_ids())
    }

    fn decode(&self, new_ids: &[i64]) -> Result<String> {
        delegate!(self, d => d.decode(new_ids))
    }

    fn analysis_inputs(
        &self,
        request: &Request,
        branches: &Branches<()>,
    ) -> Result<Option<AnalysisInputs>> {
        delegate!(self, d => d.analysis_inputs(request, branches))
    }

    fn context_length(&self) -> Option<usize> {
        delegate!(self, d => d.context_length())
    }
}

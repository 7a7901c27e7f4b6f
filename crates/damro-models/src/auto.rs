//! [`AutoDecoder`]: picks the adapter from `config.json`'s `model_type`, and
//! the outlier heatmap of a request's image.

use std::path::Path;

use damro_llm::PromptTemplate;
use damro_nn::read_json;
use damro_outlier::{
    HeatmapOptions, OutlierOrder, PatchGrid, image_from_pixel_values, select_outliers,
    write_heatmap,
};
use damro_sampler::DamroPreset;

/// A benchmark whose DAMRO settings the authors tuned per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Benchmark {
    /// POPE (and MME, GPT-4V-aided evaluation).
    Pope,
    /// CHAIR captioning.
    Chair,
}
use tch::Device;

use damro_core::{
    Branches, DamroDecoder, Error, ImageSource, ModelOptions, Request, Result, SecondImage,
    VisualTokens,
};
use damro_llm::Llama;

use crate::loading::check_model_dir;
use crate::{InstructBlipDecoder, LlavaDecoder};

/// A LLaVA-1.5 or InstructBLIP model, chosen from the directory's config.
#[derive(Debug)]
#[non_exhaustive]
pub enum AutoDecoder {
    /// `model_type: "llava"`.
    Llava(Box<LlavaDecoder>),
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
            Some("instructblip") => Ok(Self::InstructBlip(Box::new(InstructBlipDecoder::load(
                dir, options,
            )?))),
            other => Err(Error::invalid(
                "model_type",
                format!(
                    "{other:?} in {} (expected \"llava\" or \"instructblip\")",
                    config.display()
                ),
            )),
        }
    }

    /// The prompt template the authors used with this model.
    pub fn default_template(&self) -> PromptTemplate {
        match self {
            Self::Llava(_) => PromptTemplate::LlavaV1,
            Self::InstructBlip(_) => PromptTemplate::InstructBlip,
        }
    }

    /// The authors' DAMRO settings for this model on POPE (and MME,
    /// GPT-4V-aided): LLaVA-1.5 alpha 2, beta 0.1, k 10; InstructBLIP
    /// alpha 0.5, beta 0.1, k 4.
    ///
    /// # Errors
    /// Only if libtorch fails to compute `ln(beta)`.
    pub fn preset(&self) -> Result<DamroPreset> {
        self.preset_for(Benchmark::Pope)
    }

    /// The authors' DAMRO settings for this model on a benchmark
    /// (InstructBLIP uses alpha 1.5 on CHAIR, 0.5 on POPE).
    ///
    /// # Errors
    /// Only if libtorch fails to compute `ln(beta)`.
    pub fn preset_for(&self, benchmark: Benchmark) -> Result<DamroPreset> {
        Ok(match (self, benchmark) {
            (Self::Llava(_), _) => DamroPreset::llava_1_5()?,
            (Self::InstructBlip(_), Benchmark::Chair) => DamroPreset::instructblip_chair()?,
            (Self::InstructBlip(_), _) => DamroPreset::instructblip_pope()?,
        })
    }

    /// The model family's name.
    pub fn family(&self) -> &'static str {
        match self {
            Self::Llava(_) => "llava",
            Self::InstructBlip(_) => "instructblip",
        }
    }

    /// The options the model was loaded with.
    pub fn options(&self) -> &ModelOptions {
        match self {
            Self::Llava(d) => d.options(),
            Self::InstructBlip(d) => d.options(),
        }
    }

    /// Writes the heatmap of the image's [CLS] attention over the
    /// preprocessed image, with the top-`k` outliers outlined, to `path`
    /// (PNG, written atomically). Returns the outliers in selection order.
    pub fn write_outlier_heatmap(
        &self,
        image: &ImageSource,
        k: usize,
        path: &Path,
    ) -> Result<Vec<i64>> {
        let processor = match self {
            Self::Llava(d) => d.processor(),
            Self::InstructBlip(d) => d.processor(),
        };
        let options = self.options();
        let pixels = image.pixel_values(processor, options.kind, options.device)?;
        let attention = match self {
            Self::Llava(d) => d.cls_attention_of(&pixels)?,
            Self::InstructBlip(d) => d.cls_attention_of(&pixels)?,
        };
        let outliers = select_outliers(&attention, k, OutlierOrder::ByScore)?;
        let indices = outliers.to_vec()?.into_iter().next().unwrap_or_default();
        let scores: Vec<f32> =
            Vec::try_from(attention.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
        let grid = PatchGrid::square(scores.len())?;
        let config = processor.config();
        // Undo the processor's normalisation and rescale to show the image
        // the model saw.
        let (mean, std) = match &config.normalize {
            Some(n) => (n.mean.map(|v| v as f32), n.std.map(|v| v as f32)),
            None => ([0.0; 3], [1.0; 3]),
        };
        let scale = config.rescale_factor.unwrap_or(1.0) as f32 * 255.0;
        let std = std.map(|s| s / scale);
        let mean = mean.map(|m| m / scale);
        let picture = image_from_pixel_values(
            &pixels
                .f_to_kind(tch::Kind::Float)?
                .f_to_device(Device::Cpu)?,
            mean,
            std,
        )?;
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

    fn stop_ids(&self) -> Vec<i64> {
        delegate!(self, d => d.stop_ids())
    }

    fn decode(&self, new_ids: &[i64]) -> Result<String> {
        delegate!(self, d => d.decode(new_ids))
    }

    fn context_length(&self) -> Option<usize> {
        delegate!(self, d => d.context_length())
    }
}

//! The LLaVA-1.5 adapter (`llava-hf/llava-1.5-7b-hf`, `-13b-hf` directories
//! in any key layout).
//!
//! Full branch: the prompt's one `<image>` id replaced by the 576 projected
//! patch features of `hidden_states[-2]`. Outlier branch: replaced by the
//! projected features of the top-k patches by DAMRO's full-width [CLS]
//! score of encoder layer −2, in descending-score order. The ViT runs once
//! per image for both.

use std::path::Path;

use damro_llm::{Llama, LlamaTokenizer};
use damro_nn::KeyMap;
use damro_outlier::{OutlierOrder, TokenIndexing};
use damro_vision::preprocess::ImageProcessor;
use damro_vision::{LlavaConfig, LlavaVision};
use tch::{Device, Tensor};

use crate::common::{
    ModelOptions, load_language_side, open_weights, outlier_tokens, pixel_values, require_cls,
    to_i64, to_u32,
};
use crate::{Branches, DamroDecoder, Error, Request, Result, VisualTokens};

/// LLaVA-1.5 behind [`DamroDecoder`].
#[derive(Debug)]
pub struct LlavaDecoder {
    vision: LlavaVision,
    llm: Llama,
    tokenizer: LlamaTokenizer,
    processor: ImageProcessor,
    options: ModelOptions,
    order: OutlierOrder,
}

impl LlavaDecoder {
    /// Loads a LLaVA-1.5 model directory.
    pub fn load(dir: impl AsRef<Path>, options: ModelOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let root = open_weights(dir, &KeyMap::llava(), &options)?;
        let config = LlavaConfig::from_dir(dir)?;
        let vision = LlavaVision::load_from(&root, &config)?;
        let (llm, tokenizer, processor) =
            load_language_side(dir, &root, &config.text_config, &options)?;
        Ok(Self {
            vision,
            llm,
            tokenizer,
            processor,
            options,
            order: OutlierOrder::ByScore,
        })
    }

    /// Orders the outlier tokens by patch index instead of by score (the
    /// reference keeps the score order).
    pub fn with_outlier_order(mut self, order: OutlierOrder) -> Self {
        self.order = order;
        self
    }

    /// Replaces the tokenizer read from the model directory (e.g. a
    /// directory written by transformers 5 holds its rebuilt
    /// `tokenizer.json`; the hub's gives the ids the authors' code used).
    pub fn with_tokenizer(mut self, tokenizer: LlamaTokenizer) -> Self {
        self.tokenizer = tokenizer;
        self
    }

    /// The image processor (from `preprocessor_config.json`).
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// The LLM tokenizer.
    pub fn tokenizer(&self) -> &LlamaTokenizer {
        &self.tokenizer
    }

    /// The vision side.
    pub fn vision(&self) -> &LlavaVision {
        &self.vision
    }

    /// The language model.
    pub fn language_model(&self) -> &Llama {
        &self.llm
    }

    /// DAMRO's [CLS] scores `[1, 576]` (f32) of preprocessed pixels
    /// `[1, 3, 336, 336]` on the model's device and dtype.
    pub fn cls_attention_of(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, attention) = self.vision.features(pixels)?;
        require_cls(attention)
    }

    fn prompt_ids(&self, request: &Request) -> Result<Vec<i64>> {
        let prompt = request.template.render(&request.question);
        Ok(to_i64(&self.tokenizer.encode(&prompt.llm)?))
    }
}

impl DamroDecoder for LlavaDecoder {
    type Cache = damro_llm::KvCache;

    fn device(&self) -> Device {
        self.options.device
    }

    fn encode_image(&self, request: &Request, outlier_k: Option<usize>) -> Result<VisualTokens> {
        let pixels = pixel_values(
            &self.processor,
            &request.image,
            self.options.kind,
            self.options.device,
        )?;
        let (features, attention) = self.vision.features(&pixels)?;
        let full = self.vision.project(&features)?;
        let (outlier, outlier_indices) = match outlier_k {
            None => (None, Vec::new()),
            Some(k) => {
                let (gathered, indices) = outlier_tokens(
                    &features,
                    attention,
                    k,
                    self.order,
                    TokenIndexing::PatchFeatures,
                )?;
                (Some(self.vision.project(&gathered)?), indices)
            }
        };
        Ok(VisualTokens {
            full,
            outlier,
            outlier_indices,
        })
    }

    fn branch_embeds(&self, request: &Request, visual: &VisualTokens) -> Result<Branches> {
        let ids = self.prompt_ids(request)?;
        let image_id = self.vision.config().image_token_index;
        let positions: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, id)| **id == image_id)
            .map(|(i, _)| i)
            .collect();
        let [at] = positions[..] else {
            return Err(Error::invalid(
                "prompt",
                format!(
                    "LLaVA needs exactly one image placeholder (id {image_id}) in the prompt, found {}; use the llava_v1 template or put `<image>` in a raw prompt",
                    positions.len()
                ),
            ));
        };
        let ids_t = Tensor::f_from_slice(&ids)?
            .f_to_device(self.options.device)?
            .f_unsqueeze(0)?;
        let text = self.llm.embed(&ids_t)?;
        let len = ids.len() as i64;
        let before = text.f_narrow(1, 0, at as i64)?;
        let after = text.f_narrow(1, at as i64 + 1, len - at as i64 - 1)?;
        let splice =
            |image: &Tensor| -> Result<Tensor> { Ok(Tensor::f_cat(&[&before, image, &after], 1)?) };
        Ok(Branches {
            full: splice(&visual.full)?,
            outlier: visual.outlier.as_ref().map(splice).transpose()?,
            prompt_ids: ids,
        })
    }

    crate::common::llama_decoder_methods!();

    fn decode(&self, new_ids: &[i64]) -> Result<String> {
        Ok(self.tokenizer.decode(&to_u32(new_ids)?)?.trim().to_string())
    }
}

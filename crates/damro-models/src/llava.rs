//! The LLaVA-1.5 adapter (`llava-hf/llava-1.5-7b-hf`, `-13b-hf` directories
//! in any key layout).
//!
//! Full branch: the prompt's one `<image>` id replaced by the 576 projected
//! patch features of `hidden_states[-2]`. DAMRO's branch: replaced by the
//! projected features of the top-k patches by DAMRO's full-width `[CLS]`
//! score of encoder layer −2, in descending-score order. The ViT runs once
//! per image for both. VCD's branch runs the same path on noised pixels;
//! the no-image branch drops the placeholder.

use std::path::Path;

use damro_core::{
    AnalysisInputs, Branch, Branches, ContrastTokens, DamroDecoder, ModelOptions, Request, Result,
    SecondImage, VisualTokens,
};
use damro_llm::{Llama, LlamaTokenizer};
use damro_nn::KeyMap;
use damro_outlier::{OutlierOrder, TokenIndexing, outlier_tokens};
use damro_vision::preprocess::ImageProcessor;
use damro_vision::{LlavaConfig, LlavaVision};
use tch::Tensor;

use crate::config_sizes::check_llava;
use crate::loading::{
    LanguageSide, check_image_token, eos_stop_ids, in_config_json, language_config,
    load_language_side, open_weights, placeholder_position, require_cls, splice_at, to_i64, to_u32,
};
use crate::unsupported_view;

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
    ///
    /// # Errors
    /// A missing or invalid config, checkpoint, tokenizer or processor
    /// config (naming the file), or an unusable device.
    pub fn load(dir: impl AsRef<Path>, options: ModelOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let root = open_weights(dir, &KeyMap::llava(), &options)?;
        let config = in_config_json(dir, LlavaConfig::from_dir(dir))?;
        let text = language_config(dir, &root, &config.text_config)?;
        check_llava(dir, &root, &config, &text)?;
        let vision = LlavaVision::load_from(&root, &config)?;
        let LanguageSide {
            llm,
            tokenizer,
            processor,
        } = load_language_side(dir, &root, &config.text_config, &options)?;
        check_image_token(
            dir,
            "image_token_index",
            vision.config().image_token_index,
            &tokenizer,
            &llm,
        )?;
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

    /// The options the model was loaded with.
    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// DAMRO's `[CLS]` scores `[1, 576]` (f32) of preprocessed pixels
    /// `[1, 3, 336, 336]` on the model's device and dtype.
    ///
    /// # Errors
    /// Pixels of the wrong shape.
    pub fn cls_attention_of(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, attention) = self.vision.features(pixels)?;
        require_cls(attention)
    }

    /// The prompt's token ids.
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn prompt_ids(&self, request: &Request) -> Result<Vec<i64>> {
        let prompt = request.template.render(&request.question);
        Ok(to_i64(&self.tokenizer.encode(&prompt.llm)?))
    }

    /// The full image path: projected patch features of pixels.
    fn encode_pixels(&self, pixels: &Tensor) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (features, attention) = self.vision.features(pixels)?;
        Ok((self.vision.project(&features)?, features, attention))
    }
}

impl DamroDecoder for LlavaDecoder {
    type Lm = Llama;

    fn language_model(&self) -> &Llama {
        &self.llm
    }

    fn encode_image(&self, request: &Request, second: SecondImage<'_>) -> Result<VisualTokens> {
        let pixels =
            request
                .image
                .pixel_values(&self.processor, self.options.kind, self.options.device)?;
        let (full, features, attention) = self.encode_pixels(&pixels)?;
        let mut outlier_indices = Vec::new();
        let contrast = match second {
            SecondImage::None => ContrastTokens::None,
            SecondImage::Outliers { k } => {
                let (gathered, indices) = outlier_tokens(
                    &features,
                    &require_cls(attention)?,
                    k,
                    self.order,
                    TokenIndexing::PatchFeatures,
                )?;
                outlier_indices = indices;
                ContrastTokens::Tokens(self.vision.project(&gathered)?)
            }
            SecondImage::Pixels(transform) => {
                ContrastTokens::Tokens(self.encode_pixels(&transform.transform(&pixels)?)?.0)
            }
            SecondImage::NoImage => ContrastTokens::NoImage,
            other => return Err(unsupported_view("LLaVA-1.5", other)),
        };
        Ok(VisualTokens {
            full,
            contrast,
            outlier_indices,
        })
    }

    fn branch_embeds(&self, request: &Request, visual: &VisualTokens) -> Result<Branches<()>> {
        let ids = self.prompt_ids(request)?;
        let at = placeholder_position(&ids, self.vision.config().image_token_index)?;
        let ids_t = Tensor::f_from_slice(&ids)?
            .f_to_device(self.options.device)?
            .f_unsqueeze(0)?;
        let text = self.llm.embed(&ids_t)?;
        let contrast = match &visual.contrast {
            ContrastTokens::Tokens(t) => Some(splice_at(&text, at, Some(t))?),
            ContrastTokens::NoImage => Some(splice_at(&text, at, None)?),
            _ => None,
        };
        Ok(Branches {
            full: Branch::new(splice_at(&text, at, Some(&visual.full))?),
            contrast: contrast.map(Branch::new),
            prompt_ids: ids,
        })
    }

    fn stop_ids(&self) -> Vec<i64> {
        eos_stop_ids(&self.tokenizer)
    }

    fn decode(&self, new_ids: &[i64]) -> Result<String> {
        Ok(self.tokenizer.decode(&to_u32(new_ids)?)?.trim().to_string())
    }

    /// The 576 image tokens sit where the placeholder was, in patch order,
    /// so the ViT's \[CLS\] scores (recomputed here) compare with them.
    fn analysis_inputs(
        &self,
        request: &Request,
        branches: &Branches<()>,
    ) -> Result<Option<AnalysisInputs>> {
        let image_id = self.vision.config().image_token_index;
        let at = placeholder_position(&branches.prompt_ids, image_id)?;
        let full_len = branches.full.embeds.size().get(1).copied().unwrap_or(0) as usize;
        let image_len = full_len + 1 - branches.prompt_ids.len();
        let pixels =
            request
                .image
                .pixel_values(&self.processor, self.options.kind, self.options.device)?;
        let cls = self.cls_attention_of(&pixels)?.f_flatten(0, -1)?;
        Ok(Some(AnalysisInputs {
            image_span: at..at + image_len,
            cls_attention: Some(cls),
        }))
    }

    fn context_length(&self) -> Option<usize> {
        usize::try_from(self.llm.config().max_position_embeddings).ok()
    }
}

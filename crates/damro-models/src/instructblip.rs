//! The InstructBLIP adapter (`Salesforce/instructblip-vicuna-7b`
//! directories).
//!
//! Both DAMRO branches run the Q-Former with the same query tokens and the same
//! instruction text; the full branch over all 257 image tokens, the outlier
//! branch over the k tokens gathered at the top-k patches by DAMRO's
//! head-averaged `[CLS]` attention of encoder layer −2. By default the
//! tokens are gathered as the reference does ([`Indexing::Reference`]: one
//! position before each outlier, because the vision output still holds
//! `[CLS]` at row 0), which is what the published numbers used;
//! [`Indexing::Corrected`] gathers the outlier patches themselves.
//!
//! Output follows the reference too: the new tokens are decoded after a
//! prepended BOS (2 when `text_config.architectures[0]` is exactly
//! `"LLaMAForCausalLM"`, else `text_config.bos_token_id`), special tokens
//! skipped, surrounding whitespace stripped; BOS and EOS for generation
//! come from the tokenizer files, since the checkpoint's `text_config`
//! states them wrongly. VCD's branch runs the full image path on noised
//! pixels; the no-image branch is the instruction alone, without the
//! query tokens.

use std::path::Path;

use damro_core::{
    AnalysisInputs, Branch, Branches, ContrastTokens, DamroDecoder, ModelOptions, Request, Result,
    SecondImage, VisualTokens,
};
use damro_llm::{Llama, LlamaTokenizer};
use damro_nn::KeyMap;
use damro_outlier::{OutlierOrder, TokenIndexing, outlier_tokens};
use damro_vision::preprocess::ImageProcessor;
use damro_vision::{InstructBlipConfig, InstructBlipVision, QFormerInput, QFormerTokenizer};
use tch::Tensor;

use crate::config_sizes::check_instructblip;
use crate::loading::{
    LanguageSide, eos_stop_ids, in_config_json, language_config, load_language_side, open_weights,
    require_cls, to_i64, to_u32,
};
use crate::unsupported_view;

/// Which vision-output rows the outlier patch indices address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Indexing {
    /// `image_embeds[:, idx]`, as the reference code gathers (the token one
    /// before each outlier patch; patch 0 maps to `[CLS]`).
    #[default]
    Reference,
    /// `image_embeds[:, idx + 1]`: the outlier patches themselves.
    Corrected,
}

/// InstructBLIP behind [`DamroDecoder`].
#[derive(Debug)]
pub struct InstructBlipDecoder {
    vision: InstructBlipVision,
    llm: Llama,
    tokenizer: LlamaTokenizer,
    qformer_tokenizer: QFormerTokenizer,
    processor: ImageProcessor,
    options: ModelOptions,
    indexing: Indexing,
    decode_bos: Option<u32>,
}

/// The BOS the reference prepends before decoding.
fn decode_bos(text_config: &serde_json::Value) -> Option<u32> {
    let arch = text_config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str());
    if arch == Some("LLaMAForCausalLM") {
        return Some(2);
    }
    // LlamaConfig's default bos_token_id is 1.
    match text_config.get("bos_token_id") {
        None => Some(1),
        Some(v) => v.as_u64().and_then(|b| u32::try_from(b).ok()),
    }
}

impl InstructBlipDecoder {
    /// Loads an InstructBLIP model directory.
    ///
    /// # Errors
    /// A missing or invalid config, checkpoint, tokenizer (either one) or
    /// processor config (naming the file), or an unusable device.
    pub fn load(dir: impl AsRef<Path>, options: ModelOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let root = open_weights(dir, &KeyMap::identity(), &options)?;
        let config = in_config_json(dir, InstructBlipConfig::from_dir(dir))?;
        let text = language_config(dir, &root, &config.text_config)?;
        check_instructblip(dir, &root, &config, &text)?;
        let vision = InstructBlipVision::load_from(&root, &config)?;
        let LanguageSide {
            llm,
            tokenizer,
            processor,
        } = load_language_side(dir, &root, &config.text_config, &options)?;
        Ok(Self {
            vision,
            llm,
            tokenizer,
            qformer_tokenizer: QFormerTokenizer::from_model_dir(dir)?,
            processor,
            options,
            indexing: Indexing::default(),
            decode_bos: decode_bos(&config.text_config),
        })
    }

    /// Chooses how outlier tokens are gathered (default: as the reference).
    pub fn with_indexing(mut self, indexing: Indexing) -> Self {
        self.indexing = indexing;
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

    /// The vision side (vision tower, Q-Former, projection).
    pub fn vision(&self) -> &InstructBlipVision {
        &self.vision
    }

    /// The options the model was loaded with.
    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// DAMRO's `[CLS]` scores `[1, 256]` (f32) of preprocessed pixels
    /// `[1, 3, 224, 224]` on the model's device and dtype.
    ///
    /// # Errors
    /// Pixels of the wrong shape.
    pub fn cls_attention_of(&self, pixels: &Tensor) -> Result<Tensor> {
        require_cls(self.vision.encode_image(pixels)?.cls_attention)
    }
}

impl InstructBlipDecoder {
    /// The Q-Former's text input of a request.
    fn qformer_text(&self, request: &Request) -> Result<QFormerInput> {
        let prompt = request.template.render(&request.question);
        let text = prompt.qformer.as_deref().unwrap_or(&request.question);
        Ok(self.qformer_tokenizer.encode(text, self.options.device)?)
    }

    fn outlier_prefix(
        &self,
        hidden: &Tensor,
        attention: Option<Tensor>,
        k: usize,
        text: &QFormerInput,
    ) -> Result<(Tensor, Vec<i64>)> {
        let indexing = match self.indexing {
            Indexing::Reference => TokenIndexing::ClsFirstReference,
            Indexing::Corrected => TokenIndexing::ClsFirstCorrected,
        };
        let (gathered, indices) = outlier_tokens(
            hidden,
            &require_cls(attention)?,
            k,
            OutlierOrder::ByScore,
            indexing,
        )?;
        Ok((self.vision.image_prefix(&gathered, text)?, indices))
    }
}

impl DamroDecoder for InstructBlipDecoder {
    type Lm = Llama;

    fn language_model(&self) -> &Llama {
        &self.llm
    }

    fn encode_image(&self, request: &Request, second: SecondImage<'_>) -> Result<VisualTokens> {
        let pixels =
            request
                .image
                .pixel_values(&self.processor, self.options.kind, self.options.device)?;
        let text = self.qformer_text(request)?;
        let image = self.vision.encode_image(&pixels)?;
        let full = self.vision.image_prefix(&image.last_hidden_state, &text)?;
        let mut outlier_indices = Vec::new();
        let contrast = match second {
            SecondImage::None => ContrastTokens::None,
            SecondImage::Outliers { k } => {
                let (prefix, indices) =
                    self.outlier_prefix(&image.last_hidden_state, image.cls_attention, k, &text)?;
                outlier_indices = indices;
                ContrastTokens::Tokens(prefix)
            }
            SecondImage::Pixels(transform) => {
                let noised = self.vision.encode_image(&transform.transform(&pixels)?)?;
                ContrastTokens::Tokens(self.vision.image_prefix(&noised.last_hidden_state, &text)?)
            }
            SecondImage::NoImage => ContrastTokens::NoImage,
            other => return Err(unsupported_view("InstructBLIP", other)),
        };
        Ok(VisualTokens {
            full,
            contrast,
            outlier_indices,
        })
    }

    fn branch_embeds(&self, request: &Request, visual: &VisualTokens) -> Result<Branches<()>> {
        let prompt = request.template.render(&request.question);
        let ids = to_i64(&self.tokenizer.encode(&prompt.llm)?);
        let ids_t = Tensor::f_from_slice(&ids)?
            .f_to_device(self.options.device)?
            .f_unsqueeze(0)?;
        let text = self.llm.embed(&ids_t)?;
        let prefixed =
            |prefix: &Tensor| -> Result<Tensor> { Ok(Tensor::f_cat(&[prefix, &text], 1)?) };
        let contrast = match &visual.contrast {
            ContrastTokens::Tokens(t) => Some(prefixed(t)?),
            ContrastTokens::NoImage => Some(text.shallow_clone()),
            _ => None,
        };
        Ok(Branches {
            full: Branch::new(prefixed(&visual.full)?),
            contrast: contrast.map(Branch::new),
            prompt_ids: ids,
        })
    }

    fn stop_ids(&self) -> Vec<i64> {
        eos_stop_ids(&self.tokenizer)
    }

    fn decode(&self, new_ids: &[i64]) -> Result<String> {
        let mut ids = Vec::with_capacity(new_ids.len() + 1);
        ids.extend(self.decode_bos);
        ids.extend(to_u32(new_ids)?);
        Ok(self.tokenizer.decode(&ids)?.trim().to_string())
    }

    /// The image part is the Q-Former's query outputs at the start of the
    /// input: the decoder attends to queries, not to patches, so `H_i` and
    /// `F` (which compare patch sets) are not defined and no \[CLS\] scores
    /// are given; the query-token attention is still recorded.
    fn analysis_inputs(
        &self,
        _request: &Request,
        branches: &Branches<()>,
    ) -> Result<Option<AnalysisInputs>> {
        let full_len = branches.full.embeds.size().get(1).copied().unwrap_or(0) as usize;
        let queries = full_len.saturating_sub(branches.prompt_ids.len());
        Ok(Some(AnalysisInputs {
            image_span: 0..queries,
            cls_attention: None,
        }))
    }

    fn context_length(&self) -> Option<usize> {
        usize::try_from(self.llm.config().max_position_embeddings).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::decode_bos;
    use serde_json::json;

    #[test]
    fn decode_bos_follows_the_reference_rule() {
        // The exact old spelling selects 2, whatever the config says.
        assert_eq!(
            decode_bos(&json!({"architectures": ["LLaMAForCausalLM"], "bos_token_id": 0})),
            Some(2)
        );
        // Any other spelling uses the config's id ...
        assert_eq!(
            decode_bos(&json!({"architectures": ["LlamaForCausalLM"], "bos_token_id": 0})),
            Some(0)
        );
        // ... or LlamaConfig's default 1 when it is absent.
        assert_eq!(
            decode_bos(&json!({"architectures": ["LlamaForCausalLM"]})),
            Some(1)
        );
    }
}

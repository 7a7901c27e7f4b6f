//! The LLaVA-NeXT adapter (`llava-hf/llava-v1.6-vicuna-7b-hf`-style
//! directories, `model_type: "llava_next"`), as the DAMRO authors run it:
//! transformers 4.43's `LlavaNextForConditionalGeneration` with their DAMRO
//! branch (`tools/damro_reference_next.py` is a readable Python reference).
//!
//! - Image: 4.43's anyres processor ([`LlavaNextImageProcessor`]): a base
//!   tile (the whole image resized to 336x336) and the grid tiles of the
//!   best pinpoint; all tiles go through the CLIP tower as one batch.
//! - Full branch: the prompt's one `<image>` id replaced by the packed
//!   tokens: the base tile's 576, then the un-padded grid with
//!   `image_newline` after every row, in 4.43's grid layout by default
//!   ([`GridLayout::Corrected`] with [`LlavaNextDecoder::with_grid_layout`]).
//! - DAMRO's branch: the base tile's top-k patches by the full-width `[CLS]`
//!   score, in top-k order, projected, then one `image_newline`
//!   (`k + 1` tokens).
//! - VCD's branch: the full path on noised tile pixels; the no-image branch
//!   drops the placeholder.
//! - A generated `<image>` id is embedded as id 0 on the next step, as
//!   4.43's LLaVA-NeXT forward does.

use std::path::Path;

use damro_core::{
    AnalysisInputs, Branch, Branches, ContrastTokens, DamroDecoder, Error, ImageSource,
    LanguageModel, ModelOptions, Request, Result, SecondImage, VisualTokens,
};
use damro_llm::{Llama, LlamaTokenizer};
use damro_nn::KeyMap;
use damro_vision::anyres_pack::GridLayout;
use damro_vision::preprocess::{LlavaNextImageProcessor, LlavaNextPreprocessorConfig};
use damro_vision::{LlavaNextConfig, LlavaNextImageFeatures, LlavaNextVision};
use tch::Tensor;

use crate::config_sizes::check_llava_next;
use crate::loading::{
    check_image_token, eos_stop_ids, in_config_json, language_config, load_language_model,
    open_weights, placeholder_position, require_cls, splice_at, to_i64, to_u32,
};
use crate::unsupported_view;

/// LLaVA-NeXT behind [`DamroDecoder`].
#[derive(Debug)]
pub struct LlavaNextDecoder {
    vision: LlavaNextVision,
    llm: Llama,
    tokenizer: LlamaTokenizer,
    processor: LlavaNextImageProcessor,
    options: ModelOptions,
    layout: GridLayout,
}

impl LlavaNextDecoder {
    /// Loads a LLaVA-NeXT model directory (`config.json` with
    /// `image_grid_pinpoints`, safetensors in any LLaVA key layout plus
    /// `image_newline`, `tokenizer.json`, `preprocessor_config.json`).
    ///
    /// # Errors
    /// A missing or invalid config, checkpoint, tokenizer or processor
    /// config (naming the file), an `<image>` token the tokenizer and config
    /// disagree on, pinpoints that differ between `config.json` and the
    /// processor config, or an unusable device.
    pub fn load(dir: impl AsRef<Path>, options: ModelOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let root = open_weights(dir, &KeyMap::llava(), &options)?;
        let config = in_config_json(dir, LlavaNextConfig::from_dir(dir))?;
        let text = language_config(dir, &root, &config.llava.text_config)?;
        check_llava_next(dir, &root, &config, &text)?;
        let vision = LlavaNextVision::load_from(&root, &config)?;
        let llm = load_language_model(&root, &config.llava.text_config)?;
        root.finish()?;
        let tokenizer = LlamaTokenizer::from_dir(dir, options.tokenizer)?;
        let processor_config = LlavaNextPreprocessorConfig::from_model_dir(dir)?;
        if processor_config.pinpoints != config.pinpoints {
            return Err(Error::invalid(
                "model directory",
                format!(
                    "{} and config.json disagree on the tiles: {:?} against {:?} ((height, width) pinpoints, tile side)",
                    dir.join("preprocessor_config.json").display(),
                    processor_config.pinpoints,
                    config.pinpoints
                ),
            ));
        }
        let processor =
            LlavaNextImageProcessor::with_options(processor_config, options.preprocessing);
        check_image_token(
            dir,
            "image_token_index",
            config.llava.image_token_index,
            &tokenizer,
            &llm,
        )?;
        Ok(Self {
            vision,
            llm,
            tokenizer,
            processor,
            options,
            layout: GridLayout::default(),
        })
    }

    /// Lays the grid tiles out as transformers 4.44 and later do
    /// ([`GridLayout::Corrected`]) instead of 4.43's swapped rows and
    /// columns (the default, what the authors ran). Square grids agree.
    pub fn with_grid_layout(mut self, layout: GridLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Replaces the tokenizer read from the model directory.
    pub fn with_tokenizer(mut self, tokenizer: LlamaTokenizer) -> Self {
        self.tokenizer = tokenizer;
        self
    }

    /// The grid layout in use.
    pub fn grid_layout(&self) -> GridLayout {
        self.layout
    }

    /// The anyres image processor (from `preprocessor_config.json`).
    pub fn processor(&self) -> &LlavaNextImageProcessor {
        &self.processor
    }

    /// The LLM tokenizer.
    pub fn tokenizer(&self) -> &LlamaTokenizer {
        &self.tokenizer
    }

    /// The vision side (tower, projector, `image_newline`).
    pub fn vision(&self) -> &LlavaNextVision {
        &self.vision
    }

    /// The options the model was loaded with.
    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// The `<image>` token id (`image_token_index`).
    pub fn image_token_id(&self) -> i64 {
        self.vision.config().llava.image_token_index
    }

    /// An image's tiles on the model's device and dtype, with its original
    /// `(height, width)`.
    ///
    /// # Shapes
    /// → `[tiles, 3, 336, 336]`, the base tile first
    ///
    /// # Errors
    /// Preprocessing errors, tiles of the wrong layout, and
    /// [`ImageSource::Pixels`] (no original size: use
    /// [`ImageSource::Tiles`]).
    pub fn tile_pixels(&self, image: &ImageSource) -> Result<(Tensor, (u32, u32))> {
        image.tile_pixel_values(&self.processor, self.options.kind, self.options.device)
    }

    /// DAMRO's `[CLS]` scores of every tile (f32).
    ///
    /// # Shapes
    /// pixels `[tiles, 3, 336, 336]` → `[tiles, 576]`
    ///
    /// # Errors
    /// Pixels of the wrong shape.
    pub fn cls_attention_of(&self, pixels: &Tensor) -> Result<Tensor> {
        require_cls(self.vision.encode_tiles(pixels)?.cls_attention)
    }

    /// Both branches' image tokens of one image (`k`: DAMRO's outlier
    /// count, `None` for the full branch alone).
    ///
    /// # Shapes
    /// pixels `[tiles, 3, 336, 336]` → see [`LlavaNextImageFeatures`]
    ///
    /// # Errors
    /// A tile count that does not fit `image_size`'s grid, `k` outside
    /// `1..=576`.
    pub fn encode_tiles(
        &self,
        pixels: &Tensor,
        image_size: (u32, u32),
        k: Option<usize>,
    ) -> Result<LlavaNextImageFeatures> {
        let k = k
            .map(|k| {
                i64::try_from(k)
                    .map_err(|_| Error::invalid("outlier k", format!("{k} is too large")))
            })
            .transpose()?;
        Ok(self.vision.encode(pixels, image_size, self.layout, k)?)
    }

    /// The prompt's token ids.
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn prompt_ids(&self, request: &Request) -> Result<Vec<i64>> {
        let prompt = request.template.render(&request.question);
        Ok(to_i64(&self.tokenizer.encode(&prompt.llm)?))
    }
}

impl DamroDecoder for LlavaNextDecoder {
    type Lm = Llama;

    fn language_model(&self) -> &Llama {
        &self.llm
    }

    fn encode_image(&self, request: &Request, second: SecondImage<'_>) -> Result<VisualTokens> {
        let (pixels, size) = self.tile_pixels(&request.image)?;
        let mut outlier_indices = Vec::new();
        let (full, contrast) = match second {
            SecondImage::None => (
                self.encode_tiles(&pixels, size, None)?.full,
                ContrastTokens::None,
            ),
            SecondImage::Outliers { k } => {
                let encoded = self.encode_tiles(&pixels, size, Some(k))?;
                let outliers = encoded.outliers.ok_or_else(|| {
                    Error::invalid("LLaVA-NeXT contrast tokens", "the vision side built none")
                })?;
                outlier_indices = outliers.outlier_indices;
                (encoded.full, ContrastTokens::Tokens(outliers.tokens))
            }
            SecondImage::Pixels(transform) => {
                let noised = transform.transform(&pixels)?;
                (
                    self.encode_tiles(&pixels, size, None)?.full,
                    ContrastTokens::Tokens(self.encode_tiles(&noised, size, None)?.full),
                )
            }
            SecondImage::NoImage => (
                self.encode_tiles(&pixels, size, None)?.full,
                ContrastTokens::NoImage,
            ),
            other => return Err(unsupported_view("LLaVA-NeXT", other)),
        };
        Ok(VisualTokens {
            full,
            contrast,
            outlier_indices,
        })
    }

    fn branch_embeds(&self, request: &Request, visual: &VisualTokens) -> Result<Branches<()>> {
        let ids = self.prompt_ids(request)?;
        let at = placeholder_position(&ids, self.image_token_id())?;
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

    /// A generated `<image>` id is embedded as id 0 (4.43's LLaVA-NeXT sets
    /// `input_ids == image_token_index` to 0 before embedding); other ids
    /// as themselves.
    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let image = ids.f_eq(self.image_token_id())?;
        let ids = ids.f_masked_fill(&image, 0)?;
        LanguageModel::embed_tokens(&self.llm, &ids)
    }

    fn stop_ids(&self) -> Vec<i64> {
        eos_stop_ids(&self.tokenizer)
    }

    fn decode(&self, new_ids: &[i64]) -> Result<String> {
        Ok(self.tokenizer.decode(&to_u32(new_ids)?)?.trim().to_string())
    }

    /// The base tile's 576 tokens open the packed image part, in patch
    /// order, so the analysis compares them with the base tile's \[CLS\]
    /// scores (recomputed here); the grid tiles and newlines are not part of
    /// the span.
    fn analysis_inputs(
        &self,
        request: &Request,
        branches: &Branches<()>,
    ) -> Result<Option<AnalysisInputs>> {
        let at = placeholder_position(&branches.prompt_ids, self.image_token_id())?;
        let (pixels, _) = self.tile_pixels(&request.image)?;
        let cls = self
            .cls_attention_of(&pixels.f_narrow(0, 0, 1)?)?
            .f_flatten(0, -1)?;
        let patches = cls.size().first().copied().unwrap_or(0) as usize;
        Ok(Some(AnalysisInputs {
            image_span: at..at + patches,
            cls_attention: Some(cls),
        }))
    }

    fn context_length(&self) -> Option<usize> {
        usize::try_from(self.llm.config().max_position_embeddings).ok()
    }
}

//! The pieces every built-in adapter is made of, public so that a new
//! adapter (in this crate or outside it) is assembled from the same parts:
//! opening a model directory, the LLaMA of a multimodal checkpoint, its
//! tokenizer and image processor, splicing visual tokens into a prompt.

use std::path::Path;

use damro_core::{Error, ModelOptions, Result};
use damro_llm::{Llama, LlamaConfig, LlamaConfigJson, LlamaTokenizer};
use damro_nn::{Checkpoint, KeyMap, Weights};
use damro_vision::preprocess::ImageProcessor;
use tch::Tensor;

/// Checks that `dir` is a model directory (it has a `config.json`).
///
/// # Errors
/// [`Error::Invalid`] naming the directory.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if dir.join("config.json").is_file() {
        Ok(())
    } else {
        Err(Error::invalid(
            "model directory",
            format!(
                "{} has no config.json (expected a HuggingFace model directory)",
                dir.display()
            ),
        ))
    }
}

/// The root of a model directory's checkpoint (memory-mapped, names
/// normalised by `key_map`), after checking the directory and the device.
///
/// # Errors
/// A directory without `config.json` or weights, an unusable device,
/// unreadable safetensors.
pub fn open_weights(dir: &Path, key_map: &KeyMap, options: &ModelOptions) -> Result<Weights> {
    check_model_dir(dir)?;
    let load = options.load_options()?;
    Ok(Weights::new(Checkpoint::open(dir, key_map)?, load)?)
}

/// The result of reading `dir/config.json` (e.g.
/// `LlavaConfig::from_dir(dir)`), with an invalid field reported with the
/// file ([`Error::in_file`]).
///
/// # Errors
/// The error of `read`, naming `dir/config.json`.
pub fn in_config_json<T, E: Into<Error>>(dir: &Path, read: std::result::Result<T, E>) -> Result<T> {
    read.map_err(|e| Error::in_file(dir.join("config.json"), e))
}

/// The validated LLaMA config of a multimodal checkpoint's `text_config`,
/// with the vocabulary size taken from the embedding matrix (some configs
/// state it wrongly). Nothing is loaded.
///
/// # Errors
/// An invalid `text_config` field, named as `text_config.<field>` in
/// `dir/config.json`.
pub fn language_config(
    dir: &Path,
    root: &Weights,
    text_config: &serde_json::Value,
) -> Result<LlamaConfig> {
    let in_section = |e: damro_llm::Error| {
        let e = match e {
            damro_llm::Error::Config { field, reason } if field != "text_config" => {
                damro_llm::Error::Config {
                    field: format!("text_config.{field}"),
                    reason,
                }
            }
            other => other,
        };
        Error::in_file(dir.join("config.json"), e)
    };
    let mut json = LlamaConfigJson::from_value(text_config.clone()).map_err(in_section)?;
    if let Some(shape) = root.shape_of("language_model.model.embed_tokens.weight")
        && let [rows, _] = shape[..]
    {
        json.vocab_size = Some(rows);
    }
    json.into_config().map_err(in_section)
}

/// The LLaMA of a multimodal checkpoint ([`language_config`]), loaded from
/// `language_model.*`.
///
/// # Errors
/// An invalid `text_config`, missing or mis-shaped weights.
pub fn load_language_model(root: &Weights, text_config: &serde_json::Value) -> Result<Llama> {
    let config = language_config(root.dir(), root, text_config)?;
    Ok(Llama::load(&root.pp("language_model"), &config)?)
}

/// What an adapter loads besides its vision side.
#[derive(Debug)]
pub struct LanguageSide {
    /// The language model.
    pub llm: Llama,
    /// Its tokenizer (`tokenizer.json`).
    pub tokenizer: LlamaTokenizer,
    /// The image processor (`preprocessor_config.json`).
    pub processor: ImageProcessor,
}

/// Loads the language model (after which the checkpoint must be fully
/// used: unexpected tensors are reported), the LLM tokenizer and the image
/// processor of a model directory.
///
/// # Errors
/// As [`load_language_model`], plus leftover tensors, a missing or invalid
/// tokenizer or processor config (each naming its file).
pub fn load_language_side(
    dir: &Path,
    root: &Weights,
    text_config: &serde_json::Value,
    options: &ModelOptions,
) -> Result<LanguageSide> {
    let llm = load_language_model(root, text_config)?;
    root.finish()?;
    Ok(LanguageSide {
        llm,
        tokenizer: LlamaTokenizer::from_dir(dir, options.tokenizer)?,
        processor: ImageProcessor::from_model_dir(dir)?.with_options(options.preprocessing),
    })
}

/// Checks that a model's image placeholder is one token of its tokenizer
/// and a row of its embedding matrix, so a prompt problem is never blamed
/// for a config/tokenizer mismatch.
///
/// # Errors
/// [`Error::Invalid`] naming `config.json`'s field or `tokenizer.json`.
pub fn check_image_token(
    dir: &Path,
    field: &str,
    image_id: i64,
    tokenizer: &LlamaTokenizer,
    llm: &Llama,
) -> Result<()> {
    let vocab = llm.config().vocab_size;
    if !(0..vocab).contains(&image_id) {
        return Err(Error::invalid(
            "model config",
            format!(
                "`{field}` = {image_id} in {} is outside the language model's vocabulary of {vocab} rows",
                dir.join("config.json").display()
            ),
        ));
    }
    let token = damro_llm::IMAGE_TOKEN;
    match tokenizer.token_to_id(token) {
        Some(id) if i64::from(id) == image_id => Ok(()),
        Some(id) => Err(Error::invalid(
            "tokenizer",
            format!(
                "{} maps `{token}` to id {id}, but `{field}` in config.json says {image_id}",
                dir.join("tokenizer.json").display()
            ),
        )),
        None => Err(Error::invalid(
            "tokenizer",
            format!(
                "{} has no `{token}` token (expected id {image_id}, the config's `{field}`)",
                dir.join("tokenizer.json").display()
            ),
        )),
    }
}

/// Ids as `i64`.
pub fn to_i64(ids: &[u32]) -> Vec<i64> {
    ids.iter().map(|&i| i64::from(i)).collect()
}

/// Ids as `u32`, rejecting ids outside the `u32` range.
///
/// # Errors
/// [`Error::Invalid`] for a negative or too large id.
pub fn to_u32(ids: &[i64]) -> Result<Vec<u32>> {
    ids.iter()
        .map(|&i| {
            u32::try_from(i)
                .map_err(|_| Error::invalid("token id", format!("{i} is negative or too large")))
        })
        .collect()
}

/// The `[CLS]` scores a vision tower returned, or the error saying it was
/// configured without them.
///
/// # Errors
/// [`Error::Invalid`] when `attention` is `None`.
pub fn require_cls(attention: Option<Tensor>) -> Result<Tensor> {
    attention.ok_or_else(|| Error::invalid("vision config", "no [CLS] attention layer"))
}

/// The EOS id of a tokenizer, as the stop ids of a generation.
pub fn eos_stop_ids(tokenizer: &LlamaTokenizer) -> Vec<i64> {
    tokenizer
        .special_tokens()
        .eos
        .as_ref()
        .map(|t| vec![i64::from(t.id)])
        .unwrap_or_default()
}

/// The position of the one image placeholder `image_id` in `ids`.
///
/// # Errors
/// [`Error::Invalid`] when there is none or more than one.
pub fn placeholder_position(ids: &[i64], image_id: i64) -> Result<usize> {
    let positions: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| **id == image_id)
        .map(|(i, _)| i)
        .collect();
    match positions[..] {
        [at] => Ok(at),
        _ => Err(Error::invalid(
            "prompt",
            format!(
                "the model needs exactly one image placeholder (id {image_id}) in the prompt, found {}; use the llava_v1 template or put `<image>` in a raw prompt",
                positions.len()
            ),
        )),
    }
}

/// Replaces the token at `at` of the prompt's embeddings by `image`'s
/// rows; `None` removes it (the prompt without its image).
///
/// # Shapes
/// `text` `[1, len, hidden]`, `image` `[1, n, hidden]` → `[1, len - 1 + n, hidden]`
///
/// # Errors
/// libtorch errors for mismatched hidden sizes or an `at` out of range.
pub fn splice_at(text: &Tensor, at: usize, image: Option<&Tensor>) -> Result<Tensor> {
    let len = text.size().get(1).copied().unwrap_or(0);
    let at = at as i64;
    if at >= len {
        return Err(Error::invalid(
            "image placeholder",
            format!("position {at} outside a {len}-token prompt"),
        ));
    }
    let before = text.f_narrow(1, 0, at)?;
    let after = text.f_narrow(1, at + 1, len - at - 1)?;
    let parts: Vec<&Tensor> = match image {
        Some(image) => vec![&before, image, &after],
        None => vec![&before, &after],
    };
    Ok(Tensor::f_cat(&parts, 1)?)
}

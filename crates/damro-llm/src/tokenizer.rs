//! The LLaMA tokenizer of a checkpoint, in one of two explicit behaviours.
//!
//! Both start from the checkpoint's `tokenizer.json` (vocabulary, merges,
//! added tokens such as `<image>`) and `tokenizer_config.json` (BOS, EOS,
//! UNK and PAD, `add_bos_token`, `add_eos_token`, `legacy`,
//! `add_prefix_space`, `clean_up_tokenization_spaces`), with
//! `special_tokens_map.json` as a fallback for the special tokens.
//!
//! - [`TokenizerBehavior::AsWritten`]: `tokenizer.json` as written, which is
//!   what transformers 4.x (`LlamaTokenizerFast`), the original LLaVA code
//!   and vLLM use. LLaMA's file normalises every piece of text between
//!   added tokens by prepending `▁`, so a `▁` token (id 29871) follows
//!   `<image>` in `"<image>\nWhat ..."`. As in 4.x, an explicit
//!   `add_bos_token` / `add_eos_token` rebuilds the post-processor (BOS
//!   defaults to on), and `clean_up_tokenization_spaces` is honoured.
//! - [`TokenizerBehavior::Transformers5`]: what transformers 5's
//!   `LlamaTokenizer` (`models/llama/tokenization_llama.py`) rebuilds from
//!   the same file: no normaliser; a `Metaspace` pre-tokenizer (replacement
//!   `▁`, no splitting) that prepends `▁` only to the text at the very
//!   start of the input (`prepend_scheme` "first"; "always" when the config
//!   says `legacy: true`; "never" with `add_prefix_space: false`); a decoder
//!   that replaces `▁` by spaces, resolves byte fallback, fuses, and strips
//!   one leading space when a prefix space is added. The post-processor is
//!   rebuilt only when `add_bos_token` or `add_eos_token` is explicit (then
//!   an absent one counts as off), as `TokenizersBackend` does; spaces are
//!   never cleaned up after decoding (transformers 5 skips that for BPE).
//!   Added tokens keep their `tokenizer.json` entries (transformers 5 reads
//!   them from `tokenizer_config.json`'s `added_tokens_decoder`, which
//!   lists the same tokens for the checkpoints this crate targets).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// Which library's view of `tokenizer.json` to reproduce. See the module
/// docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerBehavior {
    /// The file as written (transformers 4.x, original LLaVA, vLLM).
    AsWritten,
    /// transformers 5's rebuilt LLaMA pre-tokenizer.
    Transformers5,
}

impl FromStr for TokenizerBehavior {
    type Err = Error;

    /// `as_written` (or `transformers4`) and `transformers5`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "as_written" | "transformers4" => Ok(Self::AsWritten),
            "transformers5" => Ok(Self::Transformers5),
            other => Err(Error::config(
                "tokenizer behavior",
                format!("`{other}` (expected as_written or transformers5)"),
            )),
        }
    }
}

/// A special token and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    /// The token as written (`<s>`, `</s>`, `<unk>`).
    pub text: String,
    /// Its id in the tokenizer's vocabulary.
    pub id: u32,
}

/// The named special tokens, where the tokenizer files define them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence (`bos_token` of `tokenizer_config.json`, else of
    /// `special_tokens_map.json`).
    pub bos: Option<SpecialToken>,
    /// End of sequence (`eos_token`).
    pub eos: Option<SpecialToken>,
    /// Unknown token (`unk_token`).
    pub unk: Option<SpecialToken>,
    /// Padding token (`pad_token`).
    pub pad: Option<SpecialToken>,
}

/// A LLaMA tokenizer over the `tokenizers` crate.
#[derive(Debug, Clone)]
pub struct LlamaTokenizer {
    inner: Tokenizer,
    behavior: TokenizerBehavior,
    special: SpecialTokens,
    clean_up_spaces: bool,
    path: PathBuf,
}

/// The reading of `tokenizer_config.json` this wrapper uses.
#[derive(Debug, Default)]
struct TokenizerConfig {
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
    legacy: Option<bool>,
    add_prefix_space: Option<bool>,
    clean_up_tokenization_spaces: Option<bool>,
    bos: Option<String>,
    eos: Option<String>,
    unk: Option<String>,
    pad: Option<String>,
}

/// A special-token entry: a string, or an `AddedToken` object with `content`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn read_value(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Tokenizer {
        path: path.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })
}

impl TokenizerConfig {
    fn read(config: Option<&Path>, special_map: Option<&Path>) -> Result<Self> {
        let config = match config {
            Some(p) => read_value(p)?,
            None => Value::Null,
        };
        let map = match special_map {
            Some(p) => read_value(p)?,
            None => Value::Null,
        };
        let flag = |k: &str| config.get(k).and_then(Value::as_bool);
        let special = |k: &str| token_text(config.get(k)).or_else(|| token_text(map.get(k)));
        Ok(Self {
            add_bos_token: flag("add_bos_token"),
            add_eos_token: flag("add_eos_token"),
            legacy: flag("legacy"),
            add_prefix_space: flag("add_prefix_space"),
            clean_up_tokenization_spaces: flag("clean_up_tokenization_spaces"),
            bos: special("bos_token"),
            eos: special("eos_token"),
            unk: special("unk_token"),
            pad: special("pad_token"),
        })
    }
}

/// A `TemplateProcessing` post-processor adding BOS and/or EOS.
fn template(bos: Option<&SpecialToken>, eos: Option<&SpecialToken>) -> Value {
    let special = |t: &SpecialToken, type_id: u32| json!({"SpecialToken": {"id": t.text, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let part = |id: &str, type_id: u32| {
        let mut items: Vec<Value> = bos.map(|t| special(t, type_id)).into_iter().collect();
        items.push(seq(id, type_id));
        items.extend(eos.map(|t| special(t, type_id)));
        items
    };
    let single = part("A", 0);
    let pair = [part("A", 0), part("B", 1)].concat();
    let mut tokens = serde_json::Map::new();
    for t in bos.into_iter().chain(eos) {
        tokens.insert(
            t.text.clone(),
            json!({"id": t.text, "ids": [t.id], "tokens": [t.text]}),
        );
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": tokens})
}

impl LlamaTokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` and (if present)
    /// `special_tokens_map.json` from a model directory.
    pub fn from_dir(dir: impl AsRef<Path>, behavior: TokenizerBehavior) -> Result<Self> {
        let dir = dir.as_ref();
        let opt = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Self::from_files(
            &dir.join("tokenizer.json"),
            opt("tokenizer_config.json").as_deref(),
            opt("special_tokens_map.json").as_deref(),
            behavior,
        )
    }

    /// Loads from explicit files; the config files are optional.
    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        special_tokens_map: Option<&Path>,
        behavior: TokenizerBehavior,
    ) -> Result<Self> {
        let cfg = TokenizerConfig::read(tokenizer_config, special_tokens_map)?;
        let mut json = read_value(tokenizer_json)?;
        let err = |reason: String| Error::Tokenizer {
            path: tokenizer_json.to_path_buf(),
            reason,
        };
        // Resolve the special tokens against the file as written.
        let plain: Tokenizer = serde_json::from_value(json.clone())
            .map_err(|e| err(format!("cannot build the tokenizer: {e}")))?;
        let resolve =
            |text: Option<String>, default: Option<&str>| -> Result<Option<SpecialToken>> {
                let explicit = text.is_some();
                let Some(text) = text.or(default.map(str::to_string)) else {
                    return Ok(None);
                };
                match plain.token_to_id(&text) {
                    Some(id) => Ok(Some(SpecialToken { text, id })),
                    None if explicit => Err(err(format!(
                        "special token {text} is not in the vocabulary"
                    ))),
                    None => Ok(None),
                }
            };
        let special = SpecialTokens {
            bos: resolve(cfg.bos.clone(), Some("<s>"))?,
            eos: resolve(cfg.eos.clone(), Some("</s>"))?,
            unk: resolve(cfg.unk.clone(), Some("<unk>"))?,
            pad: resolve(cfg.pad.clone(), None)?,
        };
        let explicit_flags = cfg.add_bos_token.is_some() || cfg.add_eos_token.is_some();
        let (default_bos, clean_up) = match behavior {
            TokenizerBehavior::AsWritten => {
                (true, cfg.clean_up_tokenization_spaces.unwrap_or(false))
            }
            TokenizerBehavior::Transformers5 => (false, false),
        };
        if explicit_flags {
            let bos = cfg.add_bos_token.unwrap_or(default_bos);
            let eos = cfg.add_eos_token.unwrap_or(false);
            if (bos && special.bos.is_none()) || (eos && special.eos.is_none()) {
                return Err(err(
                    "add_bos_token/add_eos_token is set but the token is unknown".into(),
                ));
            }
            json["post_processor"] = template(
                special.bos.as_ref().filter(|_| bos),
                special.eos.as_ref().filter(|_| eos),
            );
        }
        if behavior == TokenizerBehavior::Transformers5 {
            let prefix_space = cfg.add_prefix_space.unwrap_or(true);
            let scheme = match (prefix_space, cfg.legacy.unwrap_or(false)) {
                (false, _) => "never",
                (true, true) => "always",
                (true, false) => "first",
            };
            json["normalizer"] = Value::Null;
            json["pre_tokenizer"] = json!({
                "type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false
            });
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix_space {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            json["decoder"] = json!({"type": "Sequence", "decoders": decoders});
        }
        let inner: Tokenizer = serde_json::from_value(json)
            .map_err(|e| err(format!("cannot rebuild the tokenizer: {e}")))?;
        Ok(Self {
            inner,
            behavior,
            special,
            clean_up_spaces: clean_up,
            path: tokenizer_json.to_path_buf(),
        })
    }

    /// The behaviour this tokenizer reproduces.
    pub fn behavior(&self) -> TokenizerBehavior {
        self.behavior
    }

    /// BOS, EOS, UNK and PAD.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The id of a token (vocabulary or added), e.g. `<image>`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn encode_impl(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                reason: format!("cannot encode {text:?}: {e}"),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of `text`, with BOS/EOS as the tokenizer files ask for
    /// (`tokenizer(text).input_ids` in transformers).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_impl(text, true)
    }

    /// Token ids of `text` without BOS/EOS (`add_special_tokens=False`).
    pub fn encode_without_special(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_impl(text, false)
    }

    /// Text of `ids`, special tokens skipped (`decode(ids,
    /// skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_impl(ids, true)
    }

    /// Text of `ids`, special tokens kept.
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        self.decode_impl(ids, false)
    }

    fn decode_impl(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let text = self
            .inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                reason: format!("cannot decode: {e}"),
            })?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }
}

/// transformers' `clean_up_tokenization`: removes the space before
/// punctuation and English contractions.
fn clean_up_tokenization(text: &str) -> String {
    const RULES: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    RULES
        .iter()
        .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviors_parse() {
        assert_eq!(
            "as_written".parse::<TokenizerBehavior>().unwrap(),
            TokenizerBehavior::AsWritten
        );
        assert_eq!(
            "transformers5".parse::<TokenizerBehavior>().unwrap(),
            TokenizerBehavior::Transformers5
        );
        assert!("hf".parse::<TokenizerBehavior>().is_err());
    }

    #[test]
    fn special_token_entries_in_both_spellings() {
        let v = json!({"a": "<s>", "b": {"content": "</s>", "lstrip": false}, "c": null});
        assert_eq!(token_text(v.get("a")).as_deref(), Some("<s>"));
        assert_eq!(token_text(v.get("b")).as_deref(), Some("</s>"));
        assert_eq!(token_text(v.get("c")), None);
        assert_eq!(token_text(v.get("d")), None);
    }

    #[test]
    fn clean_up_matches_transformers() {
        assert_eq!(
            clean_up_tokenization("Yes , it is n't . Is it ? I 'm sure !"),
            "Yes, it isn't. Is it? I'm sure!"
        );
    }

    #[test]
    fn template_adds_bos_and_eos() {
        let bos = SpecialToken {
            text: "<s>".into(),
            id: 1,
        };
        let eos = SpecialToken {
            text: "</s>".into(),
            id: 2,
        };
        let t = template(Some(&bos), Some(&eos));
        assert_eq!(t["single"].as_array().unwrap().len(), 3);
        assert_eq!(t["pair"].as_array().unwrap().len(), 6);
        assert_eq!(t["special_tokens"]["</s>"]["ids"], json!([2]));
        let t = template(None, None);
        assert_eq!(
            t["single"],
            json!([{"Sequence": {"id": "A", "type_id": 0}}])
        );
    }

    #[test]
    fn missing_file_is_a_typed_error() {
        let err = LlamaTokenizer::from_dir("/nonexistent", TokenizerBehavior::AsWritten);
        assert!(matches!(err, Err(Error::Tokenizer { .. })));
    }
}

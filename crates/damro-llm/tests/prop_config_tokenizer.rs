//! Property tests of the LLaMA config parser and the tokenizer wrapper on
//! arbitrary input: no JSON value or byte string makes `LlamaConfigJson`
//! or its validation panic, a config it accepts has consistent sizes, and
//! no text or id list makes encoding or decoding panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::OnceLock;

use damro_llm::{LlamaConfigJson, LlamaTokenizer, TokenizerBehavior};
use proptest::prelude::*;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A number as configs write them, often at the edges of the range.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-2i64..70).prop_map(Value::from),
        Just(json!(i64::MAX)),
        Just(json!(i64::MIN)),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        Just(Value::Null),
    ]
}

/// A `text_config` whose known fields hold arbitrary numbers.
fn llama_object() -> impl Strategy<Value = Value> {
    let ints = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
    ];
    let floats = ["rms_norm_eps", "rope_theta"];
    let rope_kind = prop::sample::select(vec!["default", "linear", "dynamic", "llama3", "yarn"]);
    (
        prop::collection::vec(number(), ints.len()),
        prop::collection::vec(number(), floats.len()),
        rope_kind,
        prop::collection::vec(number(), 4),
    )
        .prop_map(move |(int_values, float_values, kind, rope)| {
            let mut object = serde_json::Map::new();
            for (name, value) in ints.iter().zip(int_values) {
                object.insert(name.to_string(), value);
            }
            for (name, value) in floats.iter().zip(float_values) {
                object.insert(name.to_string(), value);
            }
            object.insert(
                "rope_scaling".into(),
                json!({"rope_type": kind, "factor": rope[0], "low_freq_factor": rope[1],
                       "high_freq_factor": rope[2], "original_max_position_embeddings": rope[3]}),
            );
            Value::Object(object)
        })
}

/// Parses and validates; an accepted config must be self-consistent.
fn check_llama(value: Value) -> Result<(), TestCaseError> {
    let Ok(json) = LlamaConfigJson::from_value(value) else {
        return Ok(());
    };
    if let Ok(c) = json.into_config() {
        prop_assert!(c.vocab_size > 0 && c.hidden_size > 0 && c.num_hidden_layers > 0);
        prop_assert!(c.num_attention_heads > 0 && c.num_key_value_heads > 0);
        prop_assert_eq!(c.hidden_size % c.num_attention_heads, 0);
        prop_assert_eq!(c.num_attention_heads % c.num_key_value_heads, 0);
        prop_assert!(c.head_dim > 0 && c.head_dim % 2 == 0);
        prop_assert!(c.rms_norm_eps.is_finite() && c.rms_norm_eps > 0.0);
        prop_assert!(c.rope.theta.is_finite() && c.rope.theta > 0.0);
    }
    Ok(())
}

/// The tiny LLaVA fixture's tokenizer (hub `tokenizer.json`).
fn tokenizer() -> &'static LlamaTokenizer {
    static TOKENIZER: OnceLock<LlamaTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llava/models/hub");
        LlamaTokenizer::from_dir(dir, TokenizerBehavior::AsWritten).unwrap()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_json_never_panics_the_config_parser(value in json_value()) {
        check_llama(value)?;
    }

    #[test]
    fn arbitrary_numbers_never_panic_the_validation(value in llama_object()) {
        check_llama(value)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_config_reader(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(json) = LlamaConfigJson::from_file(&path) {
            let _ = json.into_config();
        }
    }

    #[test]
    fn arbitrary_text_encodes_and_decodes(text in "\\PC{0,40}|(<image>|<s>|</s>|<unk>|[ \\n\\t])+") {
        let t = tokenizer();
        let ids = t.encode(&text).unwrap();
        let vocab = t.vocab_size() as u32;
        prop_assert!(ids.iter().all(|&id| id < vocab), "{ids:?}");
        t.decode(&ids).unwrap();
        t.decode_with_special(&ids).unwrap();
        t.encode_without_special(&text).unwrap();
    }

    #[test]
    fn arbitrary_ids_never_panic_the_decoder(ids in prop::collection::vec(prop_oneof![0u32..600, any::<u32>()], 0..24)) {
        let t = tokenizer();
        let _ = t.decode(&ids);
        let _ = t.decode_with_special(&ids);
    }
}

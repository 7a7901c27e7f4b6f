//! Reads every fixture file under `tests/fixtures/` (model directories,
//! reference tensors and reference JSON) and checks names, shapes and
//! dtypes, so a missing or broken fixture fails here, before any parity
//! test tries to use it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use damro_nn::{Checkpoint, KeyMap, read_json};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("a non-negative integer") as usize
}

/// name -> (dtype, shape) of a safetensors file.
fn header(path: &Path) -> BTreeMap<String, (Dtype, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    meta.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype, v.shape.clone())))
        .collect()
}

fn expect_tensor(tensors: &BTreeMap<String, (Dtype, Vec<usize>)>, name: &str, shape: &[usize]) {
    let (dtype, found) = tensors
        .get(name)
        .unwrap_or_else(|| panic!("reference tensor {name} is missing"));
    assert_eq!(*dtype, Dtype::F32, "{name} dtype");
    assert_eq!(found, shape, "{name} shape");
}

/// Canonical name -> (dtype, shape) of a model directory, through the key map.
fn model(dir: &Path, map: &KeyMap) -> BTreeMap<String, (Dtype, Vec<usize>)> {
    let ckpt = Checkpoint::open(dir, map).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        let _: Value = read_json(&dir.join(file)).unwrap();
    }
    ckpt.tensors()
        .map(|(k, v)| (k.to_string(), (v.dtype, v.shape.clone())))
        .collect()
}

fn check_family(family: &str, map: &KeyMap) -> Value {
    let root = fixtures().join(family);
    let reference: Value = read_json(&root.join("reference.json")).unwrap();
    assert_eq!(reference["family"], family);
    assert!(
        reference["versions"]["torch"]
            .as_str()
            .unwrap()
            .starts_with("2.13.0")
    );
    assert_eq!(reference["versions"]["transformers"], "5.23.0");
    let vocab = usize_of(&reference["tokens"]["vocab_size"]);
    let eos = reference["tokens"]["eos"].as_i64().unwrap();
    let dims = &reference["dims"];
    let text_hidden = usize_of(&dims["text_hidden"]);

    // Models: every layout holds the same canonical names and shapes as the
    // hub layout of the same weights, in the dtype it declares.
    let models = reference["models"].as_object().unwrap();
    let mut layouts = BTreeMap::new();
    for (variant, info) in models {
        let dir = root.join(info["dir"].as_str().unwrap());
        let tensors = model(&dir, map);
        let dtype = match info["dtype"].as_str().unwrap() {
            "float32" => Dtype::F32,
            "bfloat16" => Dtype::BF16,
            "float16" => Dtype::F16,
            other => panic!("{variant}: unknown dtype {other}"),
        };
        for (name, (d, _)) in &tensors {
            assert_eq!(*d, dtype, "{variant}: {name}");
        }
        let embed = &tensors["language_model.model.embed_tokens.weight"].1;
        assert_eq!(embed, &vec![vocab, text_hidden], "{variant}: embed_tokens");
        assert_eq!(
            tensors["language_model.lm_head.weight"].1,
            vec![vocab, text_hidden],
            "{variant}: lm_head"
        );
        layouts.insert(variant.clone(), tensors);
    }
    let hub: BTreeMap<_, _> = layouts["hub"].iter().map(|(k, v)| (k, &v.1)).collect();
    for (variant, tensors) in &layouts {
        let shapes: BTreeMap<_, _> = tensors.iter().map(|(k, v)| (k, &v.1)).collect();
        assert_eq!(shapes.len(), hub.len(), "{variant}: tensor count");
        if models[variant].get("same_weights_as").is_some() {
            assert_eq!(shapes, hub, "{variant}: canonical names and shapes");
        }
    }

    // Reference tensors.
    let tensors = header(&root.join("reference.safetensors"));
    let size = usize_of(&dims["image_size"]);
    let patches = usize_of(&dims["num_patches"]);
    let vision_hidden = usize_of(&dims["vision_hidden"]);
    let images = reference["images"].as_object().unwrap();
    assert!(images.len() >= 3);
    for (stem, info) in images {
        let png = root.join(info["file"].as_str().unwrap());
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", png.display());
        for backend in ["pil", "torchvision"] {
            expect_tensor(
                &tensors,
                &format!("pixel_values/{backend}/{stem}"),
                &[1, 3, size, size],
            );
        }
        expect_tensor(
            &tensors,
            &format!("vision/hidden/{stem}"),
            &[1, patches + 1, vision_hidden],
        );
        expect_tensor(
            &tensors,
            &format!("vision/cls_attention/{stem}"),
            &[1, patches],
        );
        for (variant, outliers) in info["outliers"].as_object().unwrap() {
            let k = usize_of(&outliers["k"]);
            let indices: Vec<usize> = outliers["indices"]
                .as_array()
                .unwrap()
                .iter()
                .map(usize_of)
                .collect();
            assert_eq!(indices.len(), k, "{stem}/{variant}");
            assert!(indices.iter().all(|&i| i < patches), "{stem}/{variant}");
            let mut unique = indices.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), k, "{stem}/{variant}: distinct");
        }
    }

    // Cases.
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let generated: Vec<i64> = case["generated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let max_new = usize_of(&case["max_new_tokens"]);
        assert!(
            !generated.is_empty() && generated.len() <= max_new,
            "{name}"
        );
        assert!(
            generated.iter().all(|&t| (0..vocab as i64).contains(&t)),
            "{name}"
        );
        let ended = case["ended_on_eos"].as_bool().unwrap();
        assert_eq!(
            ended,
            generated.last() == Some(&eos),
            "{name}: ended_on_eos"
        );
        assert!(!case["prompt_ids"].as_array().unwrap().is_empty(), "{name}");
        assert!(
            images.contains_key(case["image"].as_str().unwrap()),
            "{name}"
        );
        expect_tensor(
            &tensors,
            &format!("cases/{name}/logits_full_step0"),
            &[vocab],
        );
        if case["mode"] == "damro" {
            expect_tensor(
                &tensors,
                &format!("cases/{name}/logits_outlier_step0"),
                &[vocab],
            );
            let k = usize_of(&case["k"]);
            assert_eq!(
                case["outlier_indices"].as_array().unwrap().len(),
                k,
                "{name}"
            );
        }
    }
    reference
}

#[test]
fn llava_fixtures_are_complete() {
    let reference = check_family("llava", &KeyMap::llava());
    let tensors = header(&fixtures().join("llava/reference.safetensors"));
    for stem in reference["images"].as_object().unwrap().keys() {
        expect_tensor(&tensors, &format!("projector/{stem}"), &[1, 576, 64]);
    }
    let image = usize_of(&reference["tokens"]["image"]);
    let pad = usize_of(&reference["tokens"]["pad"]);
    assert_eq!(
        (image, pad),
        (535, 536),
        "<image> and <pad> are the last ids"
    );
    let config: Value = read_json(&fixtures().join("llava/models/hub/config.json")).unwrap();
    assert_eq!(usize_of(&config["image_token_index"]), image);
}

#[test]
fn instructblip_fixtures_are_complete() {
    let reference = check_family("instructblip", &KeyMap::identity());
    let tensors = header(&fixtures().join("instructblip/reference.safetensors"));
    for stem in reference["images"].as_object().unwrap().keys() {
        expect_tensor(&tensors, &format!("qformer/{stem}"), &[1, 8, 32]);
        expect_tensor(&tensors, &format!("projector/{stem}"), &[1, 8, 64]);
    }
    for variant in ["hub", "hub-f16"] {
        let dir = fixtures().join("instructblip/models").join(variant);
        let _: Value = read_json(&dir.join("qformer_tokenizer/tokenizer.json")).unwrap();
    }
}

//! Key layouts and shared loading: transformers 5's in-memory LLaVA names
//! and LAVIS-style split q/v biases load to the same model as the hub
//! files; a caller loading the language model from the same root sees
//! every unused tensor reported once, by name.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Reference, family_dir};
use damro_nn::{Checkpoint, KeyMap, LoadOptions, Weights};
use damro_vision::{
    Error, InstructBlipConfig, InstructBlipVision, LlavaConfig, LlavaVision, QFormerInput,
};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Tensor};

/// Rewrites the tensors of `src/model.safetensors` (or its shards) through
/// `rename` (`None` drops a tensor, several outputs split one) into
/// `dst/model.safetensors`, and copies `config.json`.
fn rewrite(
    src: &Path,
    dst: &Path,
    rename: impl Fn(&str, &TensorView<'_>) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
) {
    let mut files: Vec<_> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let bytes = std::fs::read(file).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            out.extend(rename(&name, &view));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = out
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
}

fn keep(name: String, view: &TensorView<'_>) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    vec![(
        name,
        view.dtype(),
        view.shape().to_vec(),
        view.data().to_vec(),
    )]
}

fn exactly_equal(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.equal(b)
}

#[test]
fn llava_in_memory_names_load_like_the_hub_file() {
    let hub = family_dir("llava").join("models/hub");
    let tmp = tempfile::tempdir().unwrap();
    rewrite(&hub, tmp.path(), |name, view| {
        let renamed = if let Some(rest) = name.strip_prefix("language_model.model.") {
            format!("model.language_model.{rest}")
        } else if name == "language_model.lm_head.weight" {
            "lm_head.weight".to_string()
        } else if let Some(rest) = name.strip_prefix("vision_tower.vision_model.") {
            format!("model.vision_tower.{rest}")
        } else {
            format!("model.{name}")
        };
        keep(renamed, view)
    });
    let r = Reference::load("llava");
    let a = LlavaVision::load(&hub, LoadOptions::cpu_f32()).unwrap();
    let b = LlavaVision::load(tmp.path(), LoadOptions::cpu_f32()).unwrap();
    let pixels = r.pixels("wide_rgb");
    let (fa, fb) = (a.encode(pixels).unwrap(), b.encode(pixels).unwrap());
    assert!(exactly_equal(&fa.embeds, &fb.embeds));
    assert!(exactly_equal(
        fa.cls_attention.as_ref().unwrap(),
        fb.cls_attention.as_ref().unwrap()
    ));
}

#[test]
fn split_qv_biases_load_like_the_fused_bias() {
    let hub = family_dir("instructblip").join("models/hub");
    let tmp = tempfile::tempdir().unwrap();
    rewrite(&hub, tmp.path(), |name, view| {
        let Some(stem) = name.strip_suffix("self_attn.qkv.bias") else {
            return keep(name.to_string(), view);
        };
        let third = view.data().len() / 3;
        let d = view.shape()[0] / 3;
        let part = |i: usize| view.data()[i * third..(i + 1) * third].to_vec();
        vec![
            (
                format!("{stem}self_attn.q_bias"),
                view.dtype(),
                vec![d],
                part(0),
            ),
            (
                format!("{stem}self_attn.v_bias"),
                view.dtype(),
                vec![d],
                part(2),
            ),
        ]
    });
    let r = Reference::load("instructblip");
    let a = InstructBlipVision::load(&hub, LoadOptions::cpu_f32()).unwrap();
    let b = InstructBlipVision::load(tmp.path(), LoadOptions::cpu_f32()).unwrap();
    let pixels = r.pixels("wide_rgb");
    let text = QFormerInput::from_ids(&[vec![2, 50, 60, 3]], 0, Device::Cpu).unwrap();
    let (fa, fb) = (
        a.encode(pixels, &text).unwrap(),
        b.encode(pixels, &text).unwrap(),
    );
    assert!(exactly_equal(&fa.embeds, &fb.embeds));
    assert!(exactly_equal(&fa.image_embeds, &fb.image_embeds));
}

#[test]
fn shared_root_reports_the_language_model_until_it_is_loaded() {
    let dir = family_dir("llava").join("models/tf5");
    let config = LlavaConfig::from_dir(&dir).unwrap();
    let root = Weights::new(
        Checkpoint::open(&dir, &KeyMap::llava()).unwrap(),
        LoadOptions::cpu_f32(),
    )
    .unwrap();
    let vision = LlavaVision::load_from(&root, &config).unwrap();
    // Layers past `vision_feature_layer` and `post_layernorm` are skipped.
    assert_eq!(vision.vision_tower.loaded_layers(), 3);
    assert!(vision.vision_tower.post_layernorm.is_none());
    let err = root.finish().unwrap_err().to_string();
    assert!(
        err.contains("unexpected tensor language_model.lm_head.weight"),
        "{err}"
    );
    assert!(!err.contains("vision_tower"), "{err}");
    // A caller that takes the language model's tensors ends cleanly.
    root.ignore("language_model");
    root.finish().unwrap();
}

#[test]
fn instructblip_shared_root_ends_cleanly_once_the_llm_is_taken() {
    let dir = family_dir("instructblip").join("models/hub");
    let config = InstructBlipConfig::from_dir(&dir).unwrap();
    let root = Weights::new(
        Checkpoint::open(&dir, &KeyMap::identity()).unwrap(),
        LoadOptions::cpu_f32(),
    )
    .unwrap();
    InstructBlipVision::load_from(&root, &config).unwrap();
    let err = root.finish().unwrap_err().to_string();
    assert!(
        err.contains("language_model.model.embed_tokens.weight"),
        "{err}"
    );
    root.ignore("language_model");
    root.finish().unwrap();
}

#[test]
fn a_missing_and_a_misshaped_tensor_are_reported_together() {
    let hub = family_dir("llava").join("models/hub");
    let tmp = tempfile::tempdir().unwrap();
    rewrite(&hub, tmp.path(), |name, view| {
        if name == "multi_modal_projector.linear_2.bias" {
            return vec![];
        }
        if name == "vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight" {
            let shape = vec![view.shape()[0] / 2, view.shape()[1]];
            let data = view.data()[..view.data().len() / 2].to_vec();
            return vec![(name.to_string(), view.dtype(), shape, data)];
        }
        keep(name.to_string(), view)
    });
    let err = LlavaVision::load(tmp.path(), LoadOptions::cpu_f32()).unwrap_err();
    assert!(
        matches!(&err, Error::Nn(damro_nn::Error::WeightsMismatch { problems, .. }) if problems.len() == 2),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("missing tensor multi_modal_projector.linear_2.bias"),
        "{text}"
    );
    assert!(
        text.contains("vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight")
            && text.contains("[32, 32]"),
        "{text}"
    );
}

#[test]
fn pixels_of_the_wrong_size_are_an_input_error() {
    let hub = family_dir("llava").join("models/hub");
    let model = LlavaVision::load(&hub, LoadOptions::cpu_f32()).unwrap();
    let pixels = Tensor::zeros([1, 3, 224, 224], (tch::Kind::Float, Device::Cpu));
    let err = model.encode(&pixels).unwrap_err();
    assert!(
        matches!(&err, Error::Input { what, .. } if what == "pixel values"),
        "{err}"
    );
    assert!(err.to_string().contains("[batch, 3, 336, 336]"), "{err}");
}

#[test]
fn malformed_configs_are_typed_errors_naming_the_culprit() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = family_dir("llava").join("models/hub");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hub.join("config.json")).unwrap()).unwrap();
    config["vision_config"]["hidden_act"] = "swish_gelu".into();
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    let err = LlavaVision::load(tmp.path(), LoadOptions::cpu_f32()).unwrap_err();
    assert!(
        matches!(&err, Error::Config { field, .. } if field == "vision_config.hidden_act"),
        "{err}"
    );

    let iblip = family_dir("instructblip").join("models/hub");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(iblip.join("config.json")).unwrap()).unwrap();
    config["qformer_config"]["num_attention_heads"] = 5.into();
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    let err = InstructBlipVision::load(tmp.path(), LoadOptions::cpu_f32()).unwrap_err();
    assert!(
        matches!(&err, Error::Config { field, .. } if field == "qformer_config.num_attention_heads"),
        "{err}"
    );

    std::fs::write(tmp.path().join("config.json"), "{\"vision_config\": ").unwrap();
    let err = LlavaVision::load(tmp.path(), LoadOptions::cpu_f32()).unwrap_err();
    assert!(
        matches!(&err, Error::Nn(damro_nn::Error::Json { path, .. }) if path.ends_with("config.json")),
        "{err}"
    );
}

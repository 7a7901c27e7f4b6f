//! Broken checkpoints built in a temp dir: each problem is a typed error
//! that names the culprit, never a crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use damro_nn::{Checkpoint, Error, KeyMap, LoadOptions, Weights, read_json};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use tch::Kind;

/// One tensor to write: name, dtype, shape (filled with zero bytes).
type Spec<'a> = (&'a str, Dtype, &'a [usize]);

fn write(path: &Path, tensors: &[Spec<'_>]) {
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, dtype, shape)| vec![0u8; dtype.bitsize() / 8 * shape.iter().product::<usize>()])
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&data)
        .map(|((name, dtype, shape), bytes)| {
            (
                name.to_string(),
                TensorView::new(*dtype, shape.to_vec(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

const GOOD: &[Spec<'static>] = &[
    ("encoder.weight", Dtype::F32, &[4, 3]),
    ("encoder.bias", Dtype::F32, &[4]),
    ("head.weight", Dtype::BF16, &[2, 4]),
];

/// A model that asks for `encoder.{weight,bias}` and `head.weight`.
fn load_model(dir: &Path) -> damro_nn::Result<()> {
    let w = Weights::new(
        Checkpoint::open(dir, &KeyMap::identity())?,
        LoadOptions::cpu_f32(),
    )?;
    let e = w.pp("encoder");
    let _weight = e.get("weight", &[4, 3])?;
    let _bias = e.get("bias", &[4])?;
    let head = w.pp("head").get("weight", &[2, 4])?;
    assert_eq!(head.kind(), Kind::Float);
    w.finish()
}

fn problems(err: &Error) -> &[String] {
    match err {
        Error::WeightsMismatch { problems, .. } => problems,
        other => panic!("expected WeightsMismatch, got {other:?}"),
    }
}

#[test]
fn a_good_checkpoint_loads() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("model.safetensors"), GOOD);
    load_model(tmp.path()).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("model.safetensors"), &GOOD[..2]);
    let err = load_model(tmp.path()).unwrap_err();
    assert_eq!(
        problems(&err),
        ["missing tensor head.weight (expected shape [2, 4])"]
    );
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        &tmp.path().join("model.safetensors"),
        &[GOOD[0], ("encoder.bias", Dtype::F32, &[5]), GOOD[2]],
    );
    let err = load_model(tmp.path()).unwrap_err();
    let [problem] = problems(&err) else {
        panic!("{err}")
    };
    assert!(problem.contains("encoder.bias"), "{problem}");
    assert!(
        problem.contains("[5]") && problem.contains("[4]"),
        "{problem}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        &tmp.path().join("model.safetensors"),
        &[GOOD[0], ("encoder.bias", Dtype::I64, &[4]), GOOD[2]],
    );
    let err = load_model(tmp.path()).unwrap_err();
    let [problem] = problems(&err) else {
        panic!("{err}")
    };
    assert!(
        problem.contains("encoder.bias") && problem.contains("I64"),
        "{problem}"
    );
}

#[test]
fn all_problems_and_unexpected_tensors_are_reported_together() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        &tmp.path().join("model.safetensors"),
        &[
            ("encoder.weight", Dtype::F32, &[3, 4]),
            ("head.weight", Dtype::BF16, &[2, 4]),
            ("extra.weight", Dtype::F16, &[1]),
        ],
    );
    let err = load_model(tmp.path()).unwrap_err();
    let found = problems(&err);
    assert_eq!(found.len(), 3, "{err}");
    assert!(found[0].contains("encoder.weight"));
    assert!(found[1].starts_with("missing tensor encoder.bias"));
    assert!(found[2].starts_with("unexpected tensor extra.weight"));
}

#[test]
fn truncated_file_is_a_safetensors_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    write(&path, GOOD);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
    let err = Checkpoint::open(tmp.path(), &KeyMap::identity()).unwrap_err();
    assert!(
        matches!(&err, Error::Safetensors { path: p, .. } if *p == path),
        "{err:?}"
    );
    // A header cut short fails the same way.
    std::fs::write(&path, &bytes[..20]).unwrap();
    let err = Checkpoint::open(tmp.path(), &KeyMap::identity()).unwrap_err();
    assert!(matches!(&err, Error::Safetensors { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

fn write_index(dir: &Path, map: &[(&str, &str)]) {
    let weight_map: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
}

const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";

#[test]
fn sharded_checkpoint_loads() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join(SHARD1), &GOOD[..2]);
    write(&tmp.path().join(SHARD2), &GOOD[2..]);
    write_index(
        tmp.path(),
        &[
            ("encoder.weight", SHARD1),
            ("encoder.bias", SHARD1),
            ("head.weight", SHARD2),
        ],
    );
    load_model(tmp.path()).unwrap();
}

#[test]
fn missing_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join(SHARD1), &GOOD[..2]);
    write_index(
        tmp.path(),
        &[
            ("encoder.weight", SHARD1),
            ("encoder.bias", SHARD1),
            ("head.weight", SHARD2),
        ],
    );
    let err = Checkpoint::open(tmp.path(), &KeyMap::identity()).unwrap_err();
    assert!(
        matches!(&err, Error::ShardMissing { shard, .. } if shard.ends_with(SHARD2)),
        "{err:?}"
    );
    assert!(err.to_string().contains(SHARD2), "{err}");
}

#[test]
fn index_naming_an_absent_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join(SHARD1), &GOOD[..2]);
    write(&tmp.path().join(SHARD2), &GOOD[2..]);
    write_index(
        tmp.path(),
        &[
            ("encoder.weight", SHARD1),
            ("encoder.bias", SHARD2), // lives in shard 1
            ("head.weight", SHARD2),
            ("ghost.weight", SHARD1), // nowhere
        ],
    );
    let err = Checkpoint::open(tmp.path(), &KeyMap::identity()).unwrap_err();
    match &err {
        Error::IndexNamesAbsent { names, .. } => {
            assert_eq!(names, &["encoder.bias", "ghost.weight"]);
        }
        other => panic!("expected IndexNamesAbsent, got {other:?}"),
    }
    assert!(err.to_string().contains("ghost.weight"), "{err}");
}

#[test]
fn malformed_index_and_config_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        "{\"weight_map\": [",
    )
    .unwrap();
    let err = Checkpoint::open(tmp.path(), &KeyMap::identity()).unwrap_err();
    assert!(
        matches!(&err, Error::Json { path, .. } if path.ends_with("model.safetensors.index.json")),
        "{err:?}"
    );

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Config {
        hidden_size: i64,
    }
    let config = tmp.path().join("config.json");
    std::fs::write(&config, r#"{"hidden_size": "wide"}"#).unwrap();
    let err = read_json::<Config>(&config).unwrap_err();
    assert!(
        matches!(&err, Error::Json { path, .. } if *path == config),
        "{err:?}"
    );
    assert!(err.to_string().contains("config.json"), "{err}");
    let err = read_json::<Config>(&tmp.path().join("absent.json")).unwrap_err();
    assert!(matches!(&err, Error::Io { .. }), "{err:?}");
}

#[test]
fn empty_dir_and_missing_dir_are_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Checkpoint::open(tmp.path(), &KeyMap::identity()).unwrap_err();
    assert!(matches!(&err, Error::NoWeights { .. }), "{err:?}");
    let err = Checkpoint::open(tmp.path().join("nope"), &KeyMap::identity()).unwrap_err();
    assert!(matches!(&err, Error::Io { .. }), "{err:?}");
}

#[test]
fn two_layouts_of_one_name_are_a_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        &tmp.path().join("model.safetensors"),
        &[
            ("vision_tower.encoder.layers.0.fc.weight", Dtype::F32, &[1]),
            (
                "vision_tower.vision_model.encoder.layers.0.fc.weight",
                Dtype::F32,
                &[1],
            ),
        ],
    );
    let err = Checkpoint::open(tmp.path(), &KeyMap::llava()).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateTensor { canonical, .. }
            if canonical == "vision_tower.vision_model.encoder.layers.0.fc.weight"),
        "{err:?}"
    );
}

#[test]
fn integer_load_kind_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("model.safetensors"), GOOD);
    let checkpoint = Checkpoint::open(tmp.path(), &KeyMap::identity()).unwrap();
    let options = LoadOptions {
        kind: Kind::Int64,
        device: tch::Device::Cpu,
    };
    let err = Weights::new(checkpoint, options).unwrap_err();
    assert!(
        matches!(&err, Error::Config { field, .. } if field == "dtype"),
        "{err:?}"
    );
}

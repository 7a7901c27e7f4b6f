//! `SizeCheck` against a real checkpoint: widths must equal the tensor
//! dimension that carries them, layer counts the layers on disk, and every
//! problem of a config comes back in one error naming the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use damro_nn::limits::{MAX_LAYERS, SizeCheck};
use damro_nn::{Checkpoint, Error, KeyMap, LoadOptions, Weights};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// A checkpoint with `enc.embed` `[10, 4]` and layers at `indices`.
fn weights(dir: &Path, indices: &[u32]) -> Weights {
    let embed = vec![0u8; 10 * 4 * 4];
    let layer = vec![0u8; 8 * 4 * 4];
    let mut views = vec![(
        "enc.embed".to_string(),
        TensorView::new(Dtype::F32, vec![10, 4], &embed).unwrap(),
    )];
    for i in indices {
        let view = TensorView::new(Dtype::F32, vec![8, 4], &layer).unwrap();
        views.push((format!("enc.layers.{i}.fc.weight"), view));
    }
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let checkpoint = Checkpoint::open(dir, &KeyMap::identity()).unwrap();
    Weights::new(checkpoint, LoadOptions::cpu_f32()).unwrap()
}

fn problems(check: SizeCheck) -> Vec<String> {
    match check.finish() {
        Ok(()) => Vec::new(),
        Err(Error::ConfigSizes { file, problems }) => {
            assert_eq!(file, Path::new("dir/config.json"));
            problems
        }
        Err(other) => panic!("expected ConfigSizes, got {other}"),
    }
}

#[test]
fn matching_sizes_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(tmp.path(), &[0, 1, 2]).pp("enc");
    let mut check = SizeCheck::new("dir/config.json");
    assert!(check.bounded("hidden_size", 4, 16));
    check.dim(&w, "embed", 1, "`hidden_size` = 4", 4);
    check.dim(&w, "absent", 0, "`anything` = 7", 7);
    check.layers(&w.pp("layers"), "num_hidden_layers", 3, 3);
    check.layers(&w.pp("layers"), "num_hidden_layers", 3, 2);
    assert_eq!(problems(check), Vec::<String>::new());
}

#[test]
fn every_mismatch_is_reported_once_with_field_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(tmp.path(), &[0, 1]).pp("enc");
    let mut check = SizeCheck::new("dir/config.json");
    check.dim(&w, "embed", 1, "`hidden_size` = 5", 5);
    check.dim(&w, "embed", 2, "`hidden_size` = 4", 4);
    check.layers(&w.pp("layers"), "num_hidden_layers", 1000, 1000);
    check.layers(&w.pp("layers"), "num_hidden_layers", 1, 1);
    assert!(!check.bounded("num_hidden_layers", MAX_LAYERS + 1, MAX_LAYERS));
    assert!(!check.bounded("hidden_size", -3, 16));
    assert_eq!(
        problems(check),
        [
            "`hidden_size` = 5 does not match tensor enc.embed [10, 4] (dimension 1 is 4)",
            "`hidden_size` = 4: tensor enc.embed [10, 4] has no dimension 2",
            "`num_hidden_layers` = 1000 does not match the checkpoint, which holds 2 layer(s) under enc.layers",
            "`num_hidden_layers` = 1 does not match the checkpoint, which holds 2 layer(s) under enc.layers",
            "`num_hidden_layers` = 1025 exceeds the limit of 1024",
            "`hidden_size` = -3 must be positive",
        ]
    );
}

#[test]
fn gaps_in_the_layer_numbers_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(tmp.path(), &[0, 2]).pp("enc");
    let mut check = SizeCheck::new("dir/config.json");
    check.layers(&w.pp("layers"), "num_hidden_layers", 3, 3);
    assert_eq!(
        problems(check),
        ["the checkpoint's layers under enc.layers are not numbered from 0 without gaps: {0, 2}"]
    );
}

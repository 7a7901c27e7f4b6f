//! Outlier selection, gathering and heatmaps against the reference fixtures
//! (`tests/fixtures/README.md`).
#![allow(clippy::unwrap_used)]

use damro::outlier::image::{self, RgbImage};
use damro::outlier::{
    CLIP_MEAN, CLIP_STD, GridPlacement, HeatmapOptions, OutlierOrder, Outliers, PatchGrid,
    ScoreScale, TokenIndexing, gather_tokens, image_from_pixel_values, select_outliers,
    write_heatmap,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn family_dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family)
}

fn fixtures(family: &str) -> (Value, HashMap<String, Tensor>) {
    let dir = family_dir(family);
    let json = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let tensors = Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap();
    (
        serde_json::from_str(&json).unwrap(),
        tensors.into_iter().collect(),
    )
}

fn get<'a>(tensors: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    tensors
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// `vision/cls_attention/<img>` of a variant (`hub` has no prefix).
fn cls_scores<'a>(tensors: &'a HashMap<String, Tensor>, variant: &str, img: &str) -> &'a Tensor {
    match variant {
        "hub" => get(tensors, &format!("vision/cls_attention/{img}")),
        v => get(tensors, &format!("variant/{v}/vision/cls_attention/{img}")),
    }
}

fn check_outlier_records(family: &str) -> usize {
    let (reference, tensors) = fixtures(family);
    let mut checked = 0;
    for (img, record) in reference["images"].as_object().unwrap() {
        for (variant, outliers) in record["outliers"].as_object().unwrap() {
            let k = outliers["k"].as_u64().unwrap() as usize;
            let scores = cls_scores(&tensors, variant, img);
            let selected = select_outliers(scores, k, OutlierOrder::ByScore).unwrap();
            assert_eq!(
                selected.to_vec().unwrap(),
                [ids(&outliers["indices"])],
                "{family} {variant} {img}"
            );
            checked += 1;
        }
    }
    checked
}

#[test]
fn outlier_indices_equal_the_fixtures() {
    assert_eq!(check_outlier_records("llava"), 9);
    assert_eq!(check_outlier_records("instructblip"), 6);
}

#[test]
fn llava_gathers_from_patch_features() {
    let (reference, tensors) = fixtures("llava");
    let mut checked = 0;
    for case in reference["cases"].as_array().unwrap() {
        if case["mode"] != "damro" || case["variant"] != "hub" {
            continue;
        }
        let (name, img) = (
            case["name"].as_str().unwrap(),
            case["image"].as_str().unwrap(),
        );
        let k = case["k"].as_u64().unwrap() as usize;
        let outliers =
            select_outliers(cls_scores(&tensors, "hub", img), k, OutlierOrder::ByScore).unwrap();
        assert_eq!(
            outliers.to_vec().unwrap(),
            [ids(&case["outlier_indices"])],
            "{name}"
        );
        // The projector works per token, so gathering its 576 outputs equals
        // projecting the k gathered features (up to matmul rounding).
        let projected = get(&tensors, &format!("projector/{img}"));
        let gathered = gather_tokens(projected, &outliers, TokenIndexing::PatchFeatures).unwrap();
        let expected = get(&tensors, &format!("cases/{name}/projector_outlier"));
        damro::nn::testing::assert_close(
            name,
            &gathered,
            expected,
            damro::nn::testing::SELF_CONSISTENT,
        );
        checked += 1;
    }
    assert_eq!(checked, 5);
}

#[test]
fn instructblip_gathers_with_both_indexings() {
    let (reference, tensors) = fixtures("instructblip");
    let mut seen = Vec::new();
    for case in reference["cases"].as_array().unwrap() {
        if case["mode"] != "damro" {
            continue;
        }
        let (name, img) = (
            case["name"].as_str().unwrap(),
            case["image"].as_str().unwrap(),
        );
        let indexing = match case["indexing"].as_str().unwrap() {
            "reference" => TokenIndexing::ClsFirstReference,
            "corrected" => TokenIndexing::ClsFirstCorrected,
            other => panic!("{name}: unknown indexing {other}"),
        };
        let k = case["k"].as_u64().unwrap() as usize;
        let outliers =
            select_outliers(cls_scores(&tensors, "hub", img), k, OutlierOrder::ByScore).unwrap();
        assert_eq!(
            outliers.to_vec().unwrap(),
            [ids(&case["outlier_indices"])],
            "{name}"
        );
        let hidden = get(&tensors, &format!("vision/hidden/{img}"));
        let gathered = gather_tokens(hidden, &outliers, indexing).unwrap();
        let rows = Tensor::from_slice(&ids(&case["gathered_rows"]));
        let expected = hidden.index_select(1, &rows);
        assert!(gathered.equal(&expected), "{name}: gathered rows differ");
        seen.push(indexing);
    }
    assert!(seen.contains(&TokenIndexing::ClsFirstReference));
    assert!(seen.contains(&TokenIndexing::ClsFirstCorrected));
}

fn render(
    out: &Path,
    background: &RgbImage,
    scores: &Tensor,
    outliers: &Outliers,
    style: &HeatmapOptions,
) {
    let values = Vec::<f32>::try_from(&scores.view([-1]).to_kind(Kind::Float)).unwrap();
    let grid = PatchGrid::square(values.len()).unwrap();
    let marked = &outliers.to_vec().unwrap()[0];
    write_heatmap(out, background, &values, grid, marked, style).unwrap();
    let back = image::open(out).unwrap().to_rgb8();
    assert_eq!(back.dimensions(), background.dimensions());
}

#[test]
fn heatmaps_of_fixture_images() {
    let (_, tensors) = fixtures("llava");
    let dir = std::env::temp_dir().join(format!("damro-heatmaps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scores = get(&tensors, "vision/cls_attention/wide_rgb");
    let outliers = select_outliers(scores, 10, OutlierOrder::ByScore).unwrap();
    // Over the 336x336 crop the model saw: the 24x24 grid fits exactly.
    let seen = image_from_pixel_values(
        get(&tensors, "pixel_values/pil/wide_rgb"),
        CLIP_MEAN,
        CLIP_STD,
    )
    .unwrap();
    let log_style = HeatmapOptions {
        scale: ScoreScale::Log,
        ..HeatmapOptions::default()
    };
    render(
        &dir.join("llava_wide_rgb.png"),
        &seen,
        scores,
        &outliers,
        &log_style,
    );
    // Over the original 500x333 image: CLIP saw its central square.
    let original = image::open(family_dir("images").join("wide_rgb.png"))
        .unwrap()
        .to_rgb8();
    let on_original = HeatmapOptions {
        placement: GridPlacement::CenterSquare,
        ..HeatmapOptions::default()
    };
    render(
        &dir.join("llava_wide_rgb_original.png"),
        &original,
        scores,
        &outliers,
        &on_original,
    );
    // InstructBLIP: 16x16 over 224x224.
    let (_, blip) = fixtures("instructblip");
    let scores = get(&blip, "vision/cls_attention/small_grey");
    let outliers = select_outliers(scores, 4, OutlierOrder::ByScore).unwrap();
    let seen = image_from_pixel_values(
        get(&blip, "pixel_values/pil/small_grey"),
        CLIP_MEAN,
        CLIP_STD,
    )
    .unwrap();
    render(
        &dir.join("instructblip_small_grey.png"),
        &seen,
        scores,
        &outliers,
        &log_style,
    );
    // A copy to look at by hand.
    std::fs::copy(dir.join("llava_wide_rgb.png"), "/tmp/damro_heatmap.png").unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

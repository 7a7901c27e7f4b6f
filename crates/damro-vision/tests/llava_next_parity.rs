//! LLaVA-NeXT vision side against `tests/fixtures/llava_next` (made by
//! `tools/make_llava_next.py` with transformers 4.43, the DAMRO authors'
//! version; see `tests/fixtures/README.md`): the anyres processor's pixels
//! bit for bit, its geometry and the packer's token counts over a table of
//! image sizes, per-tile features and DAMRO [CLS] scores, the packed full
//! branch in both grid layouts, and the contrast branch's k + 1 tokens.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Reference, TOL, assert_close, ids, topk};
use damro_nn::LoadOptions;
use damro_vision::anyres_pack::{GridLayout, PackPlan};
use damro_vision::preprocess::anyres::{AnyResGeometry, GridPinpoints};
use damro_vision::preprocess::{LlavaNextImageProcessor, LlavaNextPreprocessorConfig};
use damro_vision::{LlavaNextConfig, LlavaNextVision};
use tch::Tensor;

const LAYOUTS: [(GridLayout, &str); 2] = [
    (GridLayout::Transformers443, "transformers_4_43"),
    (GridLayout::Corrected, "corrected"),
];

fn reference() -> Reference {
    Reference::load("llava_next")
}

fn i64s(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.flatten(0, -1)).unwrap()
}

fn fnv1a64(values: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in values.iter().flat_map(|v| v.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn size_hw(value: &serde_json::Value) -> (u32, u32) {
    let v = ids(value);
    (v[0] as u32, v[1] as u32)
}

#[test]
fn geometry_table_matches_transformers_4_43() {
    let r = reference();
    let columns: Vec<&str> = r.json["geometry_table"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let table = r.tensor("geometry/table");
    let (rows, width) = table.size2().unwrap();
    assert_eq!(width as usize, columns.len());
    let values = i64s(table);
    let pinpoints = GridPinpoints::llava_next();
    let mut mismatches = Vec::new();
    for row in values.chunks(width as usize) {
        let (h, w) = (row[0] as u32, row[1] as u32);
        let g = AnyResGeometry::new(h, w, &pinpoints).unwrap();
        let mut ours = vec![
            i64::from(h),
            i64::from(w),
            i64::from(g.best.0),
            i64::from(g.best.1),
            i64::from(g.resized.0),
            i64::from(g.resized.1),
            i64::from(g.paste.0),
            i64::from(g.paste.1),
            i64::from(g.grid.0),
            i64::from(g.grid.1),
            g.num_tiles() as i64,
        ];
        for (layout, _) in LAYOUTS {
            let plan = PackPlan::new((h, w), g.grid, 24, layout).unwrap();
            ours.extend([plan.window.rows, plan.window.cols, plan.num_tokens()]);
        }
        if ours != row {
            mismatches.push(format!("{h}x{w}: ours {ours:?}, 4.43 {row:?}"));
        }
    }
    assert!(rows > 600, "table has {rows} rows");
    assert!(
        mismatches.is_empty(),
        "{} of {rows} sizes differ (columns {columns:?}):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn pixel_values_equal_the_4_43_processor() {
    let r = reference();
    let processor = LlavaNextImageProcessor::from_model_dir(r.model_dir("hub")).unwrap();
    assert_eq!(
        processor.config(),
        &LlavaNextPreprocessorConfig::llava_v1_6()
    );
    let mut report = Vec::new();
    for image in r.images() {
        let rec = &r.json["images"][&image];
        let out = processor
            .preprocess_path(r.dir.join(rec["file"].as_str().unwrap()))
            .unwrap();
        let shape: Vec<i64> = ids(&rec["pixel_values"]["shape"]);
        assert_eq!(out.pixel_values.size(), shape, "{image} shape");
        assert_eq!(out.image_size, size_hw(&rec["image_sizes"]), "{image}");
        let geometry = &rec["geometry"];
        assert_eq!(out.geometry.best, size_hw(&geometry["best_hw"]), "{image}");
        assert_eq!(
            out.geometry.resized,
            size_hw(&geometry["resized_hw"]),
            "{image}"
        );
        for (t, tile) in rec["pixel_values"]["tiles"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let values =
                Vec::<f32>::try_from(out.pixel_values.get(t as i64).flatten(0, -1)).unwrap();
            let ours = fnv1a64(&values);
            if ours != tile["fnv1a64"].as_str().unwrap() {
                let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
                report.push(format!(
                    "{image} tile {t}: hash {ours} != {}, sum {sum} vs {}, first {:?} vs {}",
                    tile["fnv1a64"],
                    tile["sum"],
                    &values[..4],
                    tile["first"]
                ));
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn tile_features_scores_and_both_branches() {
    let r = reference();
    let dir = r.model_dir("hub");
    let config = LlavaNextConfig::from_dir(&dir).unwrap();
    let vision = LlavaNextVision::load(&dir, LoadOptions::cpu_f32()).unwrap();
    let processor = LlavaNextImageProcessor::from_model_dir(&dir).unwrap();
    let k = r.json["k_main"].as_i64().unwrap();
    for image in r.images() {
        let rec = &r.json["images"][&image];
        let pixels = processor
            .preprocess_path(r.dir.join(rec["file"].as_str().unwrap()))
            .unwrap();
        let what = |t: &str| format!("{image} {t}");
        let out = vision
            .encode(
                &pixels.pixel_values,
                pixels.image_size,
                GridLayout::default(),
                Some(k),
            )
            .unwrap();
        let tiles = &out.tiles;
        assert_close(
            &what("tile features"),
            &tiles.features,
            r.tensor(&format!("vision/tile_features/{image}")),
            TOL,
        );
        let scores = tiles.cls_attention.as_ref().unwrap();
        assert_close(
            &what("[CLS] scores"),
            scores,
            r.tensor(&format!("vision/cls_attention/{image}")),
            TOL,
        );
        // every tile's top-k (the generator enforces decisive gaps on all)
        for (t, record) in rec["tile_outliers"].as_array().unwrap().iter().enumerate() {
            let row = scores.get(t as i64).unsqueeze(0);
            assert_eq!(
                topk(&row, k),
                ids(&record["indices"]),
                "{image} tile {t} top-k"
            );
        }
        assert_close(
            &what("packed full branch"),
            &out.full.squeeze_dim(0),
            r.tensor(&format!("full/packed/{image}")),
            TOL,
        );
        for (layout, name) in LAYOUTS {
            let plan = config.pack_plan(pixels.image_size, layout).unwrap();
            let expected = i64s(r.tensor(&format!("full/index/{name}/{image}")));
            assert_eq!(plan.token_index(), expected, "{image} {name} index map");
            assert_eq!(
                plan.num_tokens(),
                rec["geometry"][name]["image_tokens"].as_i64().unwrap(),
                "{image} {name} image tokens"
            );
        }
        let contrast = out.outliers.as_ref().unwrap();
        assert_eq!(contrast.tokens.size(), [1, k + 1, 64]);
        assert_eq!(
            contrast.outlier_indices,
            ids(&rec["tile_outliers"][0]["indices"]),
            "{image} base-tile outliers"
        );
        assert_close(
            &what("contrast tokens"),
            &contrast.tokens.squeeze_dim(0),
            r.tensor(&format!("contrast/k{k}/{image}")),
            TOL,
        );
    }
}

#[test]
fn case_branches_have_the_reference_lengths_and_tokens() {
    let r = reference();
    let dir = r.model_dir("hub");
    let vision = LlavaNextVision::load(&dir, LoadOptions::cpu_f32()).unwrap();
    let processor = LlavaNextImageProcessor::from_model_dir(&dir).unwrap();
    for case in r.cases() {
        let name = case["name"].as_str().unwrap();
        let image = case["image"].as_str().unwrap();
        let layout = match case["layout"].as_str().unwrap() {
            "transformers_4_43" => GridLayout::Transformers443,
            "corrected" => GridLayout::Corrected,
            other => panic!("{name}: layout {other}"),
        };
        let k = case["k"].as_i64();
        let file = r.json["images"][image]["file"].as_str().unwrap();
        let pixels = processor.preprocess_path(r.dir.join(file)).unwrap();
        let out = vision
            .encode(&pixels.pixel_values, pixels.image_size, layout, k)
            .unwrap();
        let prompt_len = ids(&case["prompt_ids"]).len() as i64;
        assert_eq!(
            prompt_len - 1 + out.full.size()[1],
            case["full_len"].as_i64().unwrap(),
            "{name} full branch length"
        );
        if let Some(k) = k {
            let contrast = out.outliers.unwrap();
            assert_eq!(
                prompt_len + k,
                case["outlier_len"].as_i64().unwrap(),
                "{name}"
            );
            assert_eq!(
                contrast.outlier_indices,
                ids(&case["outlier_indices"]),
                "{name}"
            );
            assert_close(
                &format!("{name} contrast tokens"),
                &contrast.tokens.squeeze_dim(0),
                r.tensor(&format!("cases/{name}/contrast_tokens")),
                TOL,
            );
        }
    }
}

#[test]
fn tile_count_must_match_the_image_size() {
    let r = reference();
    let vision = LlavaNextVision::load(r.model_dir("hub"), LoadOptions::cpu_f32()).unwrap();
    let pixels = Tensor::zeros([2, 3, 336, 336], (tch::Kind::Float, tch::Device::Cpu));
    // 333x500 needs a base tile and two grid tiles
    let err = vision
        .encode(&pixels, (333, 500), GridLayout::default(), Some(10))
        .unwrap_err();
    assert!(err.to_string().contains("3 tiles"), "{err}");
    let pixels = Tensor::zeros([3, 3, 336, 336], (tch::Kind::Float, tch::Device::Cpu));
    let err = vision
        .encode(&pixels, (333, 500), GridLayout::default(), Some(0))
        .unwrap_err();
    assert!(err.to_string().contains("outlier k"), "{err}");
}

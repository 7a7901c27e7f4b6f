//! Config variants against HF transformers 5.23's processors (both backends):
//! LLaVA's pad-to-square, centre crops that pad, rescale or normalise alone,
//! shortest+longest edge, an odd square size. Compared by the FNV-1a 64 hash of
//! the `f32` bytes, so equality is bit for bit.
//!
//! Fixture: `tests/fixtures/preprocess_variants.json`, made by
//! `tools/make_preprocess_variant_fixtures.py`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use damro_vision::preprocess::{ImageProcessor, PreprocessorConfig, ProcessorOptions, Resampler};
use serde_json::Value;

fn fnv1a64(values: &[f32]) -> u64 {
    values
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .fold(0xCBF2_9CE4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
        })
}

#[test]
fn config_variants_equal_hf_bit_for_bit() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("preprocess_variants.json")).unwrap(),
    )
    .unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in cases {
        let name = case["config"].as_str().unwrap();
        let config = PreprocessorConfig::from_json_str(&doc["configs"][name].to_string()).unwrap();
        let resampler = match case["backend"].as_str().unwrap() {
            "pil" => Resampler::Pil,
            "torchvision" => Resampler::Torchvision,
            other => panic!("backend {other}"),
        };
        let processor = ImageProcessor::new(config).with_options(ProcessorOptions {
            resampler,
            // The references come from transformers 5.23 with Pillow 13.
            ..ProcessorOptions::transformers5_pil()
        });
        let image = case["image"].as_str().unwrap();
        let path = fixtures.join("images").join(format!("{image}.png"));
        let pv = processor.preprocess_path(&path).unwrap();
        let shape: Vec<i64> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        let label = format!("{name} {resampler:?} {image}");
        if pv.size() != shape {
            failures.push(format!("{label}: shape {:?} vs {shape:?}", pv.size()));
            continue;
        }
        let values = Vec::<f32>::try_from(pv.flatten(0, -1)).unwrap();
        if format!("{:016x}", fnv1a64(&values)) != case["fnv1a64"].as_str().unwrap() {
            failures.push(format!(
                "{label}: first {:?} vs {}",
                &values[..4],
                case["first"]
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

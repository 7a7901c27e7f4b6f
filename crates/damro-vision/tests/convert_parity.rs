//! RGB conversion against HF transformers 5.23's `convert_to_rgb` and PIL's
//! `Image.convert("RGB")`, on PNGs of every colour type and bit depth.
//!
//! Fixtures: `tests/fixtures/convert/`, made by `tools/make_convert_fixtures.py`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use damro_vision::preprocess::{
    AlphaMode, ImageInput, ImageProcessor, PreprocessorConfig, ProcessorOptions,
};
use serde_json::Value;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_png_kind_converts_like_hf_and_pil() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/convert");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let files = expected["files"].as_object().unwrap();
    assert!(files.len() >= 20);
    let mut failures = Vec::new();
    for (key, alpha) in [
        ("composite", AlphaMode::CompositeOnWhite),
        ("discard", AlphaMode::Discard),
    ] {
        let processor =
            ImageProcessor::new(PreprocessorConfig::llava_1_5()).with_options(ProcessorOptions {
                alpha,
                ..Default::default()
            });
        for (name, case) in files {
            let path = dir.join(case["file"].as_str().unwrap());
            let rgb = processor.to_rgb(ImageInput::Path(&path)).unwrap();
            let want = hex(case[key].as_str().unwrap());
            if rgb.as_raw() != &want {
                let n = rgb
                    .as_raw()
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| a != b)
                    .count();
                failures.push(format!(
                    "{key} {name} ({}): {n} bytes differ",
                    case["pil_mode"]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

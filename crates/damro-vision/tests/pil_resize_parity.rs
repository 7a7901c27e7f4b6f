//! The PIL bicubic port against Pillow 13.0.0 byte for byte, and against
//! Pillow 12's pass order (hashes).
//!
//! Fixtures: `tests/fixtures/resize/`, made by `tools/make_resize_fixtures.py`
//! (see its docstring for the source patterns this file regenerates).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use damro_vision::preprocess::{PillowVersion, resize_bicubic, resize_bicubic_as};
use image::RgbImage;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/resize")
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn make_source(pattern: &str, width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = SplitMix64(seed);
    let (w, h) = (i64::from(width), i64::from(height));
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let r = (rng.next() >> 56) as i64;
                let v = match pattern {
                    "noise" => r,
                    "checker" => {
                        if (x / 4 + y / 4 + c) % 2 == 1 {
                            255
                        } else {
                            0
                        }
                    }
                    "smooth" => (x * 200 / (w - 1).max(1) + y * 55 / (h - 1).max(1) + r % 9 - 4)
                        .clamp(0, 255),
                    other => panic!("unknown pattern {other}"),
                };
                data.push(v as u8);
            }
        }
    }
    RgbImage::from_raw(width, height, data).unwrap()
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[test]
fn pil_bicubic_resize_matches_pillow_bit_for_bit() {
    let dir = fixture_dir();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let blob = std::fs::read(dir.join("expected.bin")).unwrap();

    let mut sources = HashMap::new();
    for s in manifest["sources"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap().to_string();
        let img = make_source(
            s["pattern"].as_str().unwrap(),
            s["width"].as_u64().unwrap() as u32,
            s["height"].as_u64().unwrap() as u32,
            s["seed"].as_u64().unwrap(),
        );
        sources.insert(name, img);
    }

    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    let mut differing = 0;
    for case in cases {
        let src = &sources[case["source"].as_str().unwrap()];
        let (w, h) = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
        );
        let out = resize_bicubic(src, w, h).unwrap();
        let label = format!("{} -> {w}x{h}", case["source"].as_str().unwrap());
        if let (Some(offset), Some(len)) = (case["offset"].as_u64(), case["len"].as_u64()) {
            let expected = &blob[offset as usize..(offset + len) as usize];
            let diff = out
                .as_raw()
                .iter()
                .zip(expected)
                .filter(|(a, b)| a != b)
                .count();
            if out.as_raw().as_slice() != expected {
                failures.push(format!("{label}: {diff} of {len} bytes differ"));
            }
        }
        let hash = format!("{:016x}", fnv1a64(out.as_raw()));
        if hash != case["fnv1a64"].as_str().unwrap() {
            failures.push(format!("{label}: hash differs"));
        }
        let legacy = resize_bicubic_as(src, w, h, PillowVersion::Pre13).unwrap();
        let hash = format!("{:016x}", fnv1a64(legacy.as_raw()));
        if hash != case["fnv1a64_pre13"].as_str().unwrap() {
            failures.push(format!("{label}: Pillow < 13 hash differs"));
        }
        if case.get("differs_pre13").is_some() {
            differing += 1;
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The pass-order rule of Pillow 13 is exercised.
    assert!(differing >= 5, "{differing}");
}

/// The `image` crate's bicubic (CatmullRom) is not PIL's: the reason for
/// the port. Documents the size of the difference on one noisy case.
#[test]
fn image_crate_differs_from_pil() {
    let src = make_source("noise", 500, 333, 6);
    let ours = resize_bicubic(&src, 224, 224).unwrap();
    let theirs = image::imageops::resize(&src, 224, 224, image::imageops::FilterType::CatmullRom);
    let max = ours
        .as_raw()
        .iter()
        .zip(theirs.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(max > 0);
}

//! Preprocessed pixels against HF transformers 5.23's processors, exactly.
//!
//! Fixtures: `tests/fixtures/images/*.png` and `pixel_values/{pil,torchvision}/<img>`
//! in `tests/fixtures/{llava,instructblip}/reference.safetensors` (see
//! `tests/fixtures/README.md`, made by `tools/make_fixtures.py`). The PIL
//! backend is matched bit for bit by the Rust port; the torchvision backend
//! by libtorch's own `uint8` antialiased bicubic, also bit for bit on the
//! same libtorch build and CPU kind.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use damro_vision::preprocess::{
    ImageInput, ImageProcessor, PreprocessorConfig, ProcessorOptions, Resampler,
};
use safetensors::SafeTensors;
use tch::Tensor;

const IMAGES: [&str; 3] = ["wide_rgb", "tall_rgba", "small_grey"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn reference(family: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(family).join("reference.safetensors")).unwrap()
}

fn reference_values(st: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let view = st.tensor(name).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

fn tensor_values(t: &Tensor) -> (Vec<usize>, Vec<f32>) {
    let shape = t.size().iter().map(|&d| d as usize).collect();
    (shape, Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
}

/// (values that differ bitwise, largest absolute difference)
fn compare(ours: &[f32], theirs: &[f32]) -> (usize, f32) {
    assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(theirs).fold((0, 0f32), |(n, max), (a, b)| {
        let differs = a.to_bits() != b.to_bits();
        (n + usize::from(differs), max.max((a - b).abs()))
    })
}

fn check_family(family: &str, model_dir: &Path, expected_side: usize) {
    let bytes = reference(family);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut report = Vec::new();
    let mut failed = false;
    for (backend, resampler) in [
        ("pil", Resampler::Pil),
        ("torchvision", Resampler::Torchvision),
    ] {
        let processor = ImageProcessor::from_model_dir(model_dir)
            .unwrap()
            .with_options(ProcessorOptions {
                resampler,
                // The references come from transformers 5.23 with Pillow 13.
                ..ProcessorOptions::transformers5_pil()
            });
        for img in IMAGES {
            let path = fixtures().join("images").join(format!("{img}.png"));
            let ours = tensor_values(&processor.preprocess_path(&path).unwrap());
            let theirs = reference_values(&st, &format!("pixel_values/{backend}/{img}"));
            assert_eq!(ours.0, theirs.0, "{family} {backend} {img}");
            assert_eq!(ours.0, vec![1, 3, expected_side, expected_side]);
            let (n, max) = compare(&ours.1, &theirs.1);
            report.push(format!(
                "{family} {backend} {img}: {n} values differ, max |diff| {max:e}"
            ));
            failed |= n != 0;
        }
    }
    assert!(!failed, "{report:#?}");
}

#[test]
fn llava_pixel_values_equal_hf_exactly() {
    check_family("llava", &fixtures().join("llava/models/hub"), 336);
}

#[test]
fn instructblip_pixel_values_equal_hf_exactly() {
    check_family(
        "instructblip",
        &fixtures().join("instructblip/models/hub"),
        224,
    );
}

#[test]
fn tf5_processor_config_equals_hub_preprocessor_config() {
    let hub = PreprocessorConfig::from_model_dir(fixtures().join("llava/models/hub")).unwrap();
    let tf5 = PreprocessorConfig::from_model_dir(fixtures().join("llava/models/tf5")).unwrap();
    assert_eq!(hub, tf5);
    assert_eq!(hub, PreprocessorConfig::llava_1_5());
    let blip =
        PreprocessorConfig::from_model_dir(fixtures().join("instructblip/models/hub")).unwrap();
    assert_eq!(blip, PreprocessorConfig::instructblip());
}

#[test]
fn batch_stacks_and_entry_points_agree() {
    let processor = ImageProcessor::new(PreprocessorConfig::instructblip());
    let dir = fixtures().join("images");
    let paths: Vec<PathBuf> = IMAGES
        .iter()
        .map(|i| dir.join(format!("{i}.png")))
        .collect();
    let decoded: Vec<image::DynamicImage> = paths.iter().map(|p| image::open(p).unwrap()).collect();
    let bytes: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();

    let inputs: Vec<ImageInput<'_>> = paths.iter().map(|p| ImageInput::Path(p)).collect();
    let batch = processor.preprocess_batch(&inputs).unwrap();
    assert_eq!(batch.size(), vec![3, 3, 224, 224]);
    for (i, path) in paths.iter().enumerate() {
        let one = processor.preprocess_path(path).unwrap();
        assert!(
            batch.get(i as i64).unsqueeze(0).equal(&one),
            "{}",
            path.display()
        );
        // RGB images decoded by the caller, and encoded bytes, go the same way
        // (PNG header sniffing applies to bytes and paths alike).
        let from_bytes = processor
            .preprocess(ImageInput::Encoded(&bytes[i]))
            .unwrap();
        assert!(from_bytes.equal(&one));
        if let image::DynamicImage::ImageRgb8(rgb) = &decoded[i] {
            let raw = processor
                .preprocess_rgb(rgb.width(), rgb.height(), rgb.as_raw())
                .unwrap();
            assert!(raw.equal(&one));
            assert!(processor.preprocess_image(&decoded[i]).unwrap().equal(&one));
        }
    }
}

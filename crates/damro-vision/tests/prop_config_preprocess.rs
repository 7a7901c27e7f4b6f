//! Property tests of the vision configs and the image entry points on
//! arbitrary input: no JSON value makes a config parser or its validation
//! panic; no bytes make image decoding panic; every image the processors
//! accept comes out at the model's size; raw RGB buffers of any length are
//! an error or pixels, never a panic; and any preprocessor config that
//! validates runs on any small image without panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use damro_vision::config::{RawClipVisionConfig, RawEvaVisionConfig, RawQFormerConfig};
use damro_vision::instructblip::RawInstructBlipConfig;
use damro_vision::llava::RawLlavaConfig;
use damro_vision::preprocess::{
    ImageInput, ImageProcessor, PreprocessError, PreprocessorConfig, ProcessorOptions,
};
use image::{DynamicImage, ImageFormat, RgbaImage};
use proptest::prelude::*;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

/// A number as configs write them, often at the edges of the range.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..80).prop_map(Value::from),
        Just(json!(i64::MAX)),
        Just(json!(i64::MIN)),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!([336, 336])),
        Just(json!([1, 2])),
        Just(json!("gelu")),
        Just(Value::Null),
    ]
}

/// An object with the given keys set to arbitrary numbers (some left out).
fn object(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec(prop::option::of(number()), keys.len()).prop_map(move |values| {
        let map = keys
            .iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)));
        Value::Object(map.collect())
    })
}

const TOWER_KEYS: &[&str] = &[
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "layer_norm_eps",
    "hidden_act",
];
const QFORMER_KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "cross_attention_frequency",
    "encoder_hidden_size",
    "layer_norm_eps",
];
const LLAVA_KEYS: &[&str] = &[
    "image_token_index",
    "image_seq_length",
    "vision_feature_layer",
    "projector_hidden_act",
];
const BLIP_KEYS: &[&str] = &["num_query_tokens", "image_token_index"];

/// `base` with `section` (a nested object) inserted, when given.
fn with(mut base: Value, section: &str, inner: Option<Value>) -> Value {
    if let (Some(inner), Some(map)) = (inner, base.as_object_mut()) {
        map.insert(section.to_string(), inner);
    }
    base
}

fn text_config() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(object(&["hidden_size", "model_type"]))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tower_configs_never_panic(value in object(TOWER_KEYS)) {
        if let Ok(raw) = serde_json::from_value::<RawClipVisionConfig>(value.clone())
            && let Ok(c) = raw.into_config()
        {
            prop_assert!(c.patch_size <= c.image_size && c.hidden_size % c.num_attention_heads == 0);
            let _ = c.num_positions();
        }
        if let Ok(raw) = serde_json::from_value::<RawEvaVisionConfig>(value)
            && let Ok(c) = raw.into_config()
        {
            let _ = (c.num_positions(), c.head_dim());
        }
    }

    #[test]
    fn qformer_configs_never_panic(value in object(QFORMER_KEYS)) {
        if let Ok(raw) = serde_json::from_value::<RawQFormerConfig>(value) {
            let _ = raw.into_config();
        }
    }

    #[test]
    fn llava_configs_never_panic(
        top in object(LLAVA_KEYS),
        vision in prop::option::of(object(TOWER_KEYS)),
        text in text_config(),
    ) {
        let value = with(with(top, "vision_config", vision), "text_config", text);
        if let Ok(raw) = serde_json::from_value::<RawLlavaConfig>(value)
            && let Ok(c) = raw.into_config()
        {
            let _ = c.layers_needed();
        }
    }

    #[test]
    fn instructblip_configs_never_panic(
        top in object(BLIP_KEYS),
        vision in prop::option::of(object(TOWER_KEYS)),
        qformer in prop::option::of(object(QFORMER_KEYS)),
        text in text_config(),
    ) {
        let value = with(with(with(top, "vision_config", vision), "qformer_config", qformer), "text_config", text);
        if let Ok(raw) = serde_json::from_value::<RawInstructBlipConfig>(value) {
            let _ = raw.into_config();
        }
    }

    #[test]
    fn arbitrary_text_never_panics_the_preprocessor_config(text in ".{0,120}") {
        let _ = PreprocessorConfig::from_json_str(&text);
    }
}

/// The two real processors, under each backend.
fn processors() -> Vec<(ImageProcessor, i64)> {
    let mut out = Vec::new();
    for options in [
        ProcessorOptions::default(),
        ProcessorOptions::transformers5_pil(),
        ProcessorOptions::transformers5_torchvision(),
    ] {
        out.push((
            ImageProcessor::new(PreprocessorConfig::llava_1_5()).with_options(options),
            336,
        ));
        out.push((
            ImageProcessor::new(PreprocessorConfig::instructblip()).with_options(options),
            224,
        ));
    }
    out
}

/// A small random image in one of the colour types image files carry.
fn small_image() -> impl Strategy<Value = DynamicImage> {
    (1u32..20, 1u32..20, 0usize..4, any::<u64>()).prop_map(|(w, h, kind, seed)| {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        let rgba = RgbaImage::from_fn(w, h, |_, _| image::Rgba([next(), next(), next(), next()]));
        let image = DynamicImage::ImageRgba8(rgba);
        match kind {
            0 => image,
            1 => DynamicImage::ImageRgb8(image.to_rgb8()),
            2 => DynamicImage::ImageLuma8(image.to_luma8()),
            _ => DynamicImage::ImageLumaA8(image.to_luma_alpha8()),
        }
    })
}

fn png_bytes(image: &DynamicImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    bytes
}

/// Runs `input` through one of [`processors`] (each case picks one, so
/// all are covered without running every image six times): an accepted
/// image comes out `[1, 3, side, side]` with finite values. Returns
/// whether it was accepted.
fn preprocess_with(
    which: prop::sample::Index,
    input: ImageInput<'_>,
) -> Result<bool, TestCaseError> {
    let mut all = processors();
    let (processor, side) = all.swap_remove(which.index(all.len()));
    match processor.preprocess(input) {
        Ok(t) => {
            prop_assert_eq!(t.size(), vec![1, 3, side, side]);
            prop_assert!(t.isfinite().all().int64_value(&[]) == 1);
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// A config field set to a size that is sometimes far too large.
fn size() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (0u32..48).prop_map(Value::from),
        1 => Just(json!(u32::MAX)),
        1 => Just(json!({"shortest_edge": 30, "longest_edge": 40})),
        1 => Just(json!({"height": 17, "width": 29})),
        1 => Just(json!([5, 9])),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        prefix in prop::sample::select(vec![&b""[..], b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0"]),
        tail in prop::collection::vec(any::<u8>(), 0..200),
        which in any::<prop::sample::Index>(),
    ) {
        let bytes = [prefix, &tail[..]].concat();
        preprocess_with(which, ImageInput::Encoded(&bytes))?;
    }

    #[test]
    fn damaged_png_files_never_panic_the_decoder(
        image in small_image(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
        which in any::<prop::sample::Index>(),
    ) {
        let mut bytes = png_bytes(&image);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        preprocess_with(which, ImageInput::Encoded(&bytes))?;
    }

    #[test]
    fn every_small_png_comes_out_at_the_model_size(image in small_image(), which in any::<prop::sample::Index>()) {
        let bytes = png_bytes(&image);
        prop_assert!(preprocess_with(which, ImageInput::Encoded(&bytes))?);
    }

    #[test]
    fn raw_rgb_buffers_of_any_length(
        width in 0u32..24,
        height in 0u32..24,
        extra in -4i64..4,
        seed in any::<u8>(),
        which in any::<prop::sample::Index>(),
    ) {
        let exact = (width * height * 3) as i64;
        let len = (exact + extra).max(0) as usize;
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let accepted = preprocess_with(which, ImageInput::Rgb { width, height, data: &data })?;
        prop_assert_eq!(accepted, extra == 0 && width > 0 && height > 0);
    }

    #[test]
    fn any_valid_preprocessor_config_runs(
        kind in prop::sample::select(vec!["CLIPImageProcessor", "LlavaImageProcessor", "BlipImageProcessor"]),
        size in size(),
        crop in prop::option::of(size()),
        flags in prop::collection::vec(prop::option::of(any::<bool>()), 4),
        image in small_image(),
    ) {
        let mut file = json!({"image_processor_type": kind, "size": size});
        for (key, flag) in ["do_center_crop", "do_pad", "do_resize", "do_normalize"].iter().zip(flags) {
            if let Some(flag) = flag {
                file[key] = json!(flag);
            }
        }
        if let Some(crop) = crop {
            file["crop_size"] = crop;
        }
        let Ok(config) = PreprocessorConfig::from_json_str(&file.to_string()) else {
            return Ok(());
        };
        let processor = ImageProcessor::new(config);
        match processor.preprocess(ImageInput::Image(&image)) {
            Ok(t) => prop_assert_eq!(t.size().len(), 4),
            Err(e) => {
                let too_large = matches!(e, PreprocessError::TooLarge { .. } | PreprocessError::EmptyImage { .. });
                prop_assert!(too_large, "{}", e);
            }
        }
    }
}

//! Times the ViT pass DAMRO needs ([CLS] scores of layer -2 and the
//! features of `vision_feature_layer`) for LLaVA-1.5's one 336x336 image
//! and for LLaVA-NeXT's tiles of one image, all tiles as ONE batched
//! forward (what `LlavaNextVision::encode_tiles` does), next to the same
//! tiles as one forward each.
//!
//! Run with: `scripts/libtorch-env.sh cargo run --release --example vit_tiles_bench -- [--model DIR | --random-vit-l] [--image PNG] [--reps N]`
//!
//! `--model` takes a LLaVA-NeXT directory (only its vision side is loaded;
//! default: the tiny fixture model); `--random-vit-l` writes a random tower
//! of CLIP ViT-L/14-336's shape (hidden 1024, 24 layers, 16 heads, MLP
//! 4096; projector 1024 -> 4096 -> 4096) to a temporary directory first.
//! The default image, `tests/fixtures/llava_next/images/square_rgb.png`,
//! takes the 672x672 pinpoint: a base tile and 2x2 grid tiles, 5 in all.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use damro::nn::LoadOptions;
use damro::vision::LlavaNextVision;
use damro::vision::preprocess::LlavaNextImageProcessor;
use serde_json::json;
use tch::{Device, Kind, Tensor};

const FIXTURE_DIR: &str = "tests/fixtures/llava_next/models/hub";
const FIXTURE_IMAGE: &str = "tests/fixtures/llava_next/images/square_rgb.png";

/// Times the [CLS]/ViT pass of one image vs LLaVA-NeXT's batched tiles.
#[derive(Debug, Parser)]
#[command(name = "vit_tiles_bench")]
struct Args {
    /// A LLaVA-NeXT model directory [default: the tiny fixture model].
    #[arg(long, value_name = "DIR", conflicts_with = "random_vit_l")]
    model: Option<PathBuf>,
    /// Use a random tower of CLIP ViT-L/14-336's shape.
    #[arg(long)]
    random_vit_l: bool,
    /// The image [default: the 5-tile fixture image].
    #[arg(long, value_name = "PNG")]
    image: Option<PathBuf>,
    /// Timed repetitions of each variant (the median is printed).
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let dir = match (&args.model, args.random_vit_l) {
        (Some(dir), _) => dir.clone(),
        (None, true) => {
            write_random_vit_l(temp.path())?;
            temp.path().to_path_buf()
        }
        (None, false) => PathBuf::from(FIXTURE_DIR),
    };
    let vision = LlavaNextVision::load(&dir, LoadOptions::cpu_f32())
        .with_context(|| format!("loading the vision side of {}", dir.display()))?;
    let image = args.image.unwrap_or_else(|| PathBuf::from(FIXTURE_IMAGE));
    let processor = LlavaNextImageProcessor::new(
        damro::vision::preprocess::LlavaNextPreprocessorConfig::llava_v1_6(),
    );
    let tiles = processor.preprocess_path(&image)?.pixel_values;
    let count = tiles.size()[0];
    let base = tiles.f_narrow(0, 0, 1)?;
    let tower = &vision.llava.config().vision;
    println!(
        "tower: hidden {}, {} layers ({} run), {} heads; image {} -> {count} tiles; libtorch threads {}",
        tower.hidden_size,
        tower.num_hidden_layers,
        vision.llava.vision_tower.loaded_layers(),
        tower.num_attention_heads,
        image.display(),
        tch::get_num_threads()
    );
    // One untimed warm-up of each shape.
    let _ = std::hint::black_box(vision.llava.features(&base)?);
    let _ = std::hint::black_box(vision.encode_tiles(&tiles)?);
    let one = median_ms(args.reps, || {
        let _ = std::hint::black_box(vision.llava.features(&base)?);
        Ok(())
    })?;
    let batched = median_ms(args.reps, || {
        let _ = std::hint::black_box(vision.encode_tiles(&tiles)?);
        Ok(())
    })?;
    let separate = median_ms(args.reps, || {
        for t in 0..count {
            let _ = std::hint::black_box(vision.llava.features(&tiles.f_narrow(0, t, 1)?)?);
        }
        Ok(())
    })?;
    println!("LLaVA-1.5, 1 tile, batch 1:              {one:9.1} ms");
    println!(
        "LLaVA-NeXT, {count} tiles, batch {count} (1 forward): {batched:9.1} ms  ({:.2}x one tile)",
        batched / one
    );
    println!(
        "the same {count} tiles, {count} forwards of batch 1: {separate:9.1} ms  ({:.2}x one tile)",
        separate / one
    );
    Ok(())
}

/// The median wall time of `reps` runs of `f`, in milliseconds.
fn median_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Writes `config.json` and `model.safetensors` of a random LLaVA-NeXT
/// vision side of CLIP ViT-L/14-336's shape (no language model).
fn write_random_vit_l(dir: &Path) -> Result<()> {
    let (vh, vi, layers, text) = (1024i64, 4096i64, 24i64, 4096i64);
    let config = json!({
        "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
        "image_token_index": 32000, "projector_hidden_act": "gelu",
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        "text_config": {"model_type": "llama", "hidden_size": text},
        "vision_config": {"hidden_size": vh, "intermediate_size": vi, "image_size": 336,
            "patch_size": 14, "num_attention_heads": 16, "num_hidden_layers": layers,
            "model_type": "clip_vision_model"}
    });
    std::fs::write(dir.join("config.json"), config.to_string())?;
    let opts = (Kind::Float, Device::Cpu);
    let rand = |shape: &[i64], std: f64| Tensor::randn(shape, opts) * std;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut add = |name: String, t: Tensor| tensors.push((name, t));
    let v = "vision_tower.vision_model";
    add(format!("{v}.embeddings.class_embedding"), rand(&[vh], 1.0));
    add(
        format!("{v}.embeddings.patch_embedding.weight"),
        rand(&[vh, 3, 14, 14], 0.02),
    );
    add(
        format!("{v}.embeddings.position_embedding.weight"),
        rand(&[577, vh], 1.0),
    );
    for n in ["pre_layrnorm", "post_layernorm"] {
        add(format!("{v}.{n}.weight"), Tensor::ones([vh], opts));
        add(format!("{v}.{n}.bias"), Tensor::zeros([vh], opts));
    }
    for l in 0..layers {
        let p = format!("{v}.encoder.layers.{l}");
        for n in ["layer_norm1", "layer_norm2"] {
            add(format!("{p}.{n}.weight"), Tensor::ones([vh], opts));
            add(format!("{p}.{n}.bias"), Tensor::zeros([vh], opts));
        }
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{p}.self_attn.{n}.weight"), rand(&[vh, vh], 0.03));
            add(format!("{p}.self_attn.{n}.bias"), rand(&[vh], 0.01));
        }
        add(format!("{p}.mlp.fc1.weight"), rand(&[vi, vh], 0.03));
        add(format!("{p}.mlp.fc1.bias"), rand(&[vi], 0.01));
        add(format!("{p}.mlp.fc2.weight"), rand(&[vh, vi], 0.015));
        add(format!("{p}.mlp.fc2.bias"), rand(&[vh], 0.01));
    }
    let m = "multi_modal_projector";
    add(format!("{m}.linear_1.weight"), rand(&[text, vh], 0.03));
    add(format!("{m}.linear_1.bias"), rand(&[text], 0.01));
    add(format!("{m}.linear_2.weight"), rand(&[text, text], 0.015));
    add(format!("{m}.linear_2.bias"), rand(&[text], 0.01));
    add("image_newline".into(), rand(&[text], 1.0));
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, dir.join("model.safetensors"))?;
    Ok(())
}

//! Writes the heatmap of an image's ViT [CLS] attention with DAMRO's top-k
//! outlier patches outlined, over the image as the model sees it.
//!
//! Run with: `scripts/libtorch-env.sh cargo run --release --example outliers -- --model DIR --image PATH --out PNG [--top-k K] [--device cpu|cuda]`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use damro::{AutoDecoder, ImageSource, ModelOptions};
use tch::Device;

const USAGE: &str =
    "usage: outliers --model DIR --image PATH --out PNG [--top-k K] [--device cpu|cuda]";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut image, mut out, mut k) = (None, None, None, None);
    let mut options = ModelOptions::cpu_f32();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--image" => image = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--top-k" => {
                k = Some(
                    value()?
                        .parse::<usize>()
                        .context("--top-k: a positive integer")?,
                )
            }
            "--device" => {
                options.device = match value()?.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    other => bail!("--device {other}: expected cpu or cuda"),
                }
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let model = model.with_context(|| format!("--model is required\n{USAGE}"))?;
    let image = image.with_context(|| format!("--image is required\n{USAGE}"))?;
    let out = out.with_context(|| format!("--out is required\n{USAGE}"))?;
    let decoder = AutoDecoder::load(&model, options)
        .with_context(|| format!("loading {}", model.display()))?;
    let k = match k {
        Some(k) => k,
        None => decoder.preset()?.outlier_k,
    };
    let outliers = decoder.write_outlier_heatmap(&ImageSource::File(image), k, &out)?;
    println!(
        "wrote {} (top-{k} outliers, selection order: {outliers:?})",
        out.display()
    );
    Ok(())
}

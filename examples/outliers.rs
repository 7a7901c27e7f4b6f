//! Writes the heatmap of an image's ViT [CLS] attention with DAMRO's top-k
//! outlier patches outlined, over the image as the model sees it
//! (LLaVA-NeXT: its base tile, where DAMRO takes the outliers from; with
//! `--per-tile`, one heatmap per tile).
//!
//! Run with: `scripts/libtorch-env.sh cargo run --release --example outliers -- --model DIR --image PATH --out PNG [--top-k K] [--per-tile] [--device cpu|cuda]`

#[path = "common/cli.rs"]
mod cli;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use damro::ImageSource;

/// Writes the [CLS]-attention heatmap of an image with the top-k outliers.
#[derive(Debug, Parser)]
#[command(name = "outliers")]
struct Args {
    #[command(flatten)]
    model: cli::ModelArgs,
    /// The image (PNG or JPEG).
    #[arg(long, value_name = "PATH")]
    image: PathBuf,
    /// Where the PNG goes (written atomically).
    #[arg(long, value_name = "PNG")]
    out: PathBuf,
    /// Outliers to outline [default: the model's preset].
    #[arg(long, value_parser = cli::positive)]
    top_k: Option<usize>,
    /// One heatmap per tile the ViT sees, written to `<stem>_tile<i>.png`
    /// beside --out (LLaVA-NeXT: tile 0 is the base tile, then the grid
    /// tiles row by row; other models have one tile).
    #[arg(long)]
    per_tile: bool,
}

fn main() -> std::process::ExitCode {
    cli::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let decoder = args.model.load()?;
    let k = match args.top_k {
        Some(k) => k,
        None => decoder.preset()?.outlier_k,
    };
    let image = ImageSource::File(args.image);
    if args.per_tile {
        for map in decoder.write_tile_outlier_heatmaps(&image, k, &args.out)? {
            println!(
                "wrote {} (tile {}, top-{k} outliers, selection order: {:?})",
                map.path.display(),
                map.tile,
                map.outliers
            );
        }
        return Ok(());
    }
    let outliers = decoder.write_outlier_heatmap(&image, k, &args.out)?;
    println!(
        "wrote {} (top-{k} outliers, selection order: {outliers:?})",
        args.out.display()
    );
    Ok(())
}

//! `analyze heatmap`: for one generated word or token, the decoder's
//! attention over the image tokens beside the ViT's \[CLS\] attention, on
//! the image the model saw, as one PNG (the paper's Figures 2 and 3). Both
//! panels outline the ViT's top outliers.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::{ArgGroup, Args};
use damro::analysis::token_metrics;
use damro::llm::PromptTemplate;
use damro::outlier::image::RgbImage;
use damro::outlier::{
    HeatmapOptions, PatchGrid, image_from_pixel_values, render_heatmap, save_png_atomic,
    side_by_side,
};
use damro::vision::preprocess::PreprocessorConfig;
use damro::{AutoDecoder, Generation, ImageSource, Mode, Request};
use damro_eval::analysis::pieces::{token_spans, visible_span};
use damro_eval::chair::words::tokenize_spans;

use crate::capture::{self, CaptureArgs, PAPER_PROMPT};
use crate::cli;

/// Pixels between the two panels.
const GAP: u32 = 8;

/// `heatmap`'s flags.
#[derive(Debug, Args)]
#[command(mut_arg("max_new_tokens", |a| a.default_value("512")))]
#[command(group(ArgGroup::new("which").required(true).args(["word", "token_index"])))]
pub struct HeatmapArgs {
    #[command(flatten)]
    model: cli::ModelArgs,
    /// The image (PNG or JPEG).
    #[arg(long, value_name = "PATH")]
    image: PathBuf,
    /// The prompt.
    #[arg(long, default_value = PAPER_PROMPT, value_parser = OsStringValueParser::new().try_map(utf8))]
    prompt: String,
    /// Prompt template: raw, llava_v1 or instructblip [default: the
    /// model's].
    #[arg(long)]
    template: Option<PromptTemplate>,
    /// The generated word (or words) to show, case-insensitive: the map
    /// of its first token.
    #[arg(long, value_parser = OsStringValueParser::new().try_map(utf8))]
    word: Option<String>,
    /// Which occurrence of --word (1: the first).
    #[arg(long, default_value_t = 1, requires = "word", value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    occurrence: usize,
    /// The generated token to show (0-based).
    #[arg(long)]
    token_index: Option<usize>,
    /// Where the PNG goes (left: the decoder's map, right: the ViT's).
    #[arg(long, value_name = "PNG", default_value = "attention_heatmap.png")]
    out: PathBuf,
    /// The ViT's top outliers outlined on both panels.
    #[arg(long, default_value_t = damro::analysis::INFLUENCE_TOP)]
    outliers: usize,
    #[command(flatten)]
    decode: cli::DecodeArgs,
    #[command(flatten)]
    capture: CaptureArgs,
}

fn utf8(value: OsString) -> Result<String, String> {
    value
        .into_string()
        .map_err(|v| format!("{v:?} is not UTF-8 text"))
}

/// The token that starts occurrence `occurrence` of `word` in the text of
/// `pieces` (whole words, case-insensitive).
fn token_of_word(pieces: &[String], word: &str, occurrence: usize) -> Result<usize> {
    let text = pieces.concat();
    let words = tokenize_spans(&text);
    let wanted: Vec<String> = tokenize_spans(word)
        .into_iter()
        .map(|t| t.text.to_lowercase())
        .collect();
    if wanted.is_empty() {
        bail!("--word `{word}` has no word in it");
    }
    let span = words
        .windows(wanted.len())
        .filter(|w| {
            w.iter()
                .zip(&wanted)
                .all(|(t, q)| t.text.to_lowercase() == *q)
        })
        .nth(occurrence - 1)
        .map(|w| w[0].span.start..w[w.len() - 1].span.end)
        .with_context(|| {
            format!(
                "--word `{word}` (occurrence {occurrence}) is not in the generated text {text:?}"
            )
        })?;
    token_spans(pieces)
        .iter()
        .position(|t| {
            visible_span(&text, t).is_some_and(|v| v.start < span.end && span.start < v.end)
        })
        .with_context(|| format!("no token covers `{word}` in {text:?}"))
}

/// The image the model saw (LLaVA-NeXT: its base tile), as 8-bit RGB.
fn model_view(decoder: &AutoDecoder, image: &ImageSource) -> Result<RgbImage> {
    let options = decoder.options();
    let (pixels, config): (_, &PreprocessorConfig) = match decoder {
        AutoDecoder::Llava(d) => (
            image.pixel_values(d.processor(), options.kind, options.device)?,
            d.processor().config(),
        ),
        AutoDecoder::LlavaNext(d) => (
            d.tile_pixels(image)?.0.f_narrow(0, 0, 1)?,
            &d.processor().config().tile_pipeline,
        ),
        other => bail!("no image grid for the {} model", other.family()),
    };
    let pixels = pixels
        .f_to_kind(tch::Kind::Float)?
        .f_to_device(tch::Device::Cpu)?;
    let (mean, std) = match &config.normalize {
        Some(n) => (n.mean.map(|v| v as f32), n.std.map(|v| v as f32)),
        None => ([0.0; 3], [1.0; 3]),
    };
    // Undo the normalisation and the rescale in one affine map.
    let scale = config.rescale_factor.unwrap_or(1.0) as f32 * 255.0;
    Ok(image_from_pixel_values(
        &pixels,
        mean.map(|m| m / scale),
        std.map(|s| s / scale),
    )?)
}

/// The indices of the `k` highest scores, highest first (ties to the
/// lower index).
fn top_indices(scores: &[f32], k: usize) -> Vec<i64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.into_iter().take(k).map(|i| i as i64).collect()
}

/// Generates the caption of the image with the attention captured.
fn caption(args: &HeatmapArgs, decoder: &AutoDecoder) -> Result<Generation> {
    let template = args.template.unwrap_or_else(|| decoder.default_template());
    let mut config = args.decode.config(Mode::Plain);
    config.attention = Some(args.capture.capture(decoder)?);
    let image = ImageSource::File(args.image.clone());
    let request = Request::new(image, &args.prompt, template);
    damro::generate(decoder, &[request], &config)?
        .pop()
        .context("the model returned no output")
}

/// `heatmap`.
pub fn heatmap(args: HeatmapArgs) -> Result<()> {
    let decoder = args.model.load()?;
    if let AutoDecoder::InstructBlip(_) = decoder {
        bail!(
            "InstructBLIP's image tokens are the Q-Former's query outputs, not ViT patches: there \
             is no image grid to draw the decoder's attention on (`analyze run` records each \
             token's attention over the query tokens)"
        );
    }
    let generation = caption(&args, &decoder)?;
    capture::check_attention(&decoder, &generation)?;
    let Some(cls) = generation.cls_attention.as_deref() else {
        bail!("{}", capture::raw_attention_note(&decoder));
    };
    let pieces = capture::pieces(&decoder, &generation.token_ids)?;
    let index = match (&args.word, args.token_index) {
        (Some(word), _) => token_of_word(&pieces, word, args.occurrence)?,
        (None, Some(i)) if i < pieces.len() => i,
        (None, Some(i)) => bail!(
            "--token-index {i}: only {} tokens were generated",
            pieces.len()
        ),
        (None, None) => bail!("give --word or --token-index"),
    };
    let map = &generation.attention[index];
    if map.len() != cls.len() {
        bail!("{} image tokens but {} ViT patches", map.len(), cls.len());
    }
    let grid = PatchGrid::square(cls.len())?;
    let picture = model_view(&decoder, &ImageSource::File(args.image.clone()))?;
    let outliers = top_indices(cls, args.outliers);
    let options = HeatmapOptions::default();
    let panels = [
        render_heatmap(&picture, map, grid, &outliers, &options)?,
        render_heatmap(&picture, cls, grid, &outliers, &options)?,
    ];
    save_png_atomic(&side_by_side(&panels, GAP)?, &args.out)
        .with_context(|| format!("writing --out `{}`", args.out.display()))?;

    let metrics = token_metrics(&generation, args.capture.max_i, args.capture.influence_top)?;
    let m = &metrics[index];
    println!("caption: {:?}", pieces.concat());
    println!(
        "token {index} ({:?}, id {})",
        pieces[index], generation.token_ids[index]
    );
    let h: Vec<String> = m.overlap.iter().map(|v| format!("{v:.3}")).collect();
    println!("H_1..H_{}: {}", m.overlap.len(), h.join(" "));
    println!("F (top {}): {:.4}", args.capture.influence_top, m.influence);
    println!(
        "heatmap in {} (left: the decoder's attention for this token; right: the ViT's [CLS] attention; outlined: the ViT's top {} outliers)",
        args.out.display(),
        outliers.len()
    );
    Ok(())
}

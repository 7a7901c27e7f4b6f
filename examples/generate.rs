//! Generates an answer about an image with plain decoding, contrastive
//! decoding (DAMRO by default, or another contrast view), or both side by
//! side.
//!
//! Run with: `scripts/libtorch-env.sh cargo run --release --example generate -- --model DIR --image PATH --prompt TEXT [--mode plain|damro|both] [--contrast damro|vcd|no-image|cutoff-only] [...]`
//! (`--help` lists every flag).
//!
//! The contrast parameters default to the authors' preset for the model
//! (LLaVA-1.5: alpha 2, beta 0.1, k 10; InstructBLIP: 0.5 / 0.1 / 4; VCD:
//! alpha 1). Decoding defaults to greedy; `--seed S` samples from the
//! (contrastive) distribution as the reference does. With `--json` one JSON
//! object per mode is printed, one per line.

#[path = "common/cli.rs"]
mod cli;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use damro::llm::PromptTemplate;
use damro::{Benchmark, Generation, ImageSource, Mode, Request, generate, generate_streaming};

/// Which decodings run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RunMode {
    /// The full branch alone.
    Plain,
    /// Contrastive decoding with the --contrast view.
    #[value(alias = "contrast")]
    Damro,
    /// Both, side by side.
    Both,
}

/// Generates an answer about an image with plain and/or contrastive decoding.
#[derive(Debug, Parser)]
#[command(name = "generate")]
struct Args {
    #[command(flatten)]
    model: cli::ModelArgs,
    /// The image (PNG or JPEG).
    #[arg(long, value_name = "PATH")]
    image: PathBuf,
    /// The question (or the whole text with --template raw).
    #[arg(long, value_parser = cli::utf8_text())]
    prompt: String,
    /// Prompt template: raw, llava_v1 or instructblip [default: the model's].
    #[arg(long)]
    template: Option<PromptTemplate>,
    /// plain, damro (contrastive decoding with --contrast) or both.
    #[arg(long, value_enum, default_value_t = RunMode::Damro)]
    mode: RunMode,
    #[command(flatten)]
    contrast: cli::ContrastArgs,
    #[command(flatten)]
    decode: cli::DecodeArgs,
    /// One JSON object per mode instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    // One or two generations per run, each freeing what the next needs.
    damro::memory::retain_freed_memory();
    cli::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let decoder = args.model.load()?;
    let template = args.template.unwrap_or_else(|| decoder.default_template());
    let contrastive = args.contrast.mode(&decoder, Benchmark::Pope)?;
    let modes = match args.mode {
        RunMode::Plain => vec![Mode::Plain],
        RunMode::Damro => vec![contrastive],
        RunMode::Both => vec![Mode::Plain, contrastive],
    };
    let mut results: Vec<(String, Generation)> = Vec::new();
    for mode in modes {
        let name = mode.name().to_string();
        let settings = cli::ContrastArgs::describe(&mode);
        let config = args.decode.config(mode);
        let request = Request::new(
            ImageSource::File(args.image.clone()),
            &args.prompt,
            template,
        );
        let stream = !args.json && args.mode != RunMode::Both;
        let out = if stream {
            use std::io::Write;
            let mut started = false;
            let out = generate_streaming(&decoder, &[request], &config, &mut |event| {
                if !started {
                    // The prefix only once a token exists: a failed run
                    // prints nothing on stdout.
                    print!("[{name}] ");
                    started = true;
                }
                print!("{}", event.text_delta);
                let _ = std::io::stdout().flush();
            })?;
            if !started {
                print!("[{name}] ");
            }
            println!();
            out
        } else {
            generate(&decoder, &[request], &config)?
        };
        let generation = out.into_iter().next().context("no output")?;
        if args.json {
            let value = serde_json::json!({
                "mode": name,
                "model": decoder.family(),
                "settings": settings,
                "prompt_ids": generation.prompt_ids,
                "token_ids": generation.token_ids,
                "text": generation.text,
                "outliers": generation.outliers,
                "finish": format!("{:?}", generation.finish),
                "seed": args.decode.seed,
            });
            println!("{value}");
        }
        results.push((name, generation));
    }
    if !args.json && results.len() == 2 {
        side_by_side(&results);
    }
    Ok(())
}

/// Prints plain and contrastive output in two columns.
fn side_by_side(results: &[(String, Generation)]) {
    const WIDTH: usize = 48;
    let wrap = |text: &str| -> Vec<String> {
        let mut lines = vec![String::new()];
        for word in text.split_whitespace() {
            let last = lines.last_mut().map(|l| l.chars().count()).unwrap_or(0);
            if last > 0 && last + 1 + word.chars().count() > WIDTH {
                lines.push(String::new());
            }
            let line = lines.last_mut().expect("at least one line");
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines
    };
    let columns: Vec<Vec<String>> = results.iter().map(|(_, g)| wrap(&g.text)).collect();
    println!(
        "{:<WIDTH$} | {}",
        "plain",
        results.get(1).map_or("", |r| r.0.as_str())
    );
    println!("{}-+-{}", "-".repeat(WIDTH), "-".repeat(WIDTH));
    let rows = columns.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..rows {
        let cell = |c: usize| columns[c].get(i).map(String::as_str).unwrap_or("");
        println!("{:<WIDTH$} | {}", cell(0), cell(1));
    }
    if let Some((_, g)) = results.get(1).filter(|(_, g)| !g.outliers.is_empty()) {
        println!(
            "\nDAMRO outlier patches (selection order): {:?}",
            g.outliers
        );
    }
}

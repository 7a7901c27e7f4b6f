//! Generates an answer about an image with plain decoding, DAMRO, or both
//! side by side.
//!
//! Run with: `scripts/libtorch-env.sh cargo run --release --example generate -- --model DIR --image PATH --prompt TEXT [--template raw|llava_v1|instructblip] [--mode plain|damro|both] [--alpha A --beta B --top-k K] [--max-new-tokens N] [--seed S | --greedy] [--device cpu|cuda] [--dtype f32|f16|bf16] [--tokenizer as_written|transformers5] [--preprocess authors|transformers5|torchvision] [--indexing reference|corrected] [--sequential] [--json]`
//!
//! DAMRO's alpha/beta/k default to the authors' preset for the model
//! (LLaVA-1.5: 2 / 0.1 / 10; InstructBLIP: 0.5 / 0.1 / 4). Decoding defaults
//! to greedy; `--seed S` samples from the (contrastive) distribution as the
//! reference does. With `--json` one JSON object per mode is printed, one
//! per line.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use damro::llm::{PromptTemplate, TokenizerBehavior};
use damro::vision::preprocess::ProcessorOptions;
use damro::{
    AutoDecoder, BranchExecution, DamroSettings, Generation, GenerationConfig, ImageSource,
    Indexing, Mode, ModelOptions, Request, generate, generate_streaming,
};
use tch::{Device, Kind};

#[derive(Debug)]
struct Args {
    model: PathBuf,
    image: PathBuf,
    prompt: String,
    template: Option<PromptTemplate>,
    modes: Vec<&'static str>,
    alpha: Option<f64>,
    beta: Option<f64>,
    top_k: Option<usize>,
    max_new_tokens: usize,
    seed: Option<u64>,
    device: Device,
    kind: Kind,
    tokenizer: TokenizerBehavior,
    preprocessing: ProcessorOptions,
    indexing: Indexing,
    sequential: bool,
    json: bool,
}

const USAGE: &str = "usage: generate --model DIR --image PATH --prompt TEXT [--template raw|llava_v1|instructblip] [--mode plain|damro|both] [--alpha A --beta B --top-k K] [--max-new-tokens N] [--seed S | --greedy] [--device cpu|cuda] [--dtype f32|f16|bf16] [--tokenizer as_written|transformers5] [--preprocess authors|transformers5|torchvision] [--indexing reference|corrected] [--sequential] [--json]";

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut image, mut prompt) = (None, None, None);
    let mut out = Args {
        model: PathBuf::new(),
        image: PathBuf::new(),
        prompt: String::new(),
        template: None,
        modes: vec!["damro"],
        alpha: None,
        beta: None,
        top_k: None,
        max_new_tokens: 64,
        seed: None,
        device: Device::cuda_if_available(),
        kind: Kind::Float,
        tokenizer: TokenizerBehavior::AsWritten,
        preprocessing: ProcessorOptions::default(),
        indexing: Indexing::Reference,
        sequential: false,
        json: false,
    };
    let mut dtype_given = false;
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--image" => image = Some(PathBuf::from(value()?)),
            "--prompt" => prompt = Some(value()?),
            "--template" => out.template = Some(value()?.parse()?),
            "--mode" => {
                out.modes = match value()?.as_str() {
                    "plain" => vec!["plain"],
                    "damro" => vec!["damro"],
                    "both" => vec!["plain", "damro"],
                    other => bail!("--mode {other}: expected plain, damro or both"),
                }
            }
            "--alpha" => out.alpha = Some(value()?.parse().context("--alpha: a number")?),
            "--beta" => out.beta = Some(value()?.parse().context("--beta: a number")?),
            "--top-k" => out.top_k = Some(value()?.parse().context("--top-k: a positive integer")?),
            "--max-new-tokens" => {
                out.max_new_tokens = value()?.parse().context("--max-new-tokens: an integer")?
            }
            "--seed" => out.seed = Some(value()?.parse().context("--seed: an integer")?),
            "--greedy" => out.seed = None,
            "--device" => {
                out.device = match value()?.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => {
                        if !tch::Cuda::is_available() {
                            bail!("--device cuda: no CUDA device is available");
                        }
                        Device::Cuda(0)
                    }
                    other => bail!("--device {other}: expected cpu or cuda"),
                }
            }
            "--dtype" => {
                dtype_given = true;
                out.kind = match value()?.as_str() {
                    "f32" => Kind::Float,
                    "f16" => Kind::Half,
                    "bf16" => Kind::BFloat16,
                    other => bail!("--dtype {other}: expected f32, f16 or bf16"),
                }
            }
            "--tokenizer" => out.tokenizer = value()?.parse()?,
            "--preprocess" => {
                out.preprocessing = match value()?.as_str() {
                    "authors" => ProcessorOptions::default(),
                    "transformers5" => ProcessorOptions::transformers5_pil(),
                    "torchvision" => ProcessorOptions::transformers5_torchvision(),
                    other => bail!(
                        "--preprocess {other}: expected authors, transformers5 or torchvision"
                    ),
                }
            }
            "--indexing" => {
                out.indexing = match value()?.as_str() {
                    "reference" => Indexing::Reference,
                    "corrected" => Indexing::Corrected,
                    other => bail!("--indexing {other}: expected reference or corrected"),
                }
            }
            "--sequential" => out.sequential = true,
            "--json" => out.json = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if !dtype_given && out.device.is_cuda() {
        out.kind = Kind::Half;
    }
    out.model = model.with_context(|| format!("--model is required\n{USAGE}"))?;
    out.image = image.with_context(|| format!("--image is required\n{USAGE}"))?;
    out.prompt = prompt.with_context(|| format!("--prompt is required\n{USAGE}"))?;
    Ok(out)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let options = ModelOptions {
        kind: args.kind,
        device: args.device,
        tokenizer: args.tokenizer,
        preprocessing: args.preprocessing,
    };
    let decoder = AutoDecoder::load(&args.model, options)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let decoder = match decoder {
        AutoDecoder::InstructBlip(d) => {
            AutoDecoder::InstructBlip(Box::new(d.with_indexing(args.indexing)))
        }
        other => other,
    };
    let template = args.template.unwrap_or_else(|| decoder.default_template());
    let preset = decoder.preset()?;
    let damro = DamroSettings::new(
        args.alpha.unwrap_or(preset.params.alpha()),
        args.beta.unwrap_or(preset.params.beta()),
        args.top_k.unwrap_or(preset.outlier_k),
    )?;

    let mut results: Vec<(&str, Generation)> = Vec::new();
    for &mode_name in &args.modes {
        let mode = if mode_name == "plain" {
            Mode::Plain
        } else {
            Mode::Damro(damro)
        };
        let mut config = match args.seed {
            Some(seed) => GenerationConfig::sampled(mode, args.max_new_tokens, seed),
            None => GenerationConfig::greedy(mode, args.max_new_tokens),
        };
        if args.sequential {
            config.branches = BranchExecution::Sequential;
        }
        let request = Request::new(
            ImageSource::File(args.image.clone()),
            &args.prompt,
            template,
        );
        let stream = !args.json && args.modes.len() == 1;
        let out = if stream {
            use std::io::Write;
            print!("[{mode_name}] ");
            let out = generate_streaming(&decoder, &[request], &config, &mut |event| {
                print!("{}", event.text_delta);
                let _ = std::io::stdout().flush();
            })?;
            println!();
            out
        } else {
            generate(&decoder, &[request], &config)?
        };
        let generation = out.into_iter().next().context("no output")?;
        results.push((mode_name, generation));
    }

    for (mode_name, g) in &results {
        if args.json {
            let (alpha, beta, k) = if *mode_name == "damro" {
                (
                    Some(damro.params.alpha()),
                    Some(damro.params.beta()),
                    Some(damro.outlier_k),
                )
            } else {
                (None, None, None)
            };
            let value = serde_json::json!({
                "mode": mode_name,
                "model": decoder.family(),
                "prompt_ids": g.prompt_ids,
                "token_ids": g.token_ids,
                "text": g.text,
                "outliers": g.outliers,
                "finish": format!("{:?}", g.finish),
                "alpha": alpha,
                "beta": beta,
                "top_k": k,
                "seed": args.seed,
            });
            println!("{value}");
        }
    }
    if !args.json && results.len() == 2 {
        side_by_side(&results);
    }
    Ok(())
}

/// Prints plain and DAMRO output in two columns.
fn side_by_side(results: &[(&str, Generation)]) {
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
    println!("{:<WIDTH$} | DAMRO", "plain");
    println!("{}-+-{}", "-".repeat(WIDTH), "-".repeat(WIDTH));
    let rows = columns.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..rows {
        let cell = |c: usize| columns[c].get(i).map(String::as_str).unwrap_or("");
        println!("{:<WIDTH$} | {}", cell(0), cell(1));
    }
    if let Some((_, g)) = results.get(1) {
        println!(
            "\nDAMRO outlier patches (selection order): {:?}",
            g.outliers
        );
    }
}

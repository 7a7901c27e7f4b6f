//! Command-line pieces shared by the examples (each includes this file with
//! `#[path = "common/cli.rs"] mod cli;`): how a model is loaded, which
//! contrast view runs, how tokens are chosen. Parsed with clap, so paths
//! stay `PathBuf` (any bytes a Linux file name may hold) and a bad or
//! unknown flag is an error naming it, never a panic.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};
use damro::llm::TokenizerBehavior;
use damro::sampler::DamroParams;
use damro::vision::preprocess::ProcessorOptions;
use damro::{
    AutoDecoder, Benchmark, BranchExecution, DamroSettings, GenerationConfig, Indexing, Mode,
    ModelOptions, VcdNoise, VcdSettings,
};
use tch::{Device, Kind};

/// Ends a command: on error prints `error: ` and the whole chain of causes
/// on one line per cause (no backtrace, whatever `RUST_BACKTRACE` says) and
/// exits with status 1.
pub fn exit_code(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A text argument (a prompt): any bytes are accepted by the parser, and
/// bytes that are not UTF-8 are an error naming the flag, not clap's
/// anonymous "invalid UTF-8 in one or more arguments".
pub fn utf8_text() -> impl clap::builder::TypedValueParser<Value = String> {
    clap::builder::OsStringValueParser::new().try_map(|text: std::ffi::OsString| {
        text.into_string().map_err(|bytes| {
            format!(
                "not valid UTF-8 text: `{}` (undecodable bytes shown as U+FFFD)",
                bytes.to_string_lossy()
            )
        })
    })
}

/// A count of at least 1 (e.g. `--top-k`): clap then names the flag in
/// the error.
pub fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{text}`: {e}")),
    }
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<Device, String> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => text
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("`{text}`: expected cpu, cuda or cuda:N")),
    }
}

/// Weight and activation dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

/// Which processor the images go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preprocess {
    /// transformers 4.43's PIL processor, as the authors ran it.
    Authors,
    /// transformers 5.23's PIL backend.
    Transformers5,
    /// transformers 5.23's torchvision backend.
    Torchvision,
}

/// InstructBLIP's outlier indexing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IndexingArg {
    /// As the reference code gathers (one row before each outlier).
    Reference,
    /// The outlier patches themselves.
    Corrected,
}

/// LLaVA-NeXT's grid order of non-square tile grids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GridLayoutArg {
    /// transformers 4.43's (rows and columns swapped), as the authors ran it.
    #[value(name = "transformers4.43")]
    Transformers443,
    /// transformers 4.44+'s corrected order.
    Corrected,
}

/// How a model directory is loaded.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// HuggingFace model directory (config.json, safetensors, tokenizer).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// cpu, cuda or cuda:N [default: cuda when a GPU is visible, else cpu].
    #[arg(long, value_parser = parse_device)]
    pub device: Option<Device>,
    /// Weight dtype [default: f16 on a GPU, f32 on the CPU].
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// How tokenizer.json is read: as_written (transformers 4.x, the
    /// authors') or transformers5.
    #[arg(long, default_value = "as_written")]
    pub tokenizer: TokenizerBehavior,
    /// Image preprocessing.
    #[arg(long, value_enum, default_value_t = Preprocess::Authors)]
    pub preprocess: Preprocess,
    /// InstructBLIP's outlier indexing.
    #[arg(long, value_enum, default_value_t = IndexingArg::Reference)]
    pub indexing: IndexingArg,
    /// LLaVA-NeXT's tile grid order.
    #[arg(long, value_enum, default_value_t = GridLayoutArg::Transformers443)]
    pub grid_layout: GridLayoutArg,
}

impl ModelArgs {
    /// The load options these flags describe (the device is checked).
    pub fn options(&self) -> Result<ModelOptions> {
        let device = match self.device {
            Some(d) => d,
            None => damro::cuda::cuda_if_available(),
        };
        damro::cuda::check_device(device).context("--device")?;
        let kind = match (self.dtype, device.is_cuda()) {
            (Some(Dtype::F32), _) | (None, false) => Kind::Float,
            (Some(Dtype::F16), _) | (None, true) => Kind::Half,
            (Some(Dtype::Bf16), _) => Kind::BFloat16,
        };
        let mut options = ModelOptions::cpu_f32().on(device, kind);
        options.tokenizer = self.tokenizer;
        options.preprocessing = match self.preprocess {
            Preprocess::Authors => ProcessorOptions::default(),
            Preprocess::Transformers5 => ProcessorOptions::transformers5_pil(),
            Preprocess::Torchvision => ProcessorOptions::transformers5_torchvision(),
        };
        Ok(options)
    }

    /// Loads the model the directory holds.
    pub fn load(&self) -> Result<AutoDecoder> {
        let decoder = AutoDecoder::load(&self.model, self.options()?)
            .with_context(|| format!("loading --model {}", self.model.display()))?;
        Ok(match (decoder, self.indexing, self.grid_layout) {
            (AutoDecoder::InstructBlip(d), IndexingArg::Corrected, _) => {
                AutoDecoder::InstructBlip(Box::new(d.with_indexing(Indexing::Corrected)))
            }
            (AutoDecoder::LlavaNext(d), _, GridLayoutArg::Corrected) => AutoDecoder::LlavaNext(
                Box::new(d.with_grid_layout(damro::vision::anyres_pack::GridLayout::Corrected)),
            ),
            (other, _, _) => other,
        })
    }
}

/// The second branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContrastKind {
    /// DAMRO: the ViT's top-k outlier tokens.
    Damro,
    /// VCD: diffusion-noised pixels.
    Vcd,
    /// The prompt without image tokens.
    NoImage,
    /// No second branch: only the plausibility cutoff.
    CutoffOnly,
}

/// Which contrast view runs, with its parameters.
#[derive(Debug, Args)]
pub struct ContrastArgs {
    /// The contrast view of contrastive decoding.
    #[arg(long, value_enum, default_value_t = ContrastKind::Damro)]
    pub contrast: ContrastKind,
    /// Contrast weight [default: the authors' preset for the model (DAMRO,
    /// no-image), 1 for VCD].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Plausibility ratio [default: the preset's, 0.1].
    #[arg(long)]
    pub beta: Option<f64>,
    /// DAMRO's number of outlier tokens [default: the preset's].
    #[arg(long, value_parser = positive)]
    pub top_k: Option<usize>,
    /// VCD's diffusion step (0..1000).
    #[arg(long, default_value_t = 500)]
    pub noise_step: usize,
    /// VCD's noise seed.
    #[arg(long, default_value_t = 0)]
    pub noise_seed: u64,
}

impl ContrastArgs {
    /// The contrastive mode for `decoder`, defaults from the authors'
    /// preset for `benchmark`.
    pub fn mode(&self, decoder: &AutoDecoder, benchmark: Benchmark) -> Result<Mode> {
        let preset = decoder.preset_for(benchmark)?;
        let beta = self.beta.unwrap_or(preset.params.beta());
        let params = |default_alpha: f64| -> Result<DamroParams> {
            DamroParams::new(self.alpha.unwrap_or(default_alpha), beta).context("--alpha/--beta")
        };
        Ok(match self.contrast {
            ContrastKind::Damro => Mode::Damro(
                DamroSettings::new(
                    self.alpha.unwrap_or(preset.params.alpha()),
                    beta,
                    self.top_k.unwrap_or(preset.outlier_k),
                )
                .context("--alpha/--beta/--top-k")?,
            ),
            ContrastKind::Vcd => Mode::Vcd(VcdSettings {
                params: params(1.0)?,
                noise: VcdNoise::new(self.noise_step, self.noise_seed).context("--noise-step")?,
            }),
            ContrastKind::NoImage => Mode::NoImage(params(preset.params.alpha())?),
            ContrastKind::CutoffOnly => Mode::CutoffOnly(params(0.0)?),
        })
    }

    /// The view's parameters, for records and metrics files.
    pub fn describe(mode: &Mode) -> serde_json::Value {
        match mode {
            Mode::Damro(s) => serde_json::json!({
                "contrast": "damro", "alpha": s.params.alpha(), "beta": s.params.beta(),
                "top_k": s.outlier_k,
            }),
            Mode::Vcd(s) => serde_json::json!({
                "contrast": "vcd", "alpha": s.params.alpha(), "beta": s.params.beta(),
                "noise_step": s.noise.step, "noise_seed": s.noise.seed,
            }),
            Mode::NoImage(p) => serde_json::json!({
                "contrast": "no-image", "alpha": p.alpha(), "beta": p.beta(),
            }),
            Mode::CutoffOnly(p) => serde_json::json!({"contrast": "cutoff-only", "beta": p.beta()}),
            other => serde_json::json!({"contrast": other.name()}),
        }
    }
}

/// How tokens are chosen and how many.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// New tokens at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sample from the (contrastive) distribution with this seed.
    #[arg(long, conflicts_with = "greedy")]
    pub seed: Option<u64>,
    /// Greedy decoding (the default when no --seed is given).
    #[arg(long)]
    pub greedy: bool,
    /// Run the branches as two forwards per step instead of one batch.
    #[arg(long)]
    pub sequential: bool,
}

impl DecodeArgs {
    /// The generation config for `mode`.
    pub fn config(&self, mode: Mode) -> GenerationConfig {
        let mut config = match self.seed {
            Some(seed) => GenerationConfig::sampled(mode, self.max_new_tokens, seed),
            None => GenerationConfig::greedy(mode, self.max_new_tokens),
        };
        if self.sequential {
            config.branches = BranchExecution::Sequential;
        }
        config
    }
}

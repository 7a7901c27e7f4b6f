//! POPE and CHAIR from the command line: run a model over a benchmark's
//! questions (resumable, shardable, with a progress bar), score answer
//! files, merge shards.
//!
//! Run with: `scripts/libtorch-env.sh cargo run --release --example eval -- <command> ...`
//!
//! Commands:
//! - `pope-run --model DIR --questions FILE --images DIR --answers FILE [--mode plain|damro] [--alpha A --beta B --top-k K] [--seed S | --greedy] [--max-new-tokens N] [--shard i/N] [--limit N] [--device cpu|cuda] [--dtype f32|f16|bf16] [--model-id ID] [--metrics FILE]`
//!   answers every question of the shard not yet in the answers file
//!   (`--shard i/N` writes `answers.shard-i-of-N.jsonl`), then, when the
//!   whole set is answered, scores it. DAMRO settings default to the
//!   authors' preset for the model; decoding defaults to sampling with seed
//!   42 as the authors ran it (each question from a generator seeded with
//!   the seed, so results do not depend on sharding or resuming).
//! - `pope-score --questions FILE --answers FILE [--metrics FILE]`
//! - `pope-merge --questions FILE --out FILE SHARD_FILE...`
//! - `chair-run --model DIR --images DIR --answers FILE [--num-images N] [--prompt TEXT] [...as pope-run]`
//!   captions the COCO images of a folder (ids from the file names, sorted;
//!   resumable and shardable like `pope-run`), writing records `chair` reads.
//! - `chair --captions FILE --synonyms FILE --instances FILE [--instances FILE ...] [--coco-captions FILE ...] [--details FILE] [--metrics FILE]`

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use damro::llm::PromptTemplate;
use damro::{
    AutoDecoder, Benchmark, DamroSettings, GenerationConfig, ImageSource, Mode, ModelOptions,
    Request, generate,
};
use damro_eval::chair::{self, ChairEvaluator, GroundTruth};
use damro_eval::{BarProgress, RunOptions, Shard, merge_answers, pope, runner, to_json_pretty};
use tch::{Device, Kind};

/// `--flag value` pairs and bare arguments.
struct Flags {
    values: HashMap<String, Vec<String>>,
    switches: Vec<String>,
    rest: Vec<String>,
}

impl Flags {
    fn parse(args: impl Iterator<Item = String>, switches: &[&str]) -> Result<Self> {
        let mut out = Flags {
            values: HashMap::new(),
            switches: Vec::new(),
            rest: Vec::new(),
        };
        let mut args = args.peekable();
        while let Some(a) = args.next() {
            if let Some(name) = a.strip_prefix("--") {
                if switches.contains(&name) {
                    out.switches.push(name.to_string());
                } else {
                    let v = args
                        .next()
                        .with_context(|| format!("--{name} needs a value"))?;
                    out.values.entry(name.to_string()).or_default().push(v);
                }
            } else {
                out.rest.push(a);
            }
        }
        Ok(out)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn all(&self, name: &str) -> Vec<PathBuf> {
        self.values
            .get(name)
            .map(|v| v.iter().map(PathBuf::from).collect())
            .unwrap_or_default()
    }

    fn need(&self, name: &str) -> Result<&str> {
        self.get(name)
            .with_context(|| format!("--{name} is required"))
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| anyhow::anyhow!("--{name} {v}: {e}"))
            })
            .transpose()
    }

    fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

fn write_metrics(path: Option<&str>, json: &str) -> Result<()> {
    if let Some(path) = path {
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, json).with_context(|| format!("writing {tmp}"))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {path}"))?;
        println!("metrics written to {path}");
    }
    Ok(())
}

/// The model, its generation config and the mode's name, from the flags
/// shared by `pope-run` and `chair-run`.
fn load_model(
    flags: &Flags,
    default_max_new: usize,
    benchmark: Benchmark,
) -> Result<(AutoDecoder, GenerationConfig, String, PathBuf)> {
    let device = match flags.get("device").unwrap_or(if tch::Cuda::is_available() {
        "cuda"
    } else {
        "cpu"
    }) {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => bail!("--device {other}: expected cpu or cuda"),
    };
    let kind = match flags.get("dtype") {
        None if device.is_cuda() => Kind::Half,
        None | Some("f32") => Kind::Float,
        Some("f16") => Kind::Half,
        Some("bf16") => Kind::BFloat16,
        Some(other) => bail!("--dtype {other}: expected f32, f16 or bf16"),
    };
    let model_dir = PathBuf::from(flags.need("model")?);
    let decoder = AutoDecoder::load(&model_dir, ModelOptions::cpu_f32().on(device, kind))
        .with_context(|| format!("loading {}", model_dir.display()))?;
    let preset = decoder.preset_for(benchmark)?;
    let mode_name = flags.get("mode").unwrap_or("damro").to_string();
    let mode = match mode_name.as_str() {
        "plain" => Mode::Plain,
        "damro" => Mode::Damro(DamroSettings::new(
            flags.parsed("alpha")?.unwrap_or(preset.params.alpha()),
            flags.parsed("beta")?.unwrap_or(preset.params.beta()),
            flags.parsed("top-k")?.unwrap_or(preset.outlier_k),
        )?),
        other => bail!("--mode {other}: expected plain or damro"),
    };
    let max_new: usize = flags.parsed("max-new-tokens")?.unwrap_or(default_max_new);
    let config = if flags.has("greedy") {
        GenerationConfig::greedy(mode, max_new)
    } else {
        GenerationConfig::sampled(mode, max_new, flags.parsed("seed")?.unwrap_or(42))
    };
    Ok((decoder, config, mode_name, model_dir))
}

/// Run options from the shared flags.
fn run_options(flags: &Flags, model_dir: &Path, mode_name: &str) -> Result<RunOptions> {
    let model_id = flags
        .get("model-id")
        .map(str::to_string)
        .unwrap_or_else(|| {
            model_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let answers = PathBuf::from(flags.need("answers")?);
    let mut options = RunOptions::new(&answers, flags.need("images")?, model_id);
    options.mode = Some(mode_name.to_string());
    if let Some(shard) = flags.get("shard") {
        options.shard = shard.parse::<Shard>()?;
        options.answers = options.shard.file_name(&answers);
    }
    options.max_records = flags.parsed("limit")?;
    Ok(options)
}

/// The answer function: one generation per job, the job's prompt in the
/// model's template.
fn answerer<'a>(
    decoder: &'a AutoDecoder,
    config: &'a GenerationConfig,
) -> impl FnMut(&runner::Job, &Path) -> std::result::Result<String, String> + 'a {
    let template: PromptTemplate = decoder.default_template();
    move |job: &runner::Job, image: &Path| {
        let request = Request::new(
            ImageSource::File(image.to_path_buf()),
            &job.prompt,
            template,
        );
        generate(decoder, &[request], config)
            .map(|out| out.into_iter().next().map(|g| g.text).unwrap_or_default())
            .map_err(|e| e.to_string())
    }
}

fn pope_run(flags: &Flags) -> Result<()> {
    let questions = pope::read_questions(Path::new(flags.need("questions")?))?;
    let (decoder, config, mode_name, model_dir) = load_model(flags, 16, Benchmark::Pope)?;
    let options = run_options(flags, &model_dir, &mode_name)?;
    let mut progress = BarProgress::new(format!("POPE {mode_name}"));
    let summary = runner::run_pope(
        &questions,
        &options,
        answerer(&decoder, &config),
        &mut progress,
    )?;
    println!("{summary}");
    if options.shard == Shard::ALL && summary.is_complete() {
        let report = pope::score::score(&questions, &pope::read_answers(&options.answers)?);
        println!("{report}");
        write_metrics(flags.get("metrics"), &to_json_pretty(&report)?)?;
    } else if options.shard != Shard::ALL {
        println!(
            "shard {} written to {}; merge the shards with `pope-merge`, then `pope-score`",
            flags.need("shard")?,
            options.answers.display()
        );
    }
    Ok(())
}

/// Captions every image of `--images` whose file name carries a COCO id
/// (sorted by id; `--num-images N` keeps the first N), for `chair`.
fn chair_run(flags: &Flags) -> Result<()> {
    let (decoder, config, mode_name, model_dir) = load_model(flags, 512, Benchmark::Chair)?;
    let options = run_options(flags, &model_dir, &mode_name)?;
    let prompt = flags
        .get("prompt")
        .unwrap_or("Please describe this image in detail.")
        .to_string();
    let mut images: Vec<(u64, String)> = std::fs::read_dir(&options.image_dir)
        .with_context(|| format!("reading {}", options.image_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            chair::coco_image_id(&name).map(|id| (id, name))
        })
        .collect();
    images.sort();
    if let Some(n) = flags.parsed::<usize>("num-images")? {
        images.truncate(n);
    }
    if images.is_empty() {
        bail!(
            "no COCO image files (e.g. COCO_val2014_000000000042.jpg) in {}",
            options.image_dir.display()
        );
    }
    let jobs: Vec<runner::Job> = images
        .into_iter()
        .enumerate()
        .map(|(position, (id, image))| runner::Job {
            id: damro_eval::QuestionId::Int(id as i64),
            image,
            prompt: prompt.clone(),
            position,
        })
        .collect();
    let mut progress = BarProgress::new(format!("captions {mode_name}"));
    let summary = runner::run(&jobs, &options, answerer(&decoder, &config), &mut progress)?;
    println!("{summary}");
    println!(
        "captions in {} (score them with `chair --captions ...`)",
        options.answers.display()
    );
    Ok(())
}
fn pope_score(flags: &Flags) -> Result<()> {
    let questions = pope::read_questions(Path::new(flags.need("questions")?))?;
    let answers = pope::read_answers(Path::new(flags.need("answers")?))?;
    let report = pope::score::score(&questions, &answers);
    println!("{report}");
    write_metrics(flags.get("metrics"), &to_json_pretty(&report)?)
}

fn pope_merge(flags: &Flags) -> Result<()> {
    let questions = pope::read_questions(Path::new(flags.need("questions")?))?;
    let shards: Vec<PathBuf> = flags.rest.iter().map(PathBuf::from).collect();
    if shards.is_empty() {
        bail!("pope-merge needs the shard files as arguments");
    }
    let report = merge_answers(questions.ids(), &shards, Path::new(flags.need("out")?))?;
    println!("{report:?}");
    Ok(())
}

fn chair_score(flags: &Flags) -> Result<()> {
    let evaluator = ChairEvaluator::from_synonyms_file(Path::new(flags.need("synonyms")?))?;
    let captions = chair::read_captions(Path::new(flags.need("captions")?))?;
    let instances = flags.all("instances");
    if instances.is_empty() {
        bail!("--instances is required (COCO instances_*.json)");
    }
    let truth = GroundTruth::from_coco(
        &evaluator,
        &instances,
        &flags.all("coco-captions"),
        Some(&captions.image_ids()),
    )?;
    let report = chair::score(&evaluator, &truth, &captions);
    println!("{report}");
    if let Some(path) = flags.get("details") {
        write_metrics(Some(path), &to_json_pretty(&report.captions)?)?;
    }
    write_metrics(flags.get("metrics"), &to_json_pretty(&report.metrics)?)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let flags = Flags::parse(args, &["greedy"])?;
    match command.as_str() {
        "pope-run" => pope_run(&flags),
        "chair-run" => chair_run(&flags),
        "pope-score" => pope_score(&flags),
        "pope-merge" => pope_merge(&flags),
        "chair" => chair_score(&flags),
        _ => bail!(
            "usage: eval pope-run|pope-score|pope-merge|chair-run|chair ... (see the doc comment of examples/eval.rs)"
        ),
    }
}

//! `analyze run`: captions the COCO images of a folder with the decoder's
//! attention captured, through damro-eval's batched, resumable, shardable
//! runner. The runner's answers file (the captions, which `eval chair`
//! scores too) decides what is done; beside it, the analysis records file
//! gets one record per image (see `damro_eval::analysis::records`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::{Args, ValueEnum};
use damro::llm::PromptTemplate;
use damro::{AutoDecoder, Benchmark, Generation, GenerationConfig, ImageSource, Mode, Request};
use damro_eval::analysis::{CaptionAnalysis, Measures, RecordsFile, read_records};
use damro_eval::runner::{self, Job};
use damro_eval::{
    BarProgress, QuestionId, RunOptions, RunSettings, RunSummary, Shard, ShardSpec, chair,
};

use crate::capture::{CaptureArgs, PAPER_PROMPT, analysis_record};
use crate::cli;

/// Plain decoding (the paper's analysis) or contrastive decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AnalysisMode {
    /// The model alone, as the paper analyses it.
    Plain,
    /// Contrastive decoding with the --contrast view; the attention is the
    /// full branch's.
    Contrast,
}

/// `run`'s flags.
#[derive(Debug, Args)]
#[command(mut_arg("max_new_tokens", |a| a.default_value("512")))]
pub struct RunArgs {
    /// The folder of COCO images (ids from the file names, e.g.
    /// COCO_val2014_000000000042.jpg).
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// The analysis records file (JSON lines, appended to; a resumed run
    /// skips the images it has). The captions go beside it, to
    /// `<stem>.captions.<ext>`.
    #[arg(long, value_name = "FILE")]
    records: PathBuf,
    /// Caption the first N images in id order (the paper takes 1000).
    #[arg(long)]
    num_images: Option<usize>,
    /// The prompt.
    #[arg(long, default_value = PAPER_PROMPT, value_parser = OsStringValueParser::new().try_map(utf8))]
    prompt: String,
    /// Prompt template: raw, llava_v1 or instructblip [default: the
    /// model's].
    #[arg(long)]
    template: Option<PromptTemplate>,
    /// plain (the paper's analysis) or contrast (the --contrast view).
    #[arg(long, value_enum, default_value_t = AnalysisMode::Plain)]
    mode: AnalysisMode,
    #[command(flatten)]
    model: cli::ModelArgs,
    #[command(flatten)]
    contrast: cli::ContrastArgs,
    #[command(flatten)]
    decode: cli::DecodeArgs,
    #[command(flatten)]
    capture: CaptureArgs,
    /// Images per generate call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch_size: u32,
    /// This process's part of the images: `i/N` (0-based), or `auto` from
    /// a Slurm job array or a Kubernetes Indexed Job. Records and captions
    /// go to `<file>.shard-i-of-N.<ext>`.
    #[arg(long, value_name = "i/N|auto")]
    shard: Option<ShardSpec>,
    /// The number of shards, for --shard auto where the scheduler does not
    /// give it.
    #[arg(long, requires = "shard", value_parser = clap::value_parser!(u32).range(1..))]
    shard_count: Option<u32>,
    /// Stop after attempting this many images (resume later).
    #[arg(long)]
    limit: Option<usize>,
    /// Written to every record's `model_id` [default: the --model folder's
    /// name].
    #[arg(long, value_parser = OsStringValueParser::new().try_map(utf8))]
    model_id: Option<String>,
    /// Also append warnings and failed images to this file.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

/// A text flag's value as UTF-8.
fn utf8(value: OsString) -> Result<String, String> {
    value
        .into_string()
        .map_err(|v| format!("{v:?} is not UTF-8 text"))
}

/// `records.jsonl` → `records.captions.jsonl`.
pub fn captions_path(records: &Path) -> PathBuf {
    let mut name: OsString = records.file_stem().map(OsString::from).unwrap_or_default();
    name.push(".captions");
    if let Some(ext) = records.extension() {
        name.push(".");
        name.push(ext);
    }
    records.with_file_name(name)
}

/// One job per COCO image of the folder, sorted by id.
fn image_jobs(args: &RunArgs) -> Result<Vec<Job>> {
    let dir = &args.images;
    let mut images: Vec<(u64, String)> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the --images folder `{}`", dir.display()))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            chair::coco_image_id(&name).map(|id| (id, name))
        })
        .collect();
    images.sort();
    images.dedup_by_key(|(id, _)| *id);
    if let Some(n) = args.num_images {
        images.truncate(n);
    }
    if images.is_empty() {
        bail!(
            "no COCO image file (e.g. COCO_val2014_000000000042.jpg) in `{}`",
            dir.display()
        );
    }
    images
        .into_iter()
        .enumerate()
        .map(|(position, (id, image))| {
            let id = i64::try_from(id).context("a COCO image id above i64::MAX")?;
            Ok(Job {
                id: QuestionId::Int(id),
                image,
                prompt: args.prompt.clone(),
                position,
            })
        })
        .collect()
}

impl RunArgs {
    fn shard(&self) -> Result<Shard> {
        let count = self.shard_count.map(|n| n as usize);
        if let (Some(ShardSpec::Fixed(s)), Some(n)) = (self.shard, count)
            && s.count() != n
        {
            bail!("--shard {s} and --shard-count {n} disagree (give one, or the same count)");
        }
        Ok(match self.shard {
            None => Shard::ALL,
            Some(spec) => spec.resolve(|k| std::env::var(k).ok(), count)?,
        })
    }

    fn mode(&self, decoder: &AutoDecoder) -> Result<Mode> {
        Ok(match self.mode {
            AnalysisMode::Plain => Mode::Plain,
            AnalysisMode::Contrast => self.contrast.mode(decoder, Benchmark::Chair)?,
        })
    }

    /// What every record of this run carries as its settings.
    fn settings(
        &self,
        decoder: &AutoDecoder,
        config: &GenerationConfig,
        template: PromptTemplate,
    ) -> RunSettings {
        let mut settings = RunSettings::new();
        if !matches!(config.mode, Mode::Plain)
            && let serde_json::Value::Object(view) = cli::ContrastArgs::describe(&config.mode)
        {
            for (key, value) in view {
                settings.insert(key, value);
            }
        }
        settings.insert("model", decoder.family());
        settings.insert("mode", config.mode.name());
        settings.insert("template", template.name());
        settings.insert(
            "decoding",
            if config.seed.is_some() {
                "sampled"
            } else {
                "greedy"
            },
        );
        settings.insert(
            "seed",
            config.seed.map_or(serde_json::Value::Null, Into::into),
        );
        settings.insert("max_new_tokens", self.decode.max_new_tokens);
        self.capture.record(&mut settings);
        settings
    }
}

/// Refuses to append to a records file written with other settings (its
/// means would mix two analyses), and to resume when the captions file
/// answers images the records file has no record of (the runner would
/// skip them).
fn check_existing(records: &Path, captions: &Path, settings: &RunSettings) -> Result<()> {
    let existing = if records.exists() {
        read_records(&[records.to_path_buf()])?
    } else {
        Default::default()
    };
    if captions.exists() {
        let have: std::collections::HashSet<u64> =
            existing.records.iter().map(|r| r.image_id).collect();
        let captioned = chair::read_captions(captions)?;
        let missing = captioned
            .image_ids()
            .into_iter()
            .filter(|id| !have.contains(id))
            .count();
        if missing > 0 {
            bail!(
                "`{}` answers {missing} image(s) that `{}` has no record of; remove the captions file (or those lines) to run them again",
                captions.display(),
                records.display()
            );
        }
    }
    let Some(first) = existing.records.first() else {
        return Ok(());
    };
    let keys: std::collections::BTreeSet<&str> = first
        .settings
        .iter()
        .chain(settings.iter())
        .map(|(k, _)| k)
        .collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|k| first.settings.get(k) != settings.get(k))
        .map(|k| {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("-".to_owned(), ToString::to_string);
            format!(
                "{k}: {} → {}",
                show(first.settings.get(k)),
                show(settings.get(k))
            )
        })
        .collect();
    if !differences.is_empty() {
        bail!(
            "`{}` holds records of a run with other settings ({}); use another --records file",
            records.display(),
            differences.join(", ")
        );
    }
    Ok(())
}

/// Generates a batch; when it fails as a whole, each request alone.
fn generate_each(
    decoder: &AutoDecoder,
    requests: &[Request],
    config: &GenerationConfig,
) -> Vec<Result<Generation, String>> {
    let one = |request: &Request| -> Result<Generation, String> {
        damro::generate(decoder, std::slice::from_ref(request), config)
            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?
            .pop()
            .ok_or_else(|| "the model returned no output".to_owned())
    };
    match damro::generate(decoder, requests, config) {
        Ok(out) if out.len() == requests.len() => out.into_iter().map(Ok).collect(),
        Err(e) if requests.len() == 1 => vec![Err(format!("{:#}", anyhow::Error::new(e)))],
        _ => requests.iter().map(one).collect(),
    }
}

/// Answers the runner's batches: generates with the capture, appends one
/// analysis record per image, and gives the runner the captions.
struct Analyst<'a> {
    decoder: &'a AutoDecoder,
    config: GenerationConfig,
    template: PromptTemplate,
    capture: &'a CaptureArgs,
    settings: RunSettings,
    model_id: String,
    records: PathBuf,
    /// Opened at the first batch, once the runner holds the captions
    /// file's lock.
    writer: Option<RecordsFile>,
    /// Bytes of a torn last line cut from the records file.
    torn: usize,
}

impl Analyst<'_> {
    fn answer(&mut self, jobs: &[Job], images: &[PathBuf]) -> Vec<Result<String, String>> {
        if self.writer.is_none() {
            match RecordsFile::open(&self.records, true) {
                Ok((file, cut)) => (self.writer, self.torn) = (Some(file), cut),
                Err(e) => return runner::whole_batch::<String>(Err(e.to_string()), jobs.len()),
            }
        }
        let requests: Vec<Request> = images
            .iter()
            .zip(jobs)
            .map(|(image, job)| {
                Request::new(ImageSource::File(image.clone()), &job.prompt, self.template)
            })
            .collect();
        let outputs = generate_each(self.decoder, &requests, &self.config);
        jobs.iter()
            .zip(outputs)
            .map(|(job, generation)| {
                let generation = generation?;
                let record = self.record(job, &generation)?;
                let file = self.writer.as_mut().ok_or("the records file is not open")?;
                file.append(&record).map_err(|e| e.to_string())?;
                Ok(generation.text)
            })
            .collect()
    }

    fn record(&self, job: &Job, generation: &Generation) -> Result<CaptionAnalysis, String> {
        let image_id = match job.id {
            QuestionId::Int(id) => u64::try_from(id).map_err(|e| e.to_string())?,
            QuestionId::Text(_) => return Err("a job without a COCO image id".into()),
        };
        let mut record = CaptionAnalysis::new(
            image_id,
            job.image.clone(),
            job.prompt.clone(),
            Measures::Overlap,
        );
        record.model_id = self.model_id.clone();
        record.settings = self.settings.clone();
        analysis_record(self.decoder, generation, self.capture, record)
            .map_err(|e| format!("{e:#}"))
    }
}

/// What to tell the user after a run.
fn next_step(summary: &RunSummary, shard: Shard, records: &Path) -> String {
    if !summary.is_complete() {
        "images remain (--limit or failures): run the same command again to resume".into()
    } else if shard != Shard::ALL {
        format!(
            "shard {shard} done; when every shard is, score all the shard files with `analyze score --records FILE --records FILE ...`"
        )
    } else {
        format!(
            "records in {} (Figures 4 and 5: `analyze score --records {} ...`)",
            records.display(),
            records.display()
        )
    }
}

/// `run`.
pub fn run(args: RunArgs) -> Result<()> {
    let jobs = image_jobs(&args)?;
    let shard = args.shard()?;
    let decoder = args.model.load()?;
    let template = args.template.unwrap_or_else(|| decoder.default_template());
    let mut config = args.decode.config(args.mode(&decoder)?);
    config.attention = Some(args.capture.capture(&decoder)?);
    let settings = args.settings(&decoder, &config, template);
    let records = shard.file_name(&args.records);
    let captions = shard.file_name(&captions_path(&args.records));
    check_existing(&records, &captions, &settings)?;
    let model_id = args.model_id.clone().unwrap_or_else(|| {
        let name = args.model.model.file_name();
        name.map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let mut options = RunOptions::new(captions, &args.images, model_id.clone());
    options.mode = Some(config.mode.name().to_owned());
    options.shard = shard;
    options.batch_size = args.batch_size as usize;
    options.max_records = args.limit;
    let mut progress = BarProgress::new(format!("analysis {} {shard}", config.mode.name()));
    if let Some(log) = &args.log {
        progress = progress.with_log_file(log)?;
    }
    let mut analyst = Analyst {
        decoder: &decoder,
        config,
        template,
        capture: &args.capture,
        settings,
        model_id,
        records: records.clone(),
        writer: None,
        torn: 0,
    };
    let answer = |jobs: &[Job], images: &[PathBuf]| analyst.answer(jobs, images);
    let summary = runner::run_batched(&jobs, &options, answer, &mut progress)
        .with_context(|| format!("running into `{}`", options.answers.display()))?;
    if analyst.torn > 0 {
        eprintln!(
            "warning: removed a torn last line ({} bytes) from `{}`; its image was run again",
            analyst.torn,
            records.display()
        );
    }
    println!("{summary}");
    if let Some(problem) = summary.problem() {
        bail!("{problem} (records file `{}`)", records.display());
    }
    println!("{}", next_step(&summary, shard, &records));
    Ok(())
}

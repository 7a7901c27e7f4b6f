//! What every run command shares: the model, mode and decoding flags, the
//! batch answer function over the library's batched `generate`, the run
//! settings recorded with the answers, the shard, and the progress reporter.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use damro::llm::PromptTemplate;
use damro::{AutoDecoder, Benchmark, GenerationConfig, ImageSource, Mode, Request, generate};
use damro_eval::runner::{self, Job};
use damro_eval::{
    BarProgress, RunOptions, RunSettings, RunSummary, Shard, ShardEnvError, ShardSpec,
};

use crate::cli;
use crate::files;

/// Plain decoding or contrastive decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalMode {
    /// The full branch alone.
    Plain,
    /// Contrastive decoding with the --contrast view (DAMRO by default).
    #[value(alias = "contrast")]
    Damro,
}

/// The flags of every run command.
#[derive(Debug, Args)]
pub struct RunFlags {
    #[command(flatten)]
    pub model: cli::ModelArgs,
    /// plain, or damro: contrastive decoding with the --contrast view.
    #[arg(long, value_enum, default_value_t = EvalMode::Damro)]
    pub mode: EvalMode,
    #[command(flatten)]
    pub contrast: cli::ContrastArgs,
    /// Prompt template: raw, llava_v1 or instructblip [default: the
    /// model's, as the authors ran it].
    #[arg(long)]
    pub template: Option<PromptTemplate>,
    /// New tokens at most [default: 16 for POPE and MME, 512 for CHAIR].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sample with this seed: each generate call (one batch) starts a
    /// generator seeded with it [default: 42 unless --greedy].
    #[arg(long, conflicts_with = "greedy")]
    pub seed: Option<u64>,
    /// Greedy decoding (answers do not depend on batching or sharding).
    #[arg(long)]
    pub greedy: bool,
    /// Run the two branches as two forwards per step instead of one batch.
    #[arg(long)]
    pub sequential: bool,
    /// Questions per generate call (different images and prompt lengths
    /// in one batch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_size: u32,
    /// This process's part of the questions: `i/N` (0-based), or `auto`
    /// from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (Slurm job arrays)
    /// or JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs, with
    /// --shard-count or DAMRO_SHARD_COUNT). Answers go to
    /// `<answers>.shard-i-of-N.<ext>`.
    #[arg(long, value_name = "i/N|auto")]
    pub shard: Option<ShardSpec>,
    /// The number of shards, for --shard auto where the scheduler does not
    /// give it (Kubernetes); must agree with the scheduler's when both do.
    #[arg(long, requires = "shard", value_parser = clap::value_parser!(u32).range(1..))]
    pub shard_count: Option<u32>,
    /// Stop after attempting this many questions (per question file; run
    /// again to resume).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Written to every record's `model_id` [default: the --model folder's
    /// name].
    #[arg(long, value_parser = cli::utf8_text())]
    pub model_id: Option<String>,
    /// Also append warnings and bad records to this file.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

/// The library's `--shard auto` error in this command's words (its count
/// flag is `--shard-count`).
fn shard_env_error(err: damro_eval::Error) -> anyhow::Error {
    match err {
        damro_eval::Error::ShardEnv(ShardEnvError::MissingCount { index_var }) => anyhow::anyhow!(
            "--shard auto: `{index_var}` is set but the shard count is not: pass --shard-count N or set DAMRO_SHARD_COUNT"
        ),
        other => other.into(),
    }
}

/// The default seed when neither --seed nor --greedy is given (the
/// authors' scripts use 42).
const DEFAULT_SEED: u64 = 42;

/// A loaded model with everything a run needs.
pub struct Session {
    /// The model.
    pub decoder: AutoDecoder,
    /// Mode, token limit, greedy or seeded sampling.
    pub config: GenerationConfig,
    /// How a question becomes the model's prompt.
    pub template: PromptTemplate,
    /// What is recorded next to the answers and in the metrics.
    pub settings: RunSettings,
    /// This process's part of the questions.
    pub shard: Shard,
    /// Written to every record.
    model_id: String,
}

impl RunFlags {
    /// The shard of this process (checked before the model is loaded).
    pub fn shard(&self) -> Result<Shard> {
        let count = self.shard_count.map(|n| n as usize);
        let shard = match self.shard {
            None => Shard::ALL,
            Some(spec) => spec
                .resolve(|k| std::env::var(k).ok(), count)
                .map_err(shard_env_error)?,
        };
        if let (Some(ShardSpec::Fixed(s)), Some(n)) = (self.shard, count)
            && s.count() != n
        {
            bail!("--shard {s} and --shard-count {n} disagree (give one, or the same count)");
        }
        Ok(shard)
    }

    /// Loads the model and builds the mode, the generation config and the
    /// settings to record (`benchmark` picks the authors' preset).
    pub fn session(&self, benchmark: Benchmark, default_max_new: usize) -> Result<Session> {
        let shard = self.shard()?;
        let decoder = self.model.load()?;
        let mode = match self.mode {
            EvalMode::Plain => Mode::Plain,
            EvalMode::Damro => self.contrast.mode(&decoder, benchmark)?,
        };
        let seed = (!self.greedy).then(|| self.seed.unwrap_or(DEFAULT_SEED));
        let max_new = self.max_new_tokens.unwrap_or(default_max_new);
        let template = self.template.unwrap_or_else(|| decoder.default_template());
        let settings = self.settings(&mode, &decoder, template, seed, max_new);
        let mut config = match seed {
            Some(seed) => GenerationConfig::sampled(mode, max_new, seed),
            None => GenerationConfig::greedy(mode, max_new),
        };
        if self.sequential {
            config.branches = damro::BranchExecution::Sequential;
        }
        if seed.is_some() && self.batch_size > 1 {
            eprintln!(
                "note: sampling with --batch-size {}: a question's draws depend on the other questions of its batch; use --greedy (or --batch-size 1) for answers that do not depend on batching, resuming or sharding",
                self.batch_size
            );
        }
        let model_id = self.model_id.clone().unwrap_or_else(|| {
            self.model
                .model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Ok(Session {
            decoder,
            config,
            template,
            settings,
            shard,
            model_id,
        })
    }

    /// The settings recorded with the answers and in the metrics.
    fn settings(
        &self,
        mode: &Mode,
        decoder: &AutoDecoder,
        template: PromptTemplate,
        seed: Option<u64>,
        max_new: usize,
    ) -> RunSettings {
        let mut settings = RunSettings::new();
        if let serde_json::Value::Object(view) = cli::ContrastArgs::describe(mode) {
            for (key, value) in view {
                settings.insert(key, value);
            }
        }
        settings.insert("mode", mode.name());
        settings.insert(
            "decoding",
            if seed.is_some() { "sampled" } else { "greedy" },
        );
        settings.insert("seed", seed.map_or(serde_json::Value::Null, Into::into));
        if seed.is_some() {
            settings.insert("seeding", "per generate call (batch)");
        }
        settings.insert("batch_size", self.batch_size);
        settings.insert("max_new_tokens", max_new);
        settings.insert("model", decoder.family());
        settings.insert("template", template.name());
        if self.sequential {
            settings.insert("branches", "sequential");
        }
        if let AutoDecoder::InstructBlip(_) = decoder
            && let Some(value) = self.model.indexing.to_possible_value()
        {
            settings.insert("indexing", value.get_name());
        }
        settings
    }

    /// A progress bar labelled `label`, logging to --log when given.
    pub fn progress(&self, label: String) -> Result<BarProgress> {
        let progress = BarProgress::new(label);
        Ok(match &self.log {
            Some(path) => progress.with_log_file(path)?,
            None => progress,
        })
    }
}

impl Session {
    /// Run options writing to the shard's file of `answers`.
    pub fn options(&self, args: &RunFlags, answers: &Path, image_dir: &Path) -> RunOptions {
        let mut options = RunOptions::new(
            self.shard.file_name(answers),
            image_dir,
            self.model_id.clone(),
        );
        options.mode = Some(self.config.mode.name().to_owned());
        options.shard = self.shard;
        options.batch_size = args.batch_size as usize;
        options.max_records = args.limit;
        options
    }

    /// Answers a batch with one `generate` call; when the batch fails as a
    /// whole (one image that does not decode), each job is retried alone
    /// so the others still get their answer.
    pub fn answer_batch(&self, jobs: &[Job], images: &[PathBuf]) -> Vec<Result<String, String>> {
        let requests: Vec<Request> = jobs
            .iter()
            .zip(images)
            .map(|(job, image)| self.request(job, image))
            .collect();
        let texts = |out: Vec<damro::Generation>| out.into_iter().map(|g| g.text).collect();
        match generate(&self.decoder, &requests, &self.config) {
            Ok(out) => runner::whole_batch(Ok::<_, String>(texts(out)), jobs.len()),
            Err(err) if jobs.len() == 1 => runner::whole_batch::<String>(Err(err.to_string()), 1),
            Err(_) => jobs
                .iter()
                .zip(images)
                .map(|(job, image)| {
                    generate(&self.decoder, &[self.request(job, image)], &self.config)
                        .map_err(|e| e.to_string())
                        .and_then(|mut out| {
                            out.pop()
                                .map(|g| g.text)
                                .ok_or_else(|| "the model returned no output".to_owned())
                        })
                })
                .collect(),
        }
    }

    fn request(&self, job: &Job, image: &Path) -> Request {
        Request::new(
            ImageSource::File(image.to_path_buf()),
            &job.prompt,
            self.template,
        )
    }
}

/// Runs `body` (one run over `answers`) with the settings recorded next to
/// the answers; a run that fails or produces nothing leaves no new file
/// behind and becomes an error.
pub fn with_settings(
    answers: &Path,
    settings: &RunSettings,
    body: impl FnOnce() -> damro_eval::Result<RunSummary>,
) -> Result<RunSummary> {
    let record = files::record_settings(answers, settings)?;
    let outcome = body();
    let problem = match &outcome {
        Ok(summary) => summary.problem().map(|p| p.to_string()),
        Err(_) => Some(String::new()),
    };
    if problem.is_some() {
        files::remove_if_empty(answers);
        record.undo();
    }
    let summary = outcome.with_context(|| format!("running into `{}`", answers.display()))?;
    println!("{summary}");
    if let Some(problem) = problem {
        bail!("{problem} (answers file `{}`)", answers.display());
    }
    Ok(summary)
}

/// What to tell the user after a run that is not the whole job.
pub fn next_step(shard: Shard, complete: bool, merge_command: &str) -> Option<String> {
    if shard != Shard::ALL {
        Some(format!(
            "shard {shard} done{}; when every shard is, merge them with `{merge_command}` and score the merged file",
            if complete {
                ""
            } else {
                " in part (run it again to resume)"
            }
        ))
    } else if !complete {
        Some("questions remain (--limit or failures): run the same command again to resume".into())
    } else {
        None
    }
}

//! `mme-run`, `mme-score`, `mme-merge`: MME from the `lmms-lab/MME`
//! parquet shards or the original release folder. The prompt is the
//! question as given; the model's template wraps it (LLaVA-1.5:
//! `<image>\n` + question in llava_v1, as the authors ran it). Answers carry
//! the authors' fields (`question_id`, `prompt`, `gt_answer`, `output`,
//! `category`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use damro::Benchmark;
use damro_eval::mme::{self, MmeSet};
use damro_eval::pope;
use damro_eval::runner::Job;

use crate::files;
use crate::run::{self, RunFlags};

/// Default new-token limit: MME reads the first four characters.
const DEFAULT_MAX_NEW_TOKENS: usize = 16;

/// Where the MME questions are.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct MmeInput {
    /// Parquet shards of the `lmms-lab/MME` dataset (question_id, image,
    /// question, answer, category).
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub parquet: Vec<PathBuf>,
    /// The original release folder (one folder per sub-task).
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,
}

impl MmeInput {
    /// Whether MME questions were given.
    pub fn given(&self) -> bool {
        self.folder.is_some() || !self.parquet.is_empty()
    }

    /// Reads the questions, reporting unusable records to stderr; refuses
    /// an input without a usable question.
    pub fn read(&self) -> Result<MmeSet> {
        let (set, source) = match &self.folder {
            Some(folder) => (mme::read_folder(folder)?, folder.display().to_string()),
            None if !self.parquet.is_empty() => (
                mme::read_parquet(&self.parquet)?,
                format!("{} parquet file(s)", self.parquet.len()),
            ),
            None => bail!("give the questions: --parquet FILE... or --folder DIR"),
        };
        files::report_bad(&format!("MME input {source}"), &set.bad);
        if set.questions.is_empty() {
            bail!(
                "MME input {source} has no usable question ({} bad record(s)); expected sub-task folders or lmms-lab/MME parquet shards",
                set.bad.len()
            );
        }
        Ok(set)
    }
}

/// `mme-run`'s flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    input: MmeInput,
    /// The answers file (appended to; a resumed run skips what it holds).
    #[arg(long, value_name = "FILE")]
    answers: PathBuf,
    /// Where parquet images are written as files [default: `<answers
    /// stem>.images/` next to the answers].
    #[arg(long, value_name = "DIR")]
    image_cache: Option<PathBuf>,
    /// Where to write the metrics JSON once every question is answered.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    #[command(flatten)]
    run: RunFlags,
}

/// `mme-run`.
pub fn run(args: RunArgs) -> Result<()> {
    let set = args.input.read()?;
    args.run.shard()?;
    let session = args.run.session(Benchmark::Pope, DEFAULT_MAX_NEW_TOKENS)?;
    let cache = args.image_cache.clone().unwrap_or_else(|| {
        let stem = args.answers.file_stem().unwrap_or_default();
        let mut name = stem.to_os_string();
        name.push(".images");
        args.answers.with_file_name(name)
    });
    // Job images are absolute paths: no image folder.
    let options = session.options(&args.run, &args.answers, Path::new(""));
    let label = format!("MME {} {}", session.config.mode.name(), session.shard);
    let mut progress = args.run.progress(label)?;
    let answer = |jobs: &[Job], images: &[PathBuf]| session.answer_batch(jobs, images);
    let summary = run::with_settings(&options.answers, &session.settings, || {
        mme::run(&set, &cache, &options, answer, &mut progress)
    })?;
    if let Some(next) = run::next_step(session.shard, summary.is_complete(), "mme-merge") {
        println!("{next}");
        return Ok(());
    }
    score_file(Some(&set), &args.answers, args.metrics.as_deref())
}

/// `mme-score`'s flags.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The questions to score against [default: the `gt_answer` and
    /// `category` the answer records carry, as the authors' files do].
    #[command(flatten)]
    input: MmeInput,
    /// The answers file.
    #[arg(long, value_name = "FILE")]
    answers: PathBuf,
    /// Where to write the metrics JSON.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
}

/// `mme-score`.
pub fn score(args: ScoreArgs) -> Result<()> {
    let set = if args.input.given() {
        Some(args.input.read()?)
    } else {
        None
    };
    score_file(set.as_ref(), &args.answers, args.metrics.as_deref())
}

/// Scores `answers` (against `set`, or on their own), prints the report,
/// writes the metrics; fails when nothing was scored.
fn score_file(set: Option<&MmeSet>, answers: &Path, metrics: Option<&Path>) -> Result<()> {
    let records = pope::read_answers(answers)?;
    files::check_answers(answers, &records)?;
    let settings = files::settings_for_report(answers, records.answers.iter().map(|(_, r)| r))?;
    let report = match set {
        Some(set) => mme::score(set, &records),
        None => mme::score_answers(&records),
    }
    .with_settings(settings);
    println!("{report}");
    if report.nothing_scored() {
        bail!(
            "no answer in `{}` could be scored (no matching question, or no gt_answer/category)",
            answers.display()
        );
    }
    files::write_json(metrics, "metrics", damro_eval::to_json_pretty(&report)?)
}

/// `mme-merge`'s flags.
#[derive(Debug, Args)]
pub struct MergeArgs {
    #[command(flatten)]
    input: MmeInput,
    /// The --answers file the shards were run with: merges
    /// `<answers>.shard-i-of-N.<ext>` into it.
    #[arg(long, value_name = "FILE", requires = "shard_count")]
    answers: Option<PathBuf>,
    /// N, the number of shards the run had (with --answers).
    #[arg(long, requires = "answers", value_parser = clap::value_parser!(u32).range(1..))]
    shard_count: Option<u32>,
    /// The merged file (with the shard files given by name).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "answers",
        requires = "shards"
    )]
    out: Option<PathBuf>,
    /// The shard files to merge into --out.
    #[arg(value_name = "SHARD_FILE", conflicts_with = "answers")]
    shards: Vec<PathBuf>,
}

/// `mme-merge`.
pub fn merge(args: MergeArgs) -> Result<()> {
    let (out, shards) = match (&args.answers, args.shard_count, &args.out) {
        (Some(answers), Some(count), _) => (
            answers.clone(),
            files::shard_files(answers, count as usize)?,
        ),
        (None, _, Some(out)) => (out.clone(), args.shards.clone()),
        _ => bail!("give --answers FILE --shard-count N, or --out FILE and the shard files"),
    };
    let set = args.input.read()?;
    let report = mme::merge(&set, &shards, &out)
        .with_context(|| format!("merging into `{}`", out.display()))?;
    for (file, bad) in &report.malformed {
        eprintln!("warning: skipped in `{}`: {bad}", file.display());
    }
    files::merge_settings(&shards, &out)?;
    println!(
        "merged {} answer(s) from {} shard file(s) into {}",
        report.records,
        shards.len(),
        out.display()
    );
    Ok(())
}

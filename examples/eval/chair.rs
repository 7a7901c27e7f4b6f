//! `chair-run` captions the COCO images of a folder (the authors' CHAIR
//! preset: InstructBLIP alpha 1.5); `chair` scores captions against COCO
//! annotation files with the CHAIR synonyms.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use damro::Benchmark;
use damro_eval::chair::{self, ChairEvaluator, GroundTruth};
use damro_eval::runner::{self, Job};
use damro_eval::{QuestionId, pope};

use crate::files;
use crate::run::{self, RunFlags};

/// Default new-token limit for a caption.
const DEFAULT_MAX_NEW_TOKENS: usize = 512;

/// The authors' CHAIR prompt.
const CHAIR_PROMPT: &str = "Generate a short caption of this image.";

/// `chair-run`'s flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The folder of COCO images (ids from the file names, e.g.
    /// COCO_val2014_000000000042.jpg).
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// The captions file (appended to; a resumed run skips what it holds).
    #[arg(long, value_name = "FILE")]
    answers: PathBuf,
    /// Caption the first N images in id order (the authors take 500).
    #[arg(long)]
    num_images: Option<usize>,
    /// The prompt.
    #[arg(long, default_value = CHAIR_PROMPT, value_parser = crate::cli::utf8_text())]
    prompt: String,
    #[command(flatten)]
    run: RunFlags,
}

/// The jobs: one per COCO image of `dir`, sorted by id.
fn image_jobs(args: &RunArgs) -> Result<Vec<Job>> {
    let dir = &args.images;
    let mut images: Vec<(u64, String)> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the image folder `{}`", dir.display()))?
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
    Ok(images
        .into_iter()
        .enumerate()
        .map(|(position, (id, image))| Job {
            id: QuestionId::Int(id as i64),
            image,
            prompt: args.prompt.clone(),
            position,
        })
        .collect())
}

/// `chair-run`.
pub fn run(args: RunArgs) -> Result<()> {
    let jobs = image_jobs(&args)?;
    args.run.shard()?;
    let session = args.run.session(Benchmark::Chair, DEFAULT_MAX_NEW_TOKENS)?;
    let options = session.options(&args.run, &args.answers, &args.images);
    let label = format!("captions {} {}", session.config.mode.name(), session.shard);
    let mut progress = args.run.progress(label)?;
    let answer = |jobs: &[Job], images: &[PathBuf]| session.answer_batch(jobs, images);
    let summary = run::with_settings(&options.answers, &session.settings, || {
        runner::run_batched(&jobs, &options, answer, &mut progress)
    })?;
    if !summary.is_complete() {
        println!("images remain (--limit or failures): run the same command again to resume");
    } else if session.shard != damro_eval::Shard::ALL {
        println!(
            "shard {} done; every image is in exactly one shard: concatenate the shard files, then score them with `chair`",
            session.shard
        );
    } else {
        println!(
            "captions in {} (score them with `chair --captions ...`)",
            options.answers.display()
        );
    }
    Ok(())
}

/// `chair`'s flags.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The captions (a `chair-run` answers file, or jsonl with image_id and
    /// caption).
    #[arg(long, value_name = "FILE")]
    captions: PathBuf,
    /// The CHAIR synonyms file (one line per COCO object: its words).
    #[arg(long, value_name = "FILE")]
    synonyms: PathBuf,
    /// COCO instances files (instances_val2014.json); repeat for several.
    #[arg(long, value_name = "FILE", required = true)]
    instances: Vec<PathBuf>,
    /// COCO caption files (captions_val2014.json) adding ground truth.
    #[arg(long, value_name = "FILE")]
    coco_captions: Vec<PathBuf>,
    /// Where to write the per-caption details.
    #[arg(long, value_name = "FILE")]
    details: Option<PathBuf>,
    /// Where to write the metrics JSON.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
}

/// `chair`.
pub fn score(args: ScoreArgs) -> Result<()> {
    let evaluator = ChairEvaluator::from_synonyms_file(&args.synonyms)?;
    let captions = chair::read_captions(&args.captions)?;
    files::report_bad(
        &format!("captions `{}`", args.captions.display()),
        &captions.bad,
    );
    if captions.captions.is_empty() {
        bail!(
            "`{}` has no caption ({} unreadable line(s)); expected a chair-run answers file",
            args.captions.display(),
            captions.bad.len()
        );
    }
    let truth = GroundTruth::from_coco(
        &evaluator,
        &args.instances,
        &args.coco_captions,
        Some(&captions.image_ids()),
    )?;
    let records = pope::read_answers(&args.captions)?;
    let settings =
        files::settings_for_report(&args.captions, records.answers.iter().map(|(_, r)| r))?;
    let mut report = chair::score(&evaluator, &truth, &captions).with_settings(settings);
    let details = report.take_details();
    println!("{report}");
    if report.nothing_scored() {
        bail!("no caption in `{}` was scored", args.captions.display());
    }
    if report.counts.captions_without_ground_truth == report.counts.captions {
        bail!(
            "none of the captioned images has an annotation in the --instances / --coco-captions files (wrong files?)"
        );
    }
    files::write_json(
        args.details.as_deref(),
        "details",
        damro_eval::to_json_pretty(&details)?,
    )?;
    files::write_json(
        args.metrics.as_deref(),
        "metrics",
        damro_eval::to_json_pretty(&report)?,
    )
}

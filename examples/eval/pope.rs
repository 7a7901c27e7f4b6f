//! `pope-run`, `pope-score`, `pope-merge`: POPE over one question file or
//! several named splits (random, popular, adversarial) at once.
//!
//! With `--split NAME=FILE` each split's answers go to
//! `<answers stem>.NAME.<ext>` (`answers.jsonl` → `answers.random.jsonl`),
//! and its shards to `answers.random.shard-i-of-N.jsonl`; every command
//! derives the same names from the same flags.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use clap::builder::TypedValueParser;
use damro::Benchmark;
use damro_eval::pope::score::{PopeRule, score_with};
use damro_eval::pope::splits::{SplitInput, score_splits};
use damro_eval::pope::{self, AnswerSet, QuestionSet};
use damro_eval::runner::{self, Job};
use damro_eval::{RunSettings, merge_jobs};

use crate::files;
use crate::run::{self, RunFlags};

/// Default new-token limit: POPE asks for one word.
const DEFAULT_MAX_NEW_TOKENS: usize = 16;

/// One `--split NAME=FILE`.
#[derive(Debug, Clone)]
pub struct SplitArg {
    name: String,
    questions: PathBuf,
}

/// Parses `NAME=FILE`; the name is letters, digits, `_` and `-` (it goes
/// into file names), the file any path.
fn parse_split(value: OsString) -> Result<SplitArg, String> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let bytes = value.into_vec();
    let expected = "expected NAME=FILE, e.g. random=coco_pope_random.json";
    let at = bytes
        .iter()
        .position(|&b| b == b'=')
        .ok_or_else(|| format!("no `=`: {expected}"))?;
    let name = std::str::from_utf8(&bytes[..at])
        .ok()
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .ok_or_else(|| {
            format!("the split name must be letters, digits, `_` or `-` ({expected})")
        })?;
    let file = std::ffi::OsStr::from_bytes(&bytes[at + 1..]);
    if file.is_empty() {
        return Err(format!("no file after `=`: {expected}"));
    }
    Ok(SplitArg {
        name: name.to_owned(),
        questions: PathBuf::from(file),
    })
}

/// Where the POPE questions are: one file, or named splits.
#[derive(Debug, Args)]
pub struct PopeInput {
    /// One POPE question file (jsonl: question_id, image, text, label).
    #[arg(long, value_name = "FILE", conflicts_with = "split")]
    pub questions: Option<PathBuf>,
    /// A named split's question file, NAME=FILE; repeat it for the random,
    /// popular and adversarial splits. Split NAME's answers are
    /// `<answers stem>.NAME.<ext>`.
    #[arg(long, value_name = "NAME=FILE", value_parser = clap::builder::OsStringValueParser::new().try_map(parse_split))]
    pub split: Vec<SplitArg>,
}

/// One question file and its answers file.
#[derive(Debug, Clone)]
pub struct Split {
    /// The split's name (`None` for a lone --questions file).
    pub name: Option<String>,
    /// The question file.
    pub questions: PathBuf,
    /// The (unsharded) answers file.
    pub answers: PathBuf,
}

impl PopeInput {
    /// Whether POPE questions were given.
    pub fn given(&self) -> bool {
        self.questions.is_some() || !self.split.is_empty()
    }

    /// The question files with their answers files next to `answers`.
    pub fn splits(&self, answers: &Path) -> Result<Vec<Split>> {
        if let Some(questions) = &self.questions {
            return Ok(vec![Split {
                name: None,
                questions: questions.clone(),
                answers: answers.to_path_buf(),
            }]);
        }
        if self.split.is_empty() {
            bail!("give the questions: --questions FILE, or --split NAME=FILE per split");
        }
        let mut seen = std::collections::HashSet::new();
        self.split
            .iter()
            .map(|s| {
                if !seen.insert(s.name.as_str()) {
                    bail!("--split {}: the split is given twice", s.name);
                }
                Ok(Split {
                    name: Some(s.name.clone()),
                    questions: s.questions.clone(),
                    answers: files::split_file(answers, &s.name),
                })
            })
            .collect()
    }
}

/// Reads every split's questions; refuses a file without a usable
/// question (before any model is loaded).
fn read_questions(splits: &[Split]) -> Result<Vec<QuestionSet>> {
    splits
        .iter()
        .map(|split| {
            let set = pope::read_questions(&split.questions)?;
            if set.questions.is_empty() {
                files::report_bad(
                    &format!("questions `{}`", split.questions.display()),
                    &set.bad,
                );
                bail!(
                    "`{}` has no usable POPE question ({} bad line(s)); expected jsonl lines with question_id, image, text and label",
                    split.questions.display(),
                    set.bad.len()
                );
            }
            Ok(set)
        })
        .collect()
}

/// `pope-run`'s flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    input: PopeInput,
    /// The folder the questions' images are in.
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// The answers file (appended to; a resumed run skips what it holds).
    #[arg(long, value_name = "FILE")]
    answers: PathBuf,
    /// Where to write the metrics JSON once every question is answered.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// The answer rule of the final scoring: damro (the authors') or pope.
    #[arg(long, default_value = "damro")]
    rule: PopeRule,
    #[command(flatten)]
    run: RunFlags,
}

/// `pope-run`.
pub fn run(args: RunArgs) -> Result<()> {
    let splits = args.input.splits(&args.answers)?;
    let sets = read_questions(&splits)?;
    args.run.shard()?;
    let session = args.run.session(Benchmark::Pope, DEFAULT_MAX_NEW_TOKENS)?;
    let mut complete = true;
    for (split, questions) in splits.iter().zip(&sets) {
        let options = session.options(&args.run, &split.answers, &args.images);
        let name = split.name.as_deref().unwrap_or("pope");
        let label = format!("{name} {} {}", session.config.mode.name(), session.shard);
        let mut progress = args.run.progress(label)?;
        let answer = |jobs: &[Job], images: &[PathBuf]| session.answer_batch(jobs, images);
        let summary = run::with_settings(&options.answers, &session.settings, || {
            runner::run_pope_batched(questions, &options, answer, &mut progress)
        })?;
        complete &= summary.is_complete();
    }
    if let Some(next) = run::next_step(session.shard, complete, "pope-merge") {
        println!("{next}");
        if args.metrics.is_some() {
            println!("(no metrics written: score the complete answers with `pope-score`)");
        }
        return Ok(());
    }
    score_all(&splits, &sets, args.rule, args.metrics.as_deref())
}

/// `pope-score`'s flags.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    input: PopeInput,
    /// The answers file (with --split: the name the split files derive
    /// from).
    #[arg(long, value_name = "FILE")]
    answers: PathBuf,
    /// The answer rule: damro (the authors' eval_pope.py) or pope (the
    /// common POPE / LLaVA rule).
    #[arg(long, default_value = "damro")]
    rule: PopeRule,
    /// Where to write the metrics JSON.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
}

/// `pope-score`.
pub fn score(args: ScoreArgs) -> Result<()> {
    let splits = args.input.splits(&args.answers)?;
    let sets = read_questions(&splits)?;
    for (split, set) in splits.iter().zip(&sets) {
        files::report_bad(
            &format!("questions `{}`", split.questions.display()),
            &set.bad,
        );
    }
    score_all(&splits, &sets, args.rule, args.metrics.as_deref())
}

/// Reads and checks each split's answers and their run settings.
fn read_answers(splits: &[Split]) -> Result<(Vec<AnswerSet>, RunSettings)> {
    let mut answers = Vec::with_capacity(splits.len());
    let mut settings: Option<(PathBuf, RunSettings)> = None;
    for split in splits {
        let set = pope::read_answers(&split.answers)?;
        files::check_answers(&split.answers, &set)?;
        let these = files::settings_for_report(&split.answers, set.answers.iter().map(|(_, r)| r))?;
        match &settings {
            Some((first, known)) if *known != these => bail!(
                "the splits' answers come from runs with different settings (`{}` and `{}`); score them separately",
                first.display(),
                split.answers.display()
            ),
            Some(_) => {}
            None => settings = Some((split.answers.clone(), these)),
        }
        answers.push(set);
    }
    Ok((answers, settings.map(|(_, s)| s).unwrap_or_default()))
}

/// Scores every split, prints the reports, writes the metrics, and fails
/// when a split scored nothing.
fn score_all(
    splits: &[Split],
    sets: &[QuestionSet],
    rule: PopeRule,
    metrics: Option<&Path>,
) -> Result<()> {
    let (answers, settings) = read_answers(splits)?;
    if let ([split], [questions], [answers]) = (splits, sets, answers.as_slice())
        && split.name.is_none()
    {
        let report = score_with(questions, answers, rule).with_settings(settings);
        println!("{report}");
        if report.nothing_scored() {
            bail!(
                "no answer in `{}` matches a question of `{}`",
                split.answers.display(),
                split.questions.display()
            );
        }
        return files::write_json(metrics, "metrics", damro_eval::to_json_pretty(&report)?);
    }
    let inputs: Vec<SplitInput<'_>> = splits
        .iter()
        .zip(sets)
        .zip(&answers)
        .map(|((split, questions), answers)| SplitInput {
            name: split.name.as_deref().unwrap_or("pope"),
            questions,
            answers,
        })
        .collect();
    let report = score_splits(&inputs, rule).with_settings(settings);
    for split in &report.splits {
        println!("== split {} ==\n{}\n", split.name, split.report);
    }
    println!("{report}");
    let empty = report.empty_splits();
    if !empty.is_empty() {
        bail!(
            "no answer matches a question in split(s) {} (wrong answers file?)",
            empty.join(", ")
        );
    }
    files::write_json(metrics, "metrics", damro_eval::to_json_pretty(&report)?)
}

/// `pope-merge`'s flags.
#[derive(Debug, Args)]
pub struct MergeArgs {
    #[command(flatten)]
    input: PopeInput,
    /// The --answers file the shards were run with: merges
    /// `<answers>.shard-i-of-N.<ext>` (per split with --split) into it.
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

/// `pope-merge`.
pub fn merge(args: MergeArgs) -> Result<()> {
    let plan: Vec<(Split, Vec<PathBuf>)> = match (&args.answers, args.shard_count, &args.out) {
        (Some(answers), Some(count), _) => args
            .input
            .splits(answers)?
            .into_iter()
            .map(|split| {
                let shards = files::shard_files(&split.answers, count as usize)?;
                Ok((split, shards))
            })
            .collect::<Result<_>>()?,
        (None, _, Some(out)) if args.input.split.is_empty() => {
            vec![(args.input.splits(out)?.remove(0), args.shards.clone())]
        }
        (None, _, Some(_)) => bail!("with --split, give --answers FILE --shard-count N"),
        _ => bail!("give --answers FILE --shard-count N, or --out FILE and the shard files"),
    };
    let sets = read_questions(&plan.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>())?;
    for ((split, shards), questions) in plan.iter().zip(&sets) {
        let report = merge_jobs(&runner::pope_jobs(questions), shards, &split.answers)
            .with_context(|| format!("merging into `{}`", split.answers.display()))?;
        for (file, bad) in &report.malformed {
            eprintln!("warning: skipped in `{}`: {bad}", file.display());
        }
        files::merge_settings(shards, &split.answers)?;
        println!(
            "merged {} answer(s) from {} shard file(s) into {}",
            report.records,
            shards.len(),
            split.answers.display()
        );
    }
    Ok(())
}

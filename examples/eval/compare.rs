//! `compare`: several answers files of the same POPE questions (one file or
//! several splits) or the same MME questions, scored and shown side by
//! side, e.g. plain, DAMRO, VCD, no-image and cutoff-only runs.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use damro_eval::compare::{compare_mme_files, compare_pope_files};
use damro_eval::pope::score::PopeRule;

use crate::files;
use crate::mme::MmeInput;
use crate::pope::PopeInput;

/// `compare`'s flags.
#[derive(Debug, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pope: PopeInput,
    #[command(flatten)]
    mme: MmeInput,
    /// The answers files, one per method (with --split: the --answers name
    /// each run was given; the split files derive from it).
    #[arg(value_name = "ANSWERS", required = true)]
    answers: Vec<PathBuf>,
    /// A column title per answers file, in order [default: the file
    /// names].
    #[arg(long, value_parser = crate::cli::utf8_text())]
    name: Vec<String>,
    /// The POPE answer rule: damro (the authors') or pope.
    #[arg(long, default_value = "damro")]
    rule: PopeRule,
    /// Where to write the comparison as JSON.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
}

/// The column titles: --name, or the file stems (made unique).
fn titles(args: &CompareArgs) -> Result<Vec<String>> {
    if !args.name.is_empty() {
        if args.name.len() != args.answers.len() {
            bail!(
                "{} --name for {} answers file(s): give one per file, or none",
                args.name.len(),
                args.answers.len()
            );
        }
        return Ok(args.name.clone());
    }
    let mut titles: Vec<String> = Vec::new();
    for path in &args.answers {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let title = if titles.contains(&stem) {
            format!("{stem}#{}", titles.len() + 1)
        } else {
            stem
        };
        titles.push(title);
    }
    Ok(titles)
}

/// Refuses answers files that are not (question files, binary data).
fn check(paths: &[PathBuf]) -> Result<()> {
    for path in paths {
        files::check_answers(path, &damro_eval::pope::read_answers(path)?)?;
    }
    Ok(())
}

/// `compare`.
pub fn run(args: CompareArgs) -> Result<()> {
    let titles = titles(&args)?;
    match (args.pope.given(), args.mme.given()) {
        (true, true) => bail!("compare POPE or MME answers, not both at once"),
        (false, false) => bail!(
            "give the questions: --questions FILE or --split NAME=FILE (POPE), --parquet or --folder (MME)"
        ),
        (true, false) => {
            let splits = args.pope.splits(Path::new("answers"))?;
            let names: Vec<(String, PathBuf)> = splits
                .iter()
                .map(|s| {
                    (
                        s.name.clone().unwrap_or_else(|| "pope".into()),
                        s.questions.clone(),
                    )
                })
                .collect();
            let mut methods = Vec::with_capacity(titles.len());
            for (title, base) in titles.iter().zip(&args.answers) {
                let files: Vec<PathBuf> = args
                    .pope
                    .splits(base)?
                    .into_iter()
                    .map(|s| s.answers)
                    .collect();
                check(&files)?;
                methods.push((title.clone(), files));
            }
            let comparison = compare_pope_files(&names, &methods, args.rule)?;
            println!("{comparison}");
            files::write_json(
                args.metrics.as_deref(),
                "comparison",
                damro_eval::to_json_pretty(&comparison)?,
            )
        }
        (false, true) => {
            let set = args.mme.read()?;
            check(&args.answers)?;
            let methods: Vec<(String, PathBuf)> = titles
                .into_iter()
                .zip(args.answers.iter().cloned())
                .collect();
            let comparison = compare_mme_files(&set, &methods)?;
            println!("{comparison}");
            files::write_json(
                args.metrics.as_deref(),
                "comparison",
                damro_eval::to_json_pretty(&comparison)?,
            )
        }
    }
}

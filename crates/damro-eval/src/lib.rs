//! Evaluation for DAMRO: POPE, CHAIR and MME in the file formats the
//! authors use, with scorers that follow the authors' and the standard
//! scripts, and a resumable, shardable, batched runner that takes any
//! answer function. Model-free: the CLI plugs a decoder in as a closure.
//!
//! - [`pope`]: question and answer files, the authors' prompt
//!   ([`pope::pope_prompt`]), the scorer under either answer rule
//!   ([`pope::score::PopeRule::Damro`], the authors' `eval_pope.py`, or
//!   [`pope::score::PopeRule::Pope`], the common one), and several splits
//!   at once with their average ([`pope::splits`]).
//! - [`chair`]: synonyms, COCO ground truth, generated captions, CHAIR_s,
//!   CHAIR_i, recall and length, with per-caption details.
//! - [`mme`]: the `lmms-lab/MME` parquet shards and the release folders,
//!   runs that write the authors' answer fields, the MME scorer with
//!   per-sub-task accuracy / accuracy+ and the perception, cognition and
//!   hallucination totals.
//! - [`analysis`]: the paper's Figures 4 and 5: CHAIR's hallucinated
//!   objects and sentences mapped onto generated tokens, the mean `H_i`
//!   and `F` of hallucinatory and other tokens, and the per-image records
//!   file of an analysis run.
//! - [`compare`]: several answer files of the same questions scored and
//!   shown side by side (POPE per split and average, MME per sub-task).
//! - [`report`]: what every metrics report records besides its numbers:
//!   the caller's [`RunSettings`], the model ids found, scored and unscored
//!   answers ([`RunInfo`]).
//! - [`runner`]: runs a shard of jobs through a [`BatchAnswerer`] (or a
//!   one-job [`Answerer`]), appending and syncing the records per batch;
//!   resumable, crash-safe, with a [`Progress`] reporter whose warnings
//!   reach stderr with or without a terminal, and a [`RunProblem`] when a
//!   run produced nothing.
//! - [`shard`] and [`merge`]: `--shard i/N` or `--shard auto` (Slurm job
//!   arrays, Kubernetes Indexed Jobs: [`Shard::from_env`]) and the
//!   exactly-once merge.
//!
//! ```no_run
//! use std::path::{Path, PathBuf};
//! use damro_eval::pope::{self, score::PopeRule};
//! use damro_eval::{runner, RunOptions, RunSettings, ShardSpec, Silent};
//! # fn main() -> damro_eval::Result<()> {
//! let questions = pope::read_questions(Path::new("coco_pope_random.json"))?;
//! let mut options = RunOptions::new("answers.jsonl", "val2014", "llava-1.5-7b");
//! // `--shard auto`: from SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX
//! options.shard = "auto".parse::<ShardSpec>()?.resolve(|k| std::env::var(k).ok(), None)?;
//! options.answers = options.shard.file_name(Path::new("answers.jsonl"));
//! options.batch_size = 8;
//! let answer = |jobs: &[runner::Job], images: &[PathBuf]| {
//!     // apply the chat template to each job.prompt, load the images,
//!     // decode them as one batch ...
//!     let outputs: Result<Vec<String>, std::convert::Infallible> =
//!         Ok(jobs.iter().map(|_| String::from("Yes")).collect());
//!     runner::whole_batch(outputs, jobs.len())
//! };
//! let summary = runner::run_pope_batched(&questions, &options, answer, &mut Silent)?;
//! println!("{summary}");
//! if let Some(problem) = summary.problem() {
//!     eprintln!("{problem}"); // exit non-zero
//! }
//! let answers = pope::read_answers(&options.answers)?;
//! let report = pope::score::score_with(&questions, &answers, PopeRule::Damro)
//!     .with_settings(RunSettings::new().with("mode", "damro").with("seed", 42));
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! Neighbours: model-free by design; the examples' `eval` command plugs in a
//! decoder from `damro-models` (through `damro-core`'s generation loop), and
//! the `damro` facade re-exports the model side.

#![warn(missing_docs)]

pub mod analysis;
mod answers_file;
pub mod chair;
pub mod compare;
mod error;
mod jsonl;
pub mod merge;
pub mod mme;
pub mod pope;
pub mod progress;
mod record;
pub mod report;
pub mod runner;
pub mod shard;

pub use error::{Error, Result};
pub use merge::{MergeKey, MergeMismatch, MergeReport, merge_answers, merge_jobs};
pub use progress::{BarProgress, Progress, Silent};
pub use record::{BadRecord, BadRecordKind, QuestionId, count_by_kind};
pub use report::{RunInfo, RunSettings};
pub use runner::{
    Answerer, BatchAnswerer, Job, RunOptions, RunProblem, RunSummary, StopReason, run, run_batched,
    run_pope, run_pope_batched,
};
pub use shard::{Shard, ShardEnvError, ShardSpec};

/// Serialises a report (or any value) as pretty JSON, for metrics files.
pub fn to_json_pretty(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|source| Error::Serialize {
        what: "a report",
        source,
    })
}

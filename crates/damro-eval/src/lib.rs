//! Evaluation for DAMRO: POPE and CHAIR in the file formats the authors
//! use, with scorers that follow the standard scripts, and a resumable,
//! shardable runner that takes any answer function. Model-free: the CLI
//! plugs a decoder in as a closure.
//!
//! - [`pope`]: question and answer files, the authors' prompt
//!   ([`pope::pope_prompt`]), the scorer ([`pope::score`]) with the
//!   standard yes/no parsing.
//! - [`chair`]: synonyms, COCO ground truth, generated captions, CHAIR_s,
//!   CHAIR_i, recall and length, with per-caption details.
//! - [`runner`]: runs a shard of jobs through an [`Answerer`], appending one
//!   record per job; resumable, crash-safe, with a [`Progress`] reporter.
//! - [`shard`] and [`merge`]: `--shard i/N` and the exactly-once merge.
//!
//! ```no_run
//! use std::path::Path;
//! use damro_eval::{pope, runner, Shard, Silent, RunOptions};
//! # fn main() -> damro_eval::Result<()> {
//! let questions = pope::read_questions(Path::new("coco_pope_random.json"))?;
//! let mut options = RunOptions::new("answers.jsonl", "val2014", "llava-1.5-7b");
//! options.shard = "0/4".parse::<Shard>()?;
//! options.answers = options.shard.file_name(Path::new("answers.jsonl"));
//! let summary = runner::run_pope(&questions, &options, |job: &runner::Job, image: &Path| {
//!     // apply the chat template to job.prompt, load `image`, decode ...
//!     Ok::<_, std::convert::Infallible>(String::from("Yes"))
//! }, &mut Silent)?;
//! println!("{summary}");
//! let report = pope::score::score(&questions, &pope::read_answers(&options.answers)?);
//! println!("{report}");
//! # Ok(()) }
//! ```

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

//! MME (Fu et al., 2023, "MME: A Comprehensive Evaluation Benchmark for
//! Multimodal Large Language Models"): 14 yes/no sub-tasks, two questions
//! per image.
//!
//! - Data: [`MmeQuestion`]s read from the parquet shards of the HF dataset
//!   `lmms-lab/MME` ([`read_parquet`]) or from the original release's
//!   folders ([`read_folder`]); the prompt is the question as given.
//! - Running: [`run`] answers them through the batched runner, writing the
//!   authors' answer fields (`question_id`, `prompt`, `gt_answer`,
//!   `output`, `category`); resumable and shardable like POPE (the runner
//!   tells the two questions of an image apart by their prompt). Images
//!   that come as bytes are written to a cache folder first ([`jobs`]).
//! - Scoring: [`score()`] with the MME rule, per sub-task accuracy,
//!   accuracy+ and score, perception / cognition / hallucination totals.

mod folder;
mod hf_parquet;
pub mod score;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pope::Label;
use crate::progress::Progress;
use crate::runner::{self, BatchAnswerer, Job, RecordExtras, RunOptions, RunSummary};
use crate::{BadRecord, Error, QuestionId, Result};

pub use folder::read_folder;
pub use hf_parquet::read_parquet;
pub use score::{MmeAnswer, MmeReport, MmeTaskScore, parse_mme_answer, score, score_answers};

/// An MME sub-task. Serialises as the name the dataset uses (`existence`,
/// `OCR`, `commonsense_reasoning`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MmeTask {
    /// Perception: object existence.
    #[serde(rename = "existence")]
    Existence,
    /// Perception: object count.
    #[serde(rename = "count")]
    Count,
    /// Perception: object position.
    #[serde(rename = "position")]
    Position,
    /// Perception: object color.
    #[serde(rename = "color")]
    Color,
    /// Perception: movie posters.
    #[serde(rename = "posters")]
    Posters,
    /// Perception: celebrities.
    #[serde(rename = "celebrity")]
    Celebrity,
    /// Perception: scenes.
    #[serde(rename = "scene")]
    Scene,
    /// Perception: landmarks.
    #[serde(rename = "landmark")]
    Landmark,
    /// Perception: artworks.
    #[serde(rename = "artwork")]
    Artwork,
    /// Perception: optical character recognition.
    #[serde(rename = "OCR")]
    Ocr,
    /// Cognition: commonsense reasoning.
    #[serde(rename = "commonsense_reasoning")]
    CommonsenseReasoning,
    /// Cognition: numerical calculation.
    #[serde(rename = "numerical_calculation")]
    NumericalCalculation,
    /// Cognition: text translation.
    #[serde(rename = "text_translation")]
    TextTranslation,
    /// Cognition: code reasoning.
    #[serde(rename = "code_reasoning")]
    CodeReasoning,
}

impl MmeTask {
    /// The ten perception sub-tasks, in the order MME lists them.
    pub const PERCEPTION: [Self; 10] = [
        Self::Existence,
        Self::Count,
        Self::Position,
        Self::Color,
        Self::Posters,
        Self::Celebrity,
        Self::Scene,
        Self::Landmark,
        Self::Artwork,
        Self::Ocr,
    ];
    /// The four cognition sub-tasks.
    pub const COGNITION: [Self; 4] = [
        Self::CommonsenseReasoning,
        Self::NumericalCalculation,
        Self::TextTranslation,
        Self::CodeReasoning,
    ];
    /// The hallucination subset (existence, count, position, color; max
    /// score 800).
    pub const HALLUCINATION: [Self; 4] =
        [Self::Existence, Self::Count, Self::Position, Self::Color];

    /// Every sub-task: perception then cognition.
    pub fn all() -> impl Iterator<Item = Self> {
        Self::PERCEPTION.into_iter().chain(Self::COGNITION)
    }

    /// The name the dataset and the release folders use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Existence => "existence",
            Self::Count => "count",
            Self::Position => "position",
            Self::Color => "color",
            Self::Posters => "posters",
            Self::Celebrity => "celebrity",
            Self::Scene => "scene",
            Self::Landmark => "landmark",
            Self::Artwork => "artwork",
            Self::Ocr => "OCR",
            Self::CommonsenseReasoning => "commonsense_reasoning",
            Self::NumericalCalculation => "numerical_calculation",
            Self::TextTranslation => "text_translation",
            Self::CodeReasoning => "code_reasoning",
        }
    }

    /// The sub-task of a name (letter case ignored), if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::all().find(|task| task.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this is a perception sub-task (else cognition).
    pub fn is_perception(self) -> bool {
        Self::PERCEPTION.contains(&self)
    }
}

impl fmt::Display for MmeTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a question's image is.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MmeImage {
    /// A file (the release folders).
    File(PathBuf),
    /// Encoded image bytes (the parquet shards); [`jobs`] writes them to a
    /// cache folder.
    Bytes(Vec<u8>),
}

impl fmt::Debug for MmeImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
        }
    }
}

/// One MME question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmeQuestion {
    /// `category/image`, e.g. `existence/000000006040.jpg`; the two
    /// questions of an image share it.
    pub question_id: String,
    /// The sub-task.
    pub task: MmeTask,
    /// The image's file name (`000000006040.jpg`).
    pub image_name: String,
    /// The image.
    pub image: MmeImage,
    /// The question, as given (it is the prompt).
    pub question: String,
    /// The ground truth.
    pub answer: Label,
    /// 0-based position among the input's records (sharding uses it).
    pub position: usize,
}

impl MmeQuestion {
    /// The prompt: the question as given (the chat template is the
    /// model's business).
    pub fn prompt(&self) -> &str {
        &self.question
    }

    /// The ground truth as the answer files write it (`Yes` / `No`).
    pub fn gt_answer(&self) -> &'static str {
        match self.answer {
            Label::Yes => "Yes",
            Label::No => "No",
        }
    }
}

/// The usable questions of an MME input and the records that were not
/// usable.
#[derive(Debug, Clone, Default)]
pub struct MmeSet {
    /// Valid questions, in input order.
    pub questions: Vec<MmeQuestion>,
    /// Unusable rows or lines (null fields, unknown answers or sub-tasks,
    /// missing images, repeated questions).
    pub bad: Vec<BadRecord>,
}

impl MmeSet {
    /// The sub-tasks present, in MME order.
    pub fn tasks(&self) -> Vec<MmeTask> {
        MmeTask::all()
            .filter(|t| self.questions.iter().any(|q| q.task == *t))
            .collect()
    }
}

/// Moves later copies of a question (same `question_id` and question) to
/// the bad records.
fn drop_duplicates(set: &mut MmeSet) {
    let mut seen = std::collections::HashSet::new();
    let questions = std::mem::take(&mut set.questions);
    for question in questions {
        if seen.insert((question.question_id.clone(), question.question.clone())) {
            set.questions.push(question);
        } else {
            set.bad.push(BadRecord {
                line: Some(question.position + 1),
                id: Some(QuestionId::Text(question.question_id.clone())),
                kind: crate::BadRecordKind::DuplicateId,
                detail: format!(
                    "question {:?} of {} already read; this copy is skipped",
                    question.question, question.question_id
                ),
            });
        }
    }
}

/// A file name that is safe to join to a folder: the last component of
/// `name`, unless that is empty or `..`.
fn safe_file_name(name: &str) -> Option<&str> {
    let last = name.rsplit(['/', '\\']).next()?;
    (!last.is_empty() && last != "." && last != "..").then_some(last)
}

/// The runner jobs of `set` (one per question, prompt = question) and the
/// extra record fields (`gt_answer`, `category`). Images given as bytes are
/// written to `image_cache/<category>/<image>` first (kept when already
/// there with the same size), so the jobs' image paths are files; they are
/// absolute, so [`RunOptions::image_dir`] does not matter.
pub fn jobs(set: &MmeSet, image_cache: &Path) -> Result<(Vec<Job>, Vec<RecordExtras>)> {
    let mut jobs = Vec::with_capacity(set.questions.len());
    let mut extras = Vec::with_capacity(set.questions.len());
    for question in &set.questions {
        let path = match &question.image {
            MmeImage::File(path) => path.clone(),
            MmeImage::Bytes(bytes) => cache_image(question, bytes, image_cache)?,
        };
        let path = std::path::absolute(&path).map_err(|e| Error::io("resolving", &path, e))?;
        let image = path
            .to_str()
            .ok_or_else(|| Error::MmeInput {
                path: path.clone(),
                reason: "the image path is not UTF-8".into(),
            })?
            .to_owned();
        jobs.push(Job {
            id: QuestionId::Text(question.question_id.clone()),
            image,
            prompt: question.question.clone(),
            position: question.position,
        });
        extras.push(RecordExtras {
            gt_answer: Some(question.gt_answer().to_owned()),
            category: Some(question.task.name().to_owned()),
        });
    }
    Ok((jobs, extras))
}

/// Writes an image's bytes into the cache unless a file of that size is
/// already there.
fn cache_image(question: &MmeQuestion, bytes: &[u8], cache: &Path) -> Result<PathBuf> {
    let name = safe_file_name(&question.image_name).ok_or_else(|| Error::MmeInput {
        path: cache.to_path_buf(),
        reason: format!("question {} has no usable image name", question.question_id),
    })?;
    let folder = cache.join(question.task.name());
    let path = folder.join(name);
    let same = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64);
    if !same {
        std::fs::create_dir_all(&folder).map_err(|e| Error::io("creating", &folder, e))?;
        crate::merge::write_atomically(&path, bytes)?;
    }
    Ok(path)
}

/// Merges the answers files of a sharded MME run into `out` after checking
/// that they answer every question of `set` exactly once (by
/// `question_id` and prompt; see [`crate::merge`]).
pub fn merge(set: &MmeSet, shard_files: &[PathBuf], out: &Path) -> Result<crate::MergeReport> {
    let jobs: Vec<Job> = set
        .questions
        .iter()
        .map(|q| Job {
            id: QuestionId::Text(q.question_id.clone()),
            image: q.image_name.clone(),
            prompt: q.question.clone(),
            position: q.position,
        })
        .collect();
    crate::merge::merge_jobs(&jobs, shard_files, out)
}

/// Answers the questions of `set` in `options.shard` that the answers file
/// does not answer yet (see [`runner`]), [`RunOptions::batch_size`] per
/// call of `answerer`. Records carry the authors' fields: `question_id`,
/// `prompt` (the question), `gt_answer`, `output`, `category` (and the
/// runner's `model_id`, `image`, `mode`). Bytes images are cached under
/// `image_cache` ([`jobs`]). The input's problems are reported to
/// `progress` and kept in [`RunSummary::bad_input`].
pub fn run(
    set: &MmeSet,
    image_cache: &Path,
    options: &RunOptions,
    answerer: impl BatchAnswerer,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let (jobs, extras) = jobs(set, image_cache)?;
    let bad_input = set
        .bad
        .iter()
        .filter(|b| {
            b.line
                .is_none_or(|line| options.shard.contains(line.saturating_sub(1)))
        })
        .cloned()
        .collect();
    runner::run_batched_with_extras(&jobs, &extras, bad_input, options, answerer, progress)
}

//! COCO inputs of CHAIR: ground-truth objects from instance and caption
//! annotations, and the generated captions to score.
//!
//! # Ground truth
//! As in the standard script, an image's ground-truth objects are the union
//! of
//! - the canonical object of every instance annotation's category (category
//!   name looked up in the synonyms file; a name that is not there is an
//!   error, as in the standard script), and
//! - every object mentioned in the image's human reference captions,
//!   found with the same word rules as the generated captions.
//!
//! The standard script reads the 2014 train and val files of a folder; here
//! the caller passes any number of instance and caption files by path
//! (typically `instances_val2014.json` and `captions_val2014.json`, plus the
//! train files to match the script exactly; only images that appear in both
//! the annotation files and the generated captions matter). Only the images
//! of interest are kept, which gives the same result with less memory.
//!
//! # Generated captions
//! JSON lines (or one JSON array) of objects with `image_id` (an integer, or
//! a string of digits) and `caption`. The runner's answer records are read
//! too: `question_id` is accepted for `image_id`, and `output` or `text` for
//! `caption`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ChairEvaluator;
use crate::jsonl::{self, Line};
use crate::{BadRecord, BadRecordKind, Error, QuestionId, Result};

/// The parts of an instances file CHAIR needs; every other field (the
/// segmentations, which are most of the file) is skipped unparsed.
#[derive(Deserialize)]
struct InstancesFile {
    #[serde(default)]
    annotations: Vec<InstanceAnnotation>,
    #[serde(default)]
    categories: Vec<Category>,
}

#[derive(Deserialize)]
struct InstanceAnnotation {
    image_id: u64,
    category_id: u64,
}

#[derive(Deserialize)]
struct Category {
    id: u64,
    name: String,
}

#[derive(Deserialize)]
struct CaptionsFile {
    #[serde(default)]
    annotations: Vec<CaptionAnnotation>,
}

#[derive(Deserialize)]
struct CaptionAnnotation {
    image_id: u64,
    caption: String,
}

/// Reads a whole JSON file (parsing from memory is several times faster
/// than from a reader on the ~100-300 MB COCO files).
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = jsonl::read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Ground-truth objects per COCO image id.
#[derive(Debug, Clone, Default)]
pub struct GroundTruth {
    objects: HashMap<u64, BTreeSet<String>>,
}

impl GroundTruth {
    /// Builds the ground truth from COCO annotation files (see the module
    /// docs). With `only`, images outside that set are skipped.
    pub fn from_coco(
        evaluator: &ChairEvaluator,
        instance_files: &[PathBuf],
        caption_files: &[PathBuf],
        only: Option<&HashSet<u64>>,
    ) -> Result<Self> {
        let wanted = |id: &u64| only.is_none_or(|set| set.contains(id));
        let mut gt = Self::default();
        for path in instance_files {
            let file: InstancesFile = read_json(path)?;
            let names: HashMap<u64, &str> = file
                .categories
                .iter()
                .map(|c| (c.id, c.name.as_str()))
                .collect();
            for annotation in file.annotations.iter().filter(|a| wanted(&a.image_id)) {
                let name =
                    names
                        .get(&annotation.category_id)
                        .ok_or_else(|| Error::UnknownCategoryId {
                            path: path.clone(),
                            category_id: annotation.category_id,
                        })?;
                let object = evaluator.synonyms().object_of(name).ok_or_else(|| {
                    Error::CategoryNotInSynonyms {
                        path: path.clone(),
                        name: (*name).to_owned(),
                    }
                })?;
                gt.add(annotation.image_id, object);
            }
        }
        for path in caption_files {
            let file: CaptionsFile = read_json(path)?;
            for annotation in file.annotations.iter().filter(|a| wanted(&a.image_id)) {
                let entry = gt.objects.entry(annotation.image_id).or_default();
                for mention in evaluator.caption_objects(&annotation.caption).mentions {
                    entry.insert(mention.object);
                }
            }
        }
        Ok(gt)
    }

    /// Adds one ground-truth object of an image.
    pub fn add(&mut self, image_id: u64, object: &str) {
        self.objects
            .entry(image_id)
            .or_default()
            .insert(object.to_owned());
    }

    /// The image's ground-truth objects, or `None` if no annotation file
    /// mentions the image.
    pub fn objects(&self, image_id: u64) -> Option<&BTreeSet<String>> {
        self.objects.get(&image_id)
    }
}

/// One generated caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCaption {
    /// The COCO image id.
    pub image_id: u64,
    /// The caption text.
    pub caption: String,
    /// The record's `model_id` (empty when the file has none).
    pub model_id: String,
}

/// The usable captions of a file and the records that were not usable.
#[derive(Debug, Clone, Default)]
pub struct CaptionSet {
    /// Captions in file order (an image may appear more than once; each is
    /// scored, as in the standard script).
    pub captions: Vec<GeneratedCaption>,
    /// Malformed lines.
    pub bad: Vec<BadRecord>,
}

impl CaptionSet {
    /// The distinct image ids, e.g. for [`GroundTruth::from_coco`]'s `only`.
    pub fn image_ids(&self) -> HashSet<u64> {
        self.captions.iter().map(|c| c.image_id).collect()
    }
}

#[derive(Deserialize)]
struct RawCaption {
    #[serde(alias = "question_id")]
    image_id: QuestionId,
    #[serde(alias = "output", alias = "text")]
    caption: String,
    #[serde(default)]
    model_id: String,
}

fn caption_from_raw(
    raw: RawCaption,
) -> std::result::Result<GeneratedCaption, (Option<QuestionId>, String)> {
    let image_id = match &raw.image_id {
        QuestionId::Int(id) => u64::try_from(*id).ok(),
        QuestionId::Text(text) => text.trim().parse().ok(),
    };
    match image_id {
        Some(image_id) => Ok(GeneratedCaption {
            image_id,
            caption: raw.caption,
            model_id: raw.model_id,
        }),
        None => Err((
            Some(raw.image_id),
            "`image_id` is not a non-negative integer".into(),
        )),
    }
}

/// Reads generated captions (see the module docs).
pub fn read_captions(path: &Path) -> Result<CaptionSet> {
    let bytes = jsonl::read_file(path)?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let values: Vec<serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                path: path.to_path_buf(),
                source,
            })?;
        return Ok(captions_from_array(values));
    }
    Ok(parse_captions(&bytes))
}

/// Parses JSON-lines captions; see [`read_captions`].
pub fn parse_captions(bytes: &[u8]) -> CaptionSet {
    let mut set = CaptionSet::default();
    for line in jsonl::split_lines(bytes, true) {
        match caption_from_line(&line) {
            Ok(caption) => set.captions.push(caption),
            Err(bad) => set.bad.push(bad),
        }
    }
    set
}

fn caption_from_line(line: &Line<'_>) -> std::result::Result<GeneratedCaption, BadRecord> {
    let raw: RawCaption = jsonl::parse_line(line)?;
    caption_from_raw(raw).map_err(|(id, detail)| BadRecord {
        line: Some(line.number()),
        id,
        kind: BadRecordKind::MalformedLine,
        detail,
    })
}

fn captions_from_array(values: Vec<serde_json::Value>) -> CaptionSet {
    let mut set = CaptionSet::default();
    for (index, value) in values.into_iter().enumerate() {
        let parsed = serde_json::from_value::<RawCaption>(value)
            .map_err(|e| (None, e.to_string()))
            .and_then(caption_from_raw);
        match parsed {
            Ok(caption) => set.captions.push(caption),
            Err((id, detail)) => set.bad.push(BadRecord {
                line: None,
                id,
                kind: BadRecordKind::MalformedLine,
                detail: format!("array element {index}: {detail}"),
            }),
        }
    }
    set
}

/// The COCO image id in an image file name: the digits at the end of the
/// stem (`COCO_val2014_000000397133.jpg` and `000000397133.jpg` → 397133).
pub fn coco_image_id(file_name: &str) -> Option<u64> {
    let stem = Path::new(file_name).file_stem()?.to_str()?;
    let digits = stem.len() - stem.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    stem[stem.len() - digits..].parse().ok()
}

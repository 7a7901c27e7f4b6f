//! CHAIR scoring of generated captions against ground truth (definitions in
//! the [parent module](super)).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{CaptionSet, ChairEvaluator, GroundTruth, Mention};
use crate::{RunInfo, RunSettings};

/// The per-caption result, as in the standard script's `sentences` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionDetail {
    /// The COCO image id.
    pub image_id: u64,
    /// The generated caption.
    pub caption: String,
    /// Object words in the caption, in order, repeats included.
    pub mentioned: Vec<Mention>,
    /// The image's ground-truth objects (sorted).
    pub ground_truth: Vec<String>,
    /// Mentions whose object is not in the ground truth.
    pub hallucinated: Vec<Mention>,
    /// Ground-truth objects the caption mentions (distinct, sorted).
    pub recalled: Vec<String>,
    /// Whether any mention is hallucinated (this caption's CHAIR_s).
    pub chair_s: bool,
    /// Hallucinated / all mentions (0 without mentions).
    pub chair_i: f64,
    /// Recalled / ground-truth objects (0 without ground truth).
    pub recall: f64,
    /// Number of words (see [`super::words`]).
    pub len: usize,
    /// The image has no annotation at all in the given files, so every
    /// mention counts as hallucinated (as in the standard script).
    pub no_ground_truth: bool,
}

/// The counts behind the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChairCounts {
    /// Captions scored.
    pub captions: usize,
    /// Captions with at least one hallucinated mention.
    pub hallucinated_captions: usize,
    /// Object mentions, repeats included.
    pub mentions: usize,
    /// Hallucinated mentions.
    pub hallucinated_mentions: usize,
    /// Σ over captions of the image's ground-truth object count.
    pub ground_truth_objects: usize,
    /// Σ over captions of the ground-truth objects mentioned.
    pub recalled_objects: usize,
    /// Σ of caption lengths in words.
    pub words: usize,
    /// Captions whose image has no annotation in the given files.
    pub captions_without_ground_truth: usize,
    /// Caption records that could not be read (not scored).
    pub bad_captions: usize,
}

/// CHAIR metrics, as fractions (`avg_len` in words).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ChairMetrics {
    /// Share of captions with a hallucinated object.
    pub chair_s: f64,
    /// Share of object mentions that are hallucinated.
    pub chair_i: f64,
    /// Share of ground-truth objects mentioned.
    pub recall: f64,
    /// Mean caption length in words.
    pub avg_len: f64,
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl ChairMetrics {
    /// The metrics from the counts.
    pub fn from_counts(c: &ChairCounts) -> Self {
        Self {
            chair_s: ratio(c.hallucinated_captions, c.captions),
            chair_i: ratio(c.hallucinated_mentions, c.mentions),
            recall: ratio(c.recalled_objects, c.ground_truth_objects),
            avg_len: ratio(c.words, c.captions),
        }
    }
}

/// Metrics, counts and per-caption details. Serialises to the metrics JSON
/// (the details only while [`ChairReport::captions`] is not empty: take
/// them out with [`ChairReport::take_details`] for a short metrics file);
/// `Display` is the plain-text summary table (without the details).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChairReport {
    /// Settings, model ids, scored captions and unreadable caption records.
    #[serde(flatten)]
    pub info: RunInfo,
    /// CHAIR_s, CHAIR_i, recall, average length.
    pub metrics: ChairMetrics,
    /// The counts behind them.
    pub counts: ChairCounts,
    /// One entry per scored caption, in input order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub captions: Vec<CaptionDetail>,
}

impl ChairReport {
    /// The report with the caller's run settings recorded.
    pub fn with_settings(mut self, settings: RunSettings) -> Self {
        self.info.settings = settings;
        self
    }

    /// Moves the per-caption details out (e.g. to write them to their own
    /// file), leaving the summary.
    pub fn take_details(&mut self) -> Vec<CaptionDetail> {
        std::mem::take(&mut self.captions)
    }

    /// Whether no caption was scored (see [`RunInfo::nothing_scored`]).
    pub fn nothing_scored(&self) -> bool {
        self.info.nothing_scored()
    }
}

/// Scores every caption of `captions` (see the parent module for the
/// definitions).
pub fn score(
    evaluator: &ChairEvaluator,
    ground_truth: &GroundTruth,
    captions: &CaptionSet,
) -> ChairReport {
    let empty = BTreeSet::new();
    let mut counts = ChairCounts {
        bad_captions: captions.bad.len(),
        ..ChairCounts::default()
    };
    let mut details = Vec::with_capacity(captions.captions.len());
    for generated in &captions.captions {
        let found = evaluator.caption_objects(&generated.caption);
        let gt_objects = ground_truth.objects(generated.image_id);
        let gt = gt_objects.unwrap_or(&empty);
        let (kept, hallucinated): (Vec<&Mention>, Vec<&Mention>) =
            found.mentions.iter().partition(|m| gt.contains(&m.object));
        let recalled: BTreeSet<&str> = kept.iter().map(|m| m.object.as_str()).collect();

        counts.captions += 1;
        counts.hallucinated_captions += usize::from(!hallucinated.is_empty());
        counts.mentions += found.mentions.len();
        counts.hallucinated_mentions += hallucinated.len();
        counts.ground_truth_objects += gt.len();
        counts.recalled_objects += recalled.len();
        counts.words += found.words.len();
        counts.captions_without_ground_truth += usize::from(gt_objects.is_none());

        details.push(CaptionDetail {
            image_id: generated.image_id,
            caption: generated.caption.clone(),
            ground_truth: gt.iter().cloned().collect(),
            hallucinated: hallucinated.iter().map(|m| (*m).clone()).collect(),
            recalled: recalled.iter().map(|s| (*s).to_owned()).collect(),
            chair_s: !hallucinated.is_empty(),
            chair_i: ratio(hallucinated.len(), found.mentions.len()),
            recall: ratio(recalled.len(), gt.len()),
            len: found.words.len(),
            no_ground_truth: gt_objects.is_none(),
            mentioned: found.mentions,
        });
    }
    ChairReport {
        info: RunInfo::new(
            captions.captions.iter().map(|c| c.model_id.as_str()),
            counts.captions,
            counts.bad_captions,
        ),
        metrics: ChairMetrics::from_counts(&counts),
        counts,
        captions: details,
    }
}

impl fmt::Display for ChairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, c) = (&self.metrics, &self.counts);
        writeln!(f, "CHAIR")?;
        let info = self.info.describe();
        if !info.is_empty() {
            writeln!(f, "  {info}")?;
        }
        writeln!(f, "  captions            {:>8}", c.captions)?;
        writeln!(
            f,
            "  CHAIR_s             {:>8.2}  ({} / {})",
            100.0 * m.chair_s,
            c.hallucinated_captions,
            c.captions
        )?;
        writeln!(
            f,
            "  CHAIR_i             {:>8.2}  ({} / {})",
            100.0 * m.chair_i,
            c.hallucinated_mentions,
            c.mentions
        )?;
        writeln!(
            f,
            "  recall              {:>8.2}  ({} / {})",
            100.0 * m.recall,
            c.recalled_objects,
            c.ground_truth_objects
        )?;
        writeln!(f, "  avg length (words)  {:>8.2}", m.avg_len)?;
        writeln!(
            f,
            "  no ground truth     {:>8}",
            c.captions_without_ground_truth
        )?;
        write!(f, "  bad caption lines   {:>8}", c.bad_captions)
    }
}

//! CHAIR (Rohrbach et al., EMNLP 2018, "Object Hallucination in Image
//! Captioning"): how many objects a caption mentions that are not in the
//! image.
//!
//! Follows the `chair.py` that the LVLM decoding papers use (the OPERA /
//! Maxlinn Python 3 version of Rohrbach et al.'s script, which adds recall
//! and caption length):
//!
//! - a caption's **mentions** are its words that are synonyms of a COCO
//!   object, each mapped to its canonical object; repeated words count
//!   every time. If the caption has both `toilet` and `seat`, `seat` is
//!   dropped (a toilet seat is not a chair);
//! - a mention is **hallucinated** if its object is not among the image's
//!   ground-truth objects ([`coco`]);
//! - `CHAIR_s` = captions with at least one hallucinated mention / captions;
//! - `CHAIR_i` = hallucinated mentions / all mentions;
//! - `recall` = Σ ground-truth objects mentioned (distinct, per caption) /
//!   Σ ground-truth objects (per caption);
//! - `avg_len` = mean number of words per caption (tokens after two-word
//!   phrases are joined, punctuation included). The OPERA script stores
//!   this divided by 100 so that its "× 100" printout shows the mean; here
//!   it is the mean itself.
//!
//! Word handling and its simplifications relative to NLTK are in
//! [`words`]; the synonyms file format in [`synonyms`]; ground truth and
//! input files in [`coco`]; the scoring in [`mod@score`]. Other deviations: a
//! ratio whose denominator is 0 is 0.0 (the script raises
//! `ZeroDivisionError`), and malformed caption lines are reported and
//! skipped (the script stops).

pub mod coco;
pub mod score;
pub mod synonyms;
pub mod words;

use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use coco::{CaptionSet, GeneratedCaption, GroundTruth, coco_image_id, read_captions};
pub use score::{CaptionDetail, ChairCounts, ChairMetrics, ChairReport, score};
pub use synonyms::Synonyms;

use crate::Result;
use words::{SpannedToken, WordRules};

/// One object word in a caption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mention {
    /// The word as found (singular, two-word phrases joined).
    pub word: String,
    /// Its canonical COCO object.
    pub object: String,
}

/// A caption's words and the object words among them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptionObjects {
    /// Every word, in order (see [`words`]).
    pub words: Vec<String>,
    /// The object words, in order, repeats included.
    pub mentions: Vec<Mention>,
}

/// Finds COCO objects in captions with one synonyms file's rules.
#[derive(Debug, Clone)]
pub struct ChairEvaluator {
    synonyms: Synonyms,
    rules: WordRules,
}

impl ChairEvaluator {
    /// An evaluator for these synonyms.
    pub fn new(synonyms: Synonyms) -> Self {
        let rules = WordRules::new(&synonyms);
        Self { synonyms, rules }
    }

    /// Reads the synonyms file at `path` (see [`synonyms`]).
    pub fn from_synonyms_file(path: &Path) -> Result<Self> {
        Ok(Self::new(Synonyms::read(path)?))
    }

    /// The synonyms in use.
    pub fn synonyms(&self) -> &Synonyms {
        &self.synonyms
    }

    /// The words of `caption` and the objects it mentions.
    pub fn caption_objects(&self, caption: &str) -> CaptionObjects {
        let (words, mentions) = self.spanned_objects(caption);
        CaptionObjects {
            words: words.into_iter().map(|w| w.text).collect(),
            mentions: mentions.into_iter().map(|m| m.mention).collect(),
        }
    }

    /// The mentions of [`Self::caption_objects`], each with the byte range
    /// of its word in `caption` (for the paper's analysis, which maps
    /// object words to generated tokens).
    pub fn mention_spans(&self, caption: &str) -> Vec<SpannedMention> {
        self.spanned_objects(caption).1
    }

    fn spanned_objects(&self, caption: &str) -> (Vec<SpannedToken>, Vec<SpannedMention>) {
        let words = self.rules.spanned_words(caption);
        let has = |w: &str| words.iter().any(|x| x.text == w);
        let drop_seat = has("toilet") && has("seat");
        let mentions = words
            .iter()
            .filter(|w| !(drop_seat && w.text == "seat"))
            .filter_map(|w| {
                let object = self.synonyms.object_of(&w.text)?.to_owned();
                Some(SpannedMention {
                    mention: Mention {
                        word: w.text.clone(),
                        object,
                    },
                    span: w.span.clone(),
                })
            })
            .collect();
        (words, mentions)
    }
}

/// A [`Mention`] and where its word is in the caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpannedMention {
    /// The object word and its object.
    pub mention: Mention,
    /// The word's bytes in the caption (both words of a joined phrase).
    pub span: Range<usize>,
}

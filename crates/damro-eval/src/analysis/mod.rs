//! The paper's analysis of hallucinations (Sec. 2.3, Figures 4 and 5),
//! model-free: given each generated token's text piece and its attention
//! measures (`H_1..H_10` and `F`, from `damro::analysis::token_metrics`),
//! which tokens belong to hallucinated objects and sentences, and the
//! mean `H_i` and `F` of each group.
//!
//! - [`pieces`]: the text each token adds (decoding the growing prefix)
//!   and where it lies in the text;
//! - [`marking`]: CHAIR's object words ([`crate::chair`]) and the
//!   sentences, marked hallucinatory or not, mapped onto the tokens;
//! - [`aggregate`]: the means per level and group, as the CSV of Figure 4
//!   and the Markdown / JSON tables of Figures 4 and 5;
//! - [`records`]: the per-image records file that `analyze run` writes
//!   beside the runner's answers, and its reader.
//!
//! ```
//! use std::collections::BTreeSet;
//! use damro_eval::analysis::{Aggregator, Group, TokenRecord, mark_caption};
//! use damro_eval::chair::{ChairEvaluator, Synonyms};
//!
//! let chair = ChairEvaluator::new(Synonyms::parse("dog, puppy\ncat\n"));
//! let truth: BTreeSet<String> = ["dog".to_owned()].into();
//! let pieces = ["A", " dog", " and", " a", " cat", "."].map(String::from);
//! let marks = mark_caption(&chair, &truth, &pieces);
//! assert_eq!(marks.tokens[4].object_group, Some(Group::Hallucinatory)); // " cat"
//! assert_eq!(marks.tokens[1].object_group, Some(Group::NonHallucinatory)); // " dog"
//!
//! let tokens: Vec<TokenRecord> = pieces
//!     .iter()
//!     .map(|p| TokenRecord::overlap(p.clone(), vec![1.0, 0.5], 0.1))
//!     .collect();
//! let mut figures = Aggregator::new(2);
//! figures.add(&marks, &tokens).unwrap();
//! let summary = figures.summary();
//! // The one sentence mentions a hallucinated cat: all 6 tokens are HA.
//! assert_eq!(summary.sentence.hallucinatory.tokens, 6);
//! assert_eq!(summary.object.non_hallucinatory.mean_h, [Some(1.0), Some(0.5)]);
//! ```

pub mod aggregate;
pub mod marking;
pub mod pieces;
pub mod records;

pub use aggregate::{Aggregator, AnalysisSummary, GroupSummary, Level, LevelSummary};
pub use marking::{CaptionMarks, Group, ObjectMark, SentenceMark, TokenMark, mark_caption};
pub use pieces::{incremental_pieces, token_spans};
pub use records::{CaptionAnalysis, Measures, RecordSet, RecordsFile, TokenRecord, read_records};

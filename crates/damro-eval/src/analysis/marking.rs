//! Which generated tokens belong to hallucinations, at the paper's two
//! levels (Sec. 2.3, Figures 4 and 5):
//!
//! - **sentence level**: every token of a sentence that mentions a
//!   hallucinated object (CHAIR: an object word whose object is not in the
//!   image's ground truth) is hallucinatory; the tokens of the other
//!   sentences are not;
//! - **object level**: the tokens of hallucinated object words are
//!   hallucinatory, the tokens of correctly mentioned object words are
//!   not; other tokens are left out.
//!
//! Object words are found by [`ChairEvaluator::mention_spans`] (the CHAIR
//! rules: synonyms, plurals, two-word phrases, the toilet-seat rule) in
//! the concatenation of the tokens' pieces ([`super::pieces`]). A token
//! belongs to a word when its visible text overlaps the word; a token
//! that overlaps a hallucinated and a correct word counts as
//! hallucinatory. Sentences end after `.`, `!` or `?` (with any closing
//! quotes or brackets) followed by whitespace or the end of the text, and
//! at line breaks; a token belongs to the sentence its first visible
//! character is in. Tokens without visible text (end of sequence,
//! whitespace) are in no sentence and no word.

use std::collections::BTreeSet;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::pieces::{token_spans, visible_span};
use crate::chair::ChairEvaluator;

/// Which side of the paper's split a token is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Hallucinatory (HA).
    Hallucinatory,
    /// Not hallucinatory (non-HA).
    NonHallucinatory,
}

impl Group {
    /// Both groups, hallucinatory first.
    pub const ALL: [Self; 2] = [Self::Hallucinatory, Self::NonHallucinatory];

    /// `hallucinatory` / `non_hallucinatory`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hallucinatory => "hallucinatory",
            Self::NonHallucinatory => "non_hallucinatory",
        }
    }

    fn of(hallucinated: bool) -> Self {
        if hallucinated {
            Self::Hallucinatory
        } else {
            Self::NonHallucinatory
        }
    }
}

/// One sentence of the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentenceMark {
    /// Its bytes in the text (from the end of the previous sentence).
    pub span: Range<usize>,
    /// Whether it mentions a hallucinated object.
    pub hallucinated: bool,
}

/// One object word of the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMark {
    /// The word (singular, phrases joined), as CHAIR found it.
    pub word: String,
    /// Its COCO object.
    pub object: String,
    /// Its bytes in the text.
    pub span: Range<usize>,
    /// Whether its object is not in the image's ground truth.
    pub hallucinated: bool,
    /// The tokens that make it up (indices into the generation).
    pub tokens: Vec<usize>,
}

/// Where one generated token falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenMark {
    /// The sentence it is in (an index into [`CaptionMarks::sentences`]),
    /// `None` without visible text.
    pub sentence: Option<usize>,
    /// Its sentence-level group (`None` without a sentence).
    pub sentence_group: Option<Group>,
    /// Its object-level group (`None` when it is in no object word).
    pub object_group: Option<Group>,
}

/// A caption's sentences, object words and per-token marks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CaptionMarks {
    /// The text the marks refer to: the pieces' concatenation.
    pub text: String,
    /// Its sentences, in order.
    pub sentences: Vec<SentenceMark>,
    /// Its object words, in order.
    pub objects: Vec<ObjectMark>,
    /// One entry per generated token.
    pub tokens: Vec<TokenMark>,
}

/// Marks the tokens whose text pieces are `pieces` against the image's
/// ground-truth objects `truth` (see the module docs).
pub fn mark_caption(
    evaluator: &ChairEvaluator,
    truth: &BTreeSet<String>,
    pieces: &[String],
) -> CaptionMarks {
    let text = pieces.concat();
    let visible: Vec<Option<Range<usize>>> = token_spans(pieces)
        .iter()
        .map(|span| visible_span(&text, span))
        .collect();
    let overlapping = |span: &Range<usize>| -> Vec<usize> {
        (0..visible.len())
            .filter(|&t| {
                visible[t]
                    .as_ref()
                    .is_some_and(|v| v.start < span.end && span.start < v.end)
            })
            .collect()
    };
    let objects: Vec<ObjectMark> = evaluator
        .mention_spans(&text)
        .into_iter()
        .map(|m| ObjectMark {
            hallucinated: !truth.contains(&m.mention.object),
            tokens: overlapping(&m.span),
            word: m.mention.word,
            object: m.mention.object,
            span: m.span,
        })
        .collect();
    let sentences: Vec<SentenceMark> = sentence_spans(&text)
        .into_iter()
        .map(|span| SentenceMark {
            hallucinated: objects
                .iter()
                .any(|o| o.hallucinated && span.contains(&o.span.start)),
            span,
        })
        .collect();
    let tokens = visible
        .iter()
        .enumerate()
        .map(|(t, span)| {
            let sentence = span
                .as_ref()
                .and_then(|v| sentences.iter().position(|s| s.span.contains(&v.start)));
            let in_object = |hallucinated: bool| {
                objects
                    .iter()
                    .any(|o| o.hallucinated == hallucinated && o.tokens.contains(&t))
            };
            let object_group = if in_object(true) {
                Some(Group::Hallucinatory)
            } else if in_object(false) {
                Some(Group::NonHallucinatory)
            } else {
                None
            };
            TokenMark {
                sentence,
                sentence_group: sentence.map(|s| Group::of(sentences[s].hallucinated)),
                object_group,
            }
        })
        .collect();
    CaptionMarks {
        text,
        sentences,
        objects,
        tokens,
    }
}

/// The sentences of `text` as consecutive byte ranges that cover it (see
/// the module docs); whitespace between sentences starts the next one,
/// whitespace after the last one ends it. Empty for a text of only
/// whitespace.
pub fn sentence_spans(text: &str) -> Vec<Range<usize>> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let mut spans = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        let end = if c == '\n' {
            Some(i + 1)
        } else if matches!(c, '.' | '!' | '?') {
            let mut j = i + 1;
            while chars
                .get(j)
                .is_some_and(|&(_, c)| matches!(c, '.' | '!' | '?' | '"' | '\'' | ')' | ']'))
            {
                j += 1;
            }
            let next = chars.get(j).map(|&(_, c)| c);
            next.is_none_or(char::is_whitespace).then_some(j)
        } else {
            None
        };
        match end {
            Some(end) => {
                // Whitespace-only stretches (blank lines) join the next
                // sentence.
                if !text[start..byte(end)].trim().is_empty() {
                    spans.push(start..byte(end));
                    start = byte(end);
                }
                i = end;
            }
            None => i += 1,
        }
    }
    if start < text.len() {
        let blank = text[start..].trim().is_empty();
        match spans.last_mut() {
            Some(last) if blank => last.end = text.len(),
            _ if blank => {}
            _ => spans.push(start..text.len()),
        }
    }
    spans
}

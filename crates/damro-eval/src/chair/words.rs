//! Caption text to words, as the CHAIR script prepares it, without NLTK.
//!
//! The standard script (Rohrbach et al.'s `chair.py`; the OPERA / Maxlinn
//! version the LVLM decoding papers use) lower-cases the caption, tokenises
//! it with NLTK's `word_tokenize`, lemmatises each token with WordNet using
//! NLTK's POS tags (the original used `pattern.en.singularize`), then joins
//! known two-word phrases into one word. This module does the same steps
//! with these simplifications:
//!
//! - **Tokens** ([`tokenize`]): runs of letters and digits, with a hyphen
//!   between two such characters kept inside the token (NLTK keeps
//!   `hot-dog` and `t-shirt` whole, so they match no object), a `.` or `,`
//!   between digits kept inside (`3.5`), a clitic `'s` / `'re` / `n't`
//!   split off as its own token, a run of `.` as one token, and every other
//!   non-space character as a token of its own. NLTK's other special cases
//!   (`cannot` → `can not`, quote conversion, abbreviations) are not
//!   reproduced; they only change the token count used for the average
//!   length, never which objects are found.
//! - **Singular forms** ([`singularize`]) instead of WordNet: a table of
//!   irregular plurals (`men`, `children`, `mice`, `knives`, `geese`, ...)
//!   and WordNet's own noun suffix rules (`-s`, `-ses`, `-xes`, `-zes`,
//!   `-ches`, `-shes`, `-men`, `-ies` → `-y`); like WordNet's `morphy`, the
//!   candidates are checked against a dictionary and the shortest one found
//!   is kept. The dictionary here is the CHAIR vocabulary (every word of the
//!   synonyms and of the two-word phrases), not all of WordNet, which is
//!   all that matters for finding objects. A word with no candidate in the
//!   vocabulary gets a rule-based singular (only displayed, never matched).
//! - **No POS tagging.** Nouns only: verb and adjective forms are not
//!   lemmatised. The OPERA script's POS-aware lemmatiser also turns some
//!   verb forms into object words (`seated` → `seat` → chair, `skiing` →
//!   `ski` → skis when tagged as verbs); those are not counted here.
//! - **Two-word phrases**: the standard script's fixed list (`motor bike`,
//!   `hot dog`, `teddy bear`, `stop sign`, `train track`, ...; `baby` /
//!   `adult` + animal → the animal, `passenger jet` / `passenger train` →
//!   the vehicle, `bow tie` → tie, `toilet seat` → toilet, `wine glas` →
//!   wine glass), plus every two-word entry of the synonyms file (e.g.
//!   `dining table`) that the list lacks. For the standard synonyms file
//!   this addition changes no count (`table` maps to dining table anyway).

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::Synonyms;

/// The standard script's fixed two-word phrases that stand for themselves.
const DOUBLE_WORDS: [&str; 27] = [
    "motor bike",
    "motor cycle",
    "air plane",
    "traffic light",
    "street light",
    "traffic signal",
    "stop light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "suit case",
    "sports ball",
    "baseball bat",
    "baseball glove",
    "tennis racket",
    "wine glass",
    "hot dog",
    "cell phone",
    "mobile phone",
    "teddy bear",
    "hair drier",
    "potted plant",
    "bow tie",
    "laptop computer",
    "stove top oven",
    "home plate",
    "train track",
];

/// Animals that `baby X` / `adult X` reduce to (not a person).
const ANIMALS: [&str; 12] = [
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "animal", "cub",
];

/// Vehicles that `passenger X` reduces to (not a person).
const VEHICLES: [&str; 2] = ["jet", "train"];

/// Phrases that reduce to another word.
const REDUCED: [(&str, &str); 3] = [
    ("bow tie", "tie"),
    ("toilet seat", "toilet"),
    ("wine glas", "wine glass"),
];

/// Irregular plurals WordNet knows (from its noun exception list) that can
/// matter for COCO objects.
const IRREGULAR: [(&str, &str); 27] = [
    ("men", "man"),
    ("women", "woman"),
    ("children", "child"),
    ("mice", "mouse"),
    ("geese", "goose"),
    ("feet", "foot"),
    ("teeth", "tooth"),
    ("oxen", "ox"),
    ("knives", "knife"),
    ("wives", "wife"),
    ("lives", "life"),
    ("leaves", "leaf"),
    ("loaves", "loaf"),
    ("shelves", "shelf"),
    ("halves", "half"),
    ("calves", "calf"),
    ("wolves", "wolf"),
    ("scarves", "scarf"),
    ("thieves", "thief"),
    ("dice", "die"),
    ("lice", "louse"),
    ("cacti", "cactus"),
    ("buses", "bus"),
    ("tomatoes", "tomato"),
    ("potatoes", "potato"),
    ("mangoes", "mango"),
    ("hooves", "hoof"),
];

/// WordNet's noun suffix rules (suffix → replacement).
const SUFFIX_RULES: [(&str, &str); 8] = [
    ("s", ""),
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
];

/// The word-level rules, built once per synonyms file.
#[derive(Debug, Clone)]
pub(crate) struct WordRules {
    vocab: HashSet<String>,
    double_words: HashMap<String, String>,
}

impl WordRules {
    pub(crate) fn new(synonyms: &Synonyms) -> Self {
        let mut double_words: HashMap<String, String> = HashMap::new();
        for phrase in DOUBLE_WORDS {
            double_words.insert(phrase.into(), phrase.into());
        }
        for animal in ANIMALS {
            double_words.insert(format!("baby {animal}"), animal.into());
            double_words.insert(format!("adult {animal}"), animal.into());
        }
        for vehicle in VEHICLES {
            double_words.insert(format!("passenger {vehicle}"), vehicle.into());
        }
        for (phrase, word) in REDUCED {
            double_words.insert(phrase.into(), word.into());
        }
        for word in synonyms.words() {
            if word.split(' ').count() == 2 {
                double_words
                    .entry(word.to_owned())
                    .or_insert_with(|| word.to_owned());
            }
        }
        let vocab = synonyms
            .words()
            .chain(
                double_words
                    .iter()
                    .flat_map(|(k, v)| [k.as_str(), v.as_str()]),
            )
            .flat_map(|phrase| phrase.split(' '))
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        Self {
            vocab,
            double_words,
        }
    }

    /// The caption's words: lower-cased, tokenised, singular, with the
    /// two-word phrases joined (see the module docs), each with its byte
    /// range in `caption` (a joined phrase spans both words and what lies
    /// between them).
    pub(crate) fn spanned_words(&self, caption: &str) -> Vec<SpannedToken> {
        let lower = caption.to_lowercase();
        let to_caption = lowercase_offsets(caption, &lower);
        let tokens: Vec<SpannedToken> = tokenize_spans(&lower)
            .into_iter()
            .map(|t| SpannedToken {
                text: singularize(&t.text, &self.vocab),
                span: to_caption(t.span.start)..to_caption(t.span.end),
            })
            .collect();
        let mut words = Vec::with_capacity(tokens.len());
        let mut i = 0;
        while i < tokens.len() {
            if let Some(next) = tokens.get(i + 1) {
                let pair = format!("{} {}", tokens[i].text, next.text);
                if let Some(word) = self.double_words.get(&pair) {
                    words.push(SpannedToken {
                        text: word.clone(),
                        span: tokens[i].span.start..next.span.end,
                    });
                    i += 2;
                    continue;
                }
            }
            words.push(tokens[i].clone());
            i += 1;
        }
        words
    }
}

/// Maps a byte offset of `lower` (`original.to_lowercase()`) back to
/// `original`: each character's lower-case form is emitted in order, so
/// offsets are matched character by character (an offset inside the
/// lower-case form of a character that lower-cases to several, e.g. `İ`,
/// maps to that character's start).
fn lowercase_offsets(original: &str, lower: &str) -> impl Fn(usize) -> usize {
    let mut starts: Vec<(usize, usize)> = Vec::with_capacity(original.len() + 1);
    let mut at = 0;
    for (byte, c) in original.char_indices() {
        starts.push((at, byte));
        at += c.to_lowercase().map(char::len_utf8).sum::<usize>();
    }
    starts.push((at.max(lower.len()), original.len()));
    move |offset| match starts.binary_search_by_key(&offset, |&(l, _)| l) {
        Ok(i) => starts[i].1,
        Err(i) => starts[i.saturating_sub(1)].1,
    }
}

/// Splits lower-cased text into NLTK-like tokens (see the module docs).
pub fn tokenize(text: &str) -> Vec<String> {
    tokenize_spans(text).into_iter().map(|t| t.text).collect()
}

/// A token of [`tokenize_spans`] with where it is in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpannedToken {
    /// The token (as [`tokenize`] returns it).
    pub text: String,
    /// Its bytes in the tokenised text.
    pub span: Range<usize>,
}

/// [`tokenize`] with each token's byte range in `text` (a token is always
/// a contiguous piece of the text).
pub fn tokenize_spans(text: &str) -> Vec<SpannedToken> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let byte = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let is_word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let is_digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
    let mut tokens = Vec::new();
    let mut push = |start: usize, end: usize| {
        let span = byte(start)..byte(end);
        tokens.push(SpannedToken {
            text: text[span.clone()].to_owned(),
            span,
        });
    };
    let mut i = 0;
    while let Some(c) = at(i) {
        if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() {
            let start = i;
            i += 1;
            loop {
                match at(i) {
                    Some(c) if c.is_alphanumeric() => i += 1,
                    Some('-') if is_word(at(i + 1)) => i += 1,
                    Some('.' | ',') if is_digit(at(i - 1)) && is_digit(at(i + 1)) => i += 1,
                    _ => break,
                }
            }
            // "don't" -> "do", "n't"
            if at(i) == Some('\'')
                && at(i + 1) == Some('t')
                && !is_word(at(i + 2))
                && i - start > 1
                && at(i - 1) == Some('n')
            {
                push(start, i - 1);
                push(i - 1, i + 2);
                i += 2;
            } else {
                push(start, i);
            }
        } else if c == '\''
            && i > 0
            && is_word(at(i - 1))
            && at(i + 1).is_some_and(char::is_alphabetic)
        {
            let start = i;
            i += 1;
            while at(i).is_some_and(char::is_alphabetic) {
                i += 1;
            }
            push(start, i);
        } else if c == '.' {
            let start = i;
            while at(i) == Some('.') {
                i += 1;
            }
            push(start, i);
        } else {
            push(i, i + 1);
            i += 1;
        }
    }
    tokens
}

/// The singular of `word` as far as CHAIR needs it (see the module docs):
/// among the word itself, its irregular singular and the suffix-rule
/// candidates, the shortest that is in `vocab`; otherwise a rule-based
/// guess. Tokens that do not start with a letter are returned unchanged.
pub fn singularize(word: &str, vocab: &HashSet<String>) -> String {
    if !word.chars().next().is_some_and(char::is_alphabetic) {
        return word.to_owned();
    }
    let irregular = IRREGULAR
        .iter()
        .find(|(plural, _)| *plural == word)
        .map(|(_, s)| (*s).to_owned());
    let mut candidates: Vec<String> = vec![word.to_owned()];
    candidates.extend(irregular.clone());
    for (suffix, replacement) in SUFFIX_RULES {
        if let Some(stem) = word.strip_suffix(suffix).filter(|s| !s.is_empty()) {
            candidates.push(format!("{stem}{replacement}"));
        }
    }
    if let Some(best) = candidates
        .iter()
        .filter(|c| vocab.contains(c.as_str()))
        .min_by_key(|c| c.len())
    {
        return best.clone();
    }
    irregular.unwrap_or_else(|| fallback_singular(word))
}

/// A rule-based singular for words outside the vocabulary (display only).
fn fallback_singular(word: &str) -> String {
    if word.len() <= 3 || word.ends_with("ss") || word.ends_with("us") || word.ends_with("is") {
        return word.to_owned();
    }
    if let Some(stem) = word.strip_suffix("ies") {
        return format!("{stem}y");
    }
    for suffix in ["sses", "xes", "zes", "ches", "shes"] {
        if word.ends_with(suffix) {
            return word[..word.len() - 2].to_owned();
        }
    }
    if let Some(stem) = word.strip_suffix("men") {
        return format!("{stem}man");
    }
    word.strip_suffix('s').unwrap_or(word).to_owned()
}

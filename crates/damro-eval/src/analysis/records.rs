//! The analysis records file: one JSON line per captioned image with its
//! generated tokens, the text piece of each and its attention measures.
//!
//! ```json
//! {"image_id": 42, "image": "COCO_val2014_000000000042.jpg", "prompt": "What can you see in this image?",
//!  "caption": "A dog.", "model_id": "llava-1.5-7b-hf", "measures": "overlap", "settings": {...},
//!  "token_ids": [319, 11203, 29889, 2],
//!  "tokens": [{"piece": "A", "h": [0.0, 0.5, ...], "f": 0.061}, ...]}
//! ```
//!
//! `measures` says what each token carries: `overlap` (`h` = `H_1..H_n`,
//! `f` = `F`, for models whose image tokens are ViT patches) or
//! `raw_attention` (`attention`: the token's attention over the image
//! tokens, where `H` and `F` are undefined, e.g. InstructBLIP's Q-Former
//! queries; `note` says why).
//!
//! The file is written next to the runner's answers file
//! ([`crate::runner`]), which decides what is answered: a record is
//! appended (one `write_all`, then `sync_data`) before the runner appends
//! the image's answer, so a crash in between only makes the image run
//! again. [`read_records`] keeps the last record of an image, and
//! [`RecordsFile::open`] removes a torn last line, as the runner does.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::jsonl::{self, Line};
use crate::{BadRecord, BadRecordKind, Error, QuestionId, Result, RunSettings};

/// What the tokens of a record carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Measures {
    /// `H_1..H_n` and `F` against the ViT's \[CLS\] outliers.
    Overlap,
    /// The raw attention over the image tokens (`H` and `F` undefined).
    RawAttention,
}

/// One generated token of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenRecord {
    /// The text the token adds ([`super::pieces::incremental_pieces`]).
    pub piece: String,
    /// `H_1..H_n` (with [`Measures::Overlap`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h: Option<Vec<f64>>,
    /// `F` (with [`Measures::Overlap`]; `null` when it was not finite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f: Option<f64>,
    /// The attention over the image tokens (with
    /// [`Measures::RawAttention`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<Vec<f32>>,
}

impl TokenRecord {
    /// A token with `H_1..H_n` and `F`.
    pub fn overlap(piece: String, h: Vec<f64>, f: f64) -> Self {
        Self {
            piece,
            h: Some(h),
            f: f.is_finite().then_some(f),
            attention: None,
        }
    }

    /// A token with its raw image attention.
    pub fn raw(piece: String, attention: Vec<f32>) -> Self {
        Self {
            piece,
            h: None,
            f: None,
            attention: Some(attention),
        }
    }
}

/// One captioned image (one line of the records file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CaptionAnalysis {
    /// The COCO image id.
    pub image_id: u64,
    /// The image file name.
    pub image: String,
    /// The prompt, before the chat template.
    pub prompt: String,
    /// The generated text.
    pub caption: String,
    /// Which model produced it.
    #[serde(default)]
    pub model_id: String,
    /// What the tokens carry.
    pub measures: Measures,
    /// Why the measures are what they are, when not [`Measures::Overlap`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The run's settings (model, decoding, capture layers and heads).
    #[serde(default)]
    pub settings: RunSettings,
    /// The generated token ids (end of sequence included when generated).
    pub token_ids: Vec<i64>,
    /// One entry per token id.
    pub tokens: Vec<TokenRecord>,
}

impl CaptionAnalysis {
    /// A record without tokens; push them with [`Self::push_token`].
    pub fn new(image_id: u64, image: String, prompt: String, measures: Measures) -> Self {
        Self {
            image_id,
            image,
            prompt,
            caption: String::new(),
            model_id: String::new(),
            measures,
            note: None,
            settings: RunSettings::new(),
            token_ids: Vec::new(),
            tokens: Vec::new(),
        }
    }

    /// Adds a generated token.
    pub fn push_token(&mut self, id: i64, token: TokenRecord) {
        self.token_ids.push(id);
        self.tokens.push(token);
    }

    /// The pieces of the tokens, in order.
    pub fn pieces(&self) -> Vec<String> {
        self.tokens.iter().map(|t| t.piece.clone()).collect()
    }

    /// Checks that the tokens agree with each other and with
    /// [`Self::measures`]; the message says what does not.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.tokens.len() != self.token_ids.len() {
            return Err(format!(
                "{} tokens for {} token ids",
                self.tokens.len(),
                self.token_ids.len()
            ));
        }
        let first_len = |f: fn(&TokenRecord) -> Option<usize>| self.tokens.first().and_then(f);
        for (i, token) in self.tokens.iter().enumerate() {
            let problem = match self.measures {
                Measures::Overlap => match &token.h {
                    None => Some("has no `h`".to_owned()),
                    Some(h) if h.is_empty() => Some("has an empty `h`".to_owned()),
                    Some(h) if Some(h.len()) != first_len(|t| t.h.as_ref().map(Vec::len)) => Some(
                        format!("has {} `h` values, token 0 has another count", h.len()),
                    ),
                    Some(h) if h.iter().any(|v| !(0.0..=1.0).contains(v)) => {
                        Some("has an `h` value outside [0, 1]".to_owned())
                    }
                    _ => None,
                },
                Measures::RawAttention => match &token.attention {
                    None => Some("has no `attention`".to_owned()),
                    Some(a)
                        if Some(a.len()) != first_len(|t| t.attention.as_ref().map(Vec::len)) =>
                    {
                        Some(format!(
                            "has {} attention values, token 0 has another count",
                            a.len()
                        ))
                    }
                    _ => None,
                },
            };
            if let Some(problem) = problem {
                return Err(format!("token {i} {problem}"));
            }
        }
        Ok(())
    }
}

/// The records file of a run, open for appending.
#[derive(Debug)]
pub struct RecordsFile {
    file: File,
    path: PathBuf,
    sync: bool,
}

impl RecordsFile {
    /// Opens (or creates) `path` for appending, first cutting a torn last
    /// line (bytes after the last `\n`, from an interrupted write) away.
    /// Returns the file and the number of bytes cut. With `sync`, every
    /// append is followed by `sync_data`.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be opened, read or truncated.
    pub fn open(path: &Path, sync: bool) -> Result<(Self, usize)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io("opening", path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io("reading", path, e))?;
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let torn = bytes.len() - keep;
        if torn > 0 {
            file.set_len(keep as u64)
                .map_err(|e| Error::io("truncating", path, e))?;
        }
        let records = Self {
            file,
            path: path.to_path_buf(),
            sync,
        };
        Ok((records, torn))
    }

    /// Appends one record as one line; on a failed write the file is cut
    /// back to its previous length.
    ///
    /// # Errors
    /// [`Error::Serialize`] or [`Error::Io`].
    pub fn append(&mut self, record: &CaptionAnalysis) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|source| Error::Serialize {
            what: "an analysis record",
            source,
        })?;
        line.push('\n');
        let before = self
            .file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("appending to", &self.path, e))?;
        let written = self.file.write_all(line.as_bytes()).and_then(|()| {
            if self.sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let _ = self.file.set_len(before);
            return Err(Error::io("appending to", &self.path, e));
        }
        Ok(())
    }
}

/// The usable records of one or more files.
#[derive(Debug, Clone, Default)]
pub struct RecordSet {
    /// One record per image (the last one written), in order of first
    /// appearance.
    pub records: Vec<CaptionAnalysis>,
    /// Lines that could not be used (malformed, inconsistent, or a torn
    /// last line).
    pub bad: Vec<BadRecord>,
    /// Earlier records of an image that a later one replaced (a job run
    /// again after a crash, or an image in two files).
    pub replaced: usize,
}

/// Reads the records of `paths`, in order (see the module docs for which
/// record of an image is kept). A bad line's [`BadRecord::detail`] names
/// its file.
///
/// # Errors
/// [`Error::Io`] when a file cannot be read.
pub fn read_records(paths: &[PathBuf]) -> Result<RecordSet> {
    let mut set = RecordSet::default();
    let mut at: HashMap<u64, usize> = HashMap::new();
    for path in paths {
        let bytes = jsonl::read_file(path)?;
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let (complete, tail) = bytes.split_at(keep);
        let mut parsed: Vec<_> = jsonl::split_lines(complete, true)
            .iter()
            .map(record_from_line)
            .collect();
        if !tail.iter().all(u8::is_ascii_whitespace) {
            parsed.push(Err(BadRecord {
                line: Some(complete.iter().filter(|b| **b == b'\n').count() + 1),
                id: None,
                kind: BadRecordKind::MalformedLine,
                detail: "a torn last line (an interrupted write)".into(),
            }));
        }
        for outcome in parsed {
            match outcome {
                Ok(record) => match at.get(&record.image_id) {
                    Some(&slot) => {
                        set.records[slot] = record;
                        set.replaced += 1;
                    }
                    None => {
                        at.insert(record.image_id, set.records.len());
                        set.records.push(record);
                    }
                },
                Err(mut bad) => {
                    bad.detail = format!("`{}`: {}", path.display(), bad.detail);
                    set.bad.push(bad);
                }
            }
        }
    }
    Ok(set)
}

fn record_from_line(line: &Line<'_>) -> std::result::Result<CaptionAnalysis, BadRecord> {
    let record: CaptionAnalysis = jsonl::parse_line(line)?;
    record.validate().map_err(|detail| BadRecord {
        line: Some(line.number()),
        id: i64::try_from(record.image_id).ok().map(QuestionId::Int),
        kind: BadRecordKind::MalformedLine,
        detail,
    })?;
    Ok(record)
}

//! The paper's Figures 4 and 5 from marked tokens: the mean `H_i`
//! (i = 1..n) and the mean `F` of the tokens of each group (hallucinatory
//! or not) at each level (sentence, object), as CSV, Markdown and JSON.
//!
//! Every mean is over tokens (a word of three tokens counts three times),
//! pooled over all images; a group without tokens has no mean (an empty
//! CSV cell, `null` in JSON, `-` in Markdown).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::marking::{CaptionMarks, Group};
use super::records::TokenRecord;

/// The paper's two levels of the hallucinatory / non-hallucinatory split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Tokens of sentences with a hallucinated object vs the rest.
    Sentence,
    /// Tokens of hallucinated vs correctly mentioned object words.
    Object,
}

impl Level {
    /// Both levels, sentence first.
    pub const ALL: [Self; 2] = [Self::Sentence, Self::Object];

    /// `sentence` / `object`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sentence => "sentence",
            Self::Object => "object",
        }
    }
}

/// Running sums of one (level, group) cell.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sums {
    /// Σ H_i and the number of tokens with an H_i, per i.
    h: Vec<(f64, usize)>,
    tokens: usize,
    f: f64,
    f_tokens: usize,
}

impl Sums {
    fn add(&mut self, h: &[f64], f: Option<f64>) {
        if self.h.len() < h.len() {
            self.h.resize(h.len(), (0.0, 0));
        }
        for (sum, v) in self.h.iter_mut().zip(h) {
            sum.0 += v;
            sum.1 += 1;
        }
        self.tokens += 1;
        if let Some(f) = f.filter(|f| f.is_finite()) {
            self.f += f;
            self.f_tokens += 1;
        }
    }

    fn summary(&self, n: usize) -> GroupSummary {
        let mean = |sum: f64, count: usize| (count > 0).then(|| sum / count as f64);
        GroupSummary {
            tokens: self.tokens,
            mean_h: (0..n)
                .map(|i| {
                    let (sum, count) = self.h.get(i).copied().unwrap_or_default();
                    mean(sum, count)
                })
                .collect(),
            f_tokens: self.f_tokens,
            mean_f: mean(self.f, self.f_tokens),
        }
    }
}

/// The means of one group at one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Tokens in the group.
    pub tokens: usize,
    /// `mean_h[i - 1]`: the mean `H_i` (`None` without tokens).
    pub mean_h: Vec<Option<f64>>,
    /// Tokens with a finite `F`.
    pub f_tokens: usize,
    /// The mean `F` (`None` without tokens).
    pub mean_f: Option<f64>,
}

/// Both groups of one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelSummary {
    /// Hallucinatory tokens.
    pub hallucinatory: GroupSummary,
    /// Non-hallucinatory tokens.
    pub non_hallucinatory: GroupSummary,
}

impl LevelSummary {
    /// The summary of `group`.
    pub fn group(&self, group: Group) -> &GroupSummary {
        match group {
            Group::Hallucinatory => &self.hallucinatory,
            Group::NonHallucinatory => &self.non_hallucinatory,
        }
    }
}

/// Figures 4 and 5: the per-group means at both levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisSummary {
    /// `n` of `H_1..H_n`.
    pub max_i: usize,
    /// Images whose tokens entered the means.
    pub images: usize,
    /// Sentence level.
    pub sentence: LevelSummary,
    /// Object level.
    pub object: LevelSummary,
}

impl AnalysisSummary {
    /// The summary of `level`.
    pub fn level(&self, level: Level) -> &LevelSummary {
        match level {
            Level::Sentence => &self.sentence,
            Level::Object => &self.object,
        }
    }

    /// Figure 4 as CSV: a header `i,sentence_hallucinatory,
    /// sentence_non_hallucinatory,object_hallucinatory,
    /// object_non_hallucinatory`, then one row per `i` with the mean
    /// `H_i` of each column's tokens (full precision; empty without
    /// tokens).
    pub fn figure4_csv(&self) -> String {
        let mut csv = String::from("i");
        for (level, group) in columns() {
            let _ = write!(csv, ",{}_{}", level.as_str(), group.as_str());
        }
        csv.push('\n');
        for i in 0..self.max_i {
            let _ = write!(csv, "{}", i + 1);
            for (level, group) in columns() {
                let value = self
                    .level(level)
                    .group(group)
                    .mean_h
                    .get(i)
                    .copied()
                    .flatten();
                let _ = write!(csv, ",{}", value.map_or(String::new(), |v| v.to_string()));
            }
            csv.push('\n');
        }
        csv
    }

    /// Figure 4 as a Markdown table (4 decimals) with the token counts.
    pub fn figure4_markdown(&self) -> String {
        let mut md = String::from("| i |");
        for (level, group) in columns() {
            let g = self.level(level).group(group);
            let _ = write!(
                md,
                " {} {} ({} tokens) |",
                level.as_str(),
                label(group),
                g.tokens
            );
        }
        md.push_str("\n|---|---|---|---|---|\n");
        for i in 0..self.max_i {
            let _ = write!(md, "| {} |", i + 1);
            for (level, group) in columns() {
                let value = self
                    .level(level)
                    .group(group)
                    .mean_h
                    .get(i)
                    .copied()
                    .flatten();
                let _ = write!(md, " {} |", show(value));
            }
            md.push('\n');
        }
        md
    }

    /// Figure 5 as a Markdown table: the mean `F` per level and group
    /// (4 decimals) with the token counts.
    pub fn figure5_markdown(&self) -> String {
        let mut md = String::from("| level | hallucinatory | non-hallucinatory |\n|---|---|---|\n");
        for level in Level::ALL {
            let l = self.level(level);
            let cell = |g: &GroupSummary| format!("{} ({} tokens)", show(g.mean_f), g.f_tokens);
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                level.as_str(),
                cell(&l.hallucinatory),
                cell(&l.non_hallucinatory)
            );
        }
        md
    }
}

/// The CSV / table columns: each level's groups, sentence first.
fn columns() -> impl Iterator<Item = (Level, Group)> {
    Level::ALL
        .into_iter()
        .flat_map(|level| Group::ALL.into_iter().map(move |group| (level, group)))
}

fn label(group: Group) -> &'static str {
    match group {
        Group::Hallucinatory => "HA",
        Group::NonHallucinatory => "non-HA",
    }
}

fn show(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"))
}

/// Accumulates marked tokens into [`AnalysisSummary`] means.
#[derive(Debug, Clone)]
pub struct Aggregator {
    max_i: usize,
    images: usize,
    cells: [[Sums; 2]; 2],
}

impl Aggregator {
    /// Means of `H_1..H_max_i` (the paper: 10).
    pub fn new(max_i: usize) -> Self {
        Self {
            max_i,
            images: 0,
            cells: Default::default(),
        }
    }

    /// Adds the tokens of one image: `tokens[t]` carries the measures of
    /// the token that `marks.tokens[t]` marks. Tokens without `h` are
    /// skipped; `h` values beyond `max_i` are ignored.
    ///
    /// # Errors
    /// A message when `marks` and `tokens` do not have one entry per
    /// token each (nothing is added then).
    pub fn add(
        &mut self,
        marks: &CaptionMarks,
        tokens: &[TokenRecord],
    ) -> std::result::Result<(), String> {
        if marks.tokens.len() != tokens.len() {
            return Err(format!(
                "{} marks for {} tokens",
                marks.tokens.len(),
                tokens.len()
            ));
        }
        for (mark, token) in marks.tokens.iter().zip(tokens) {
            let Some(h) = token.h.as_deref() else {
                continue;
            };
            let h = &h[..h.len().min(self.max_i)];
            for (level, group) in [
                (Level::Sentence, mark.sentence_group),
                (Level::Object, mark.object_group),
            ] {
                if let Some(group) = group {
                    self.cells[level as usize][group as usize].add(h, token.f);
                }
            }
        }
        self.images += 1;
        Ok(())
    }

    /// The means so far.
    pub fn summary(&self) -> AnalysisSummary {
        let level = |l: Level| LevelSummary {
            hallucinatory: self.cells[l as usize][Group::Hallucinatory as usize]
                .summary(self.max_i),
            non_hallucinatory: self.cells[l as usize][Group::NonHallucinatory as usize]
                .summary(self.max_i),
        };
        AnalysisSummary {
            max_i: self.max_i,
            images: self.images,
            sentence: level(Level::Sentence),
            object: level(Level::Object),
        }
    }
}

//! What every metrics report records besides its numbers: the run settings
//! the caller passes in, the model ids found in the answers, and how many
//! answers were and were not scored.
//!
//! Each scorer's report ([`PopeReport`](crate::pope::score::PopeReport),
//! [`ChairReport`](crate::chair::ChairReport),
//! [`MmeReport`](crate::mme::MmeReport), and the multi-split
//! [`PopeSplitsReport`](crate::pope::splits::PopeSplitsReport)) holds a [`RunInfo`], flattened into
//! its JSON, so a metrics file says which run it describes:
//!
//! ```json
//! {"rule": "damro", "settings": {"mode": "damro", "alpha": 0.5}, "model_ids": ["llava-1.5-7b"],
//!  "scored_answers": 3000, "unscored_answers": 0, "metrics": {...}, "counts": {...}}
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Free-form settings of the run that produced the answers (mode, contrast,
/// alpha, beta, top-k, seed, ...), as the caller names them. Keys are kept
/// sorted so metrics files compare line by line.
///
/// ```
/// use damro_eval::RunSettings;
/// let settings = RunSettings::new().with("mode", "damro").with("alpha", 0.5).with("seed", 42);
/// assert_eq!(settings.get("alpha"), Some(&serde_json::json!(0.5)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunSettings(BTreeMap<String, serde_json::Value>);

impl RunSettings {
    /// No settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) one setting, builder style.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds (or replaces) one setting.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) {
        self.0.insert(key.into(), value.into());
    }

    /// The value of a setting.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key)
    }

    /// Whether no setting is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The settings, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &serde_json::Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// The part of a metrics report that says where its numbers come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The caller's run settings ([`RunSettings`]); empty unless set with a
    /// report's `with_settings`.
    #[serde(default)]
    pub settings: RunSettings,
    /// The distinct, non-empty `model_id`s of the answer records, sorted.
    #[serde(default)]
    pub model_ids: Vec<String>,
    /// Answers that entered the metrics.
    pub scored_answers: usize,
    /// Answer records that did not (malformed, duplicate, unmatched, or
    /// without a usable ground truth); the report's counts say which.
    pub unscored_answers: usize,
}

impl RunInfo {
    /// The info for `scored` and `unscored` answers whose records carry
    /// `model_ids` (empty ones are ignored).
    pub fn new<'a>(
        model_ids: impl IntoIterator<Item = &'a str>,
        scored: usize,
        unscored: usize,
    ) -> Self {
        let ids: BTreeSet<&str> = model_ids.into_iter().filter(|m| !m.is_empty()).collect();
        Self {
            settings: RunSettings::new(),
            model_ids: ids.into_iter().map(str::to_owned).collect(),
            scored_answers: scored,
            unscored_answers: unscored,
        }
    }

    /// Whether no answer was scored: the caller should treat the report as
    /// a failure (empty or wrong answers file, nothing matched).
    pub fn nothing_scored(&self) -> bool {
        self.scored_answers == 0
    }

    /// One-line text for report tables: model ids and settings.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.model_ids.is_empty() {
            parts.push(format!("model {}", self.model_ids.join(", ")));
        }
        if !self.settings.is_empty() {
            let settings: Vec<String> = self
                .settings
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            parts.push(settings.join(" "));
        }
        parts.join("; ")
    }
}

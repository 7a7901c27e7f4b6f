//! Progress reporting for the runner, kept behind a small trait so that the
//! library prints nothing by itself: the CLI passes [`BarProgress`] (an
//! indicatif bar with rate and ETA, bad records printed above it), tests
//! pass [`Silent`].

use indicatif::{ProgressBar, ProgressStyle};

use crate::BadRecord;
use crate::pope::AnswerRecord;
use crate::runner::RunSummary;

/// Receives the runner's progress. Every method has an empty default.
pub trait Progress {
    /// Before the first record: `to_do` records are left in this shard and
    /// `done_before` were answered by earlier runs.
    fn start(&mut self, to_do: usize, done_before: usize) {
        let _ = (to_do, done_before);
    }
    /// A record was answered and written.
    fn answered(&mut self, record: &AnswerRecord) {
        let _ = record;
    }
    /// A record could not be used (input problem or failed answer).
    fn bad_record(&mut self, bad: &BadRecord) {
        let _ = bad;
    }
    /// Something worth telling the user that is not about one record
    /// (e.g. a torn last line was removed from the answers file).
    fn note(&mut self, message: &str) {
        let _ = message;
    }
    /// After the last record.
    fn finish(&mut self, summary: &RunSummary) {
        let _ = summary;
    }
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {}

/// An indicatif progress bar on stderr with position, rate and ETA over the
/// records left to do; bad records and notes are printed above the bar.
#[derive(Debug)]
pub struct BarProgress {
    bar: ProgressBar,
    label: String,
}

impl BarProgress {
    const TEMPLATE: &'static str =
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta_precise}) {msg}";

    /// A bar whose prefix is `label` (e.g. `"pope 0/4"`).
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            bar: ProgressBar::hidden(),
            label: label.into(),
        }
    }
}

impl Progress for BarProgress {
    fn start(&mut self, to_do: usize, done_before: usize) {
        let bar = ProgressBar::new(to_do as u64);
        if let Ok(style) = ProgressStyle::with_template(Self::TEMPLATE) {
            bar.set_style(style);
        }
        bar.set_prefix(self.label.clone());
        if done_before > 0 {
            bar.set_message(format!("{done_before} done before"));
        }
        self.bar = bar;
    }

    fn answered(&mut self, _record: &AnswerRecord) {
        self.bar.inc(1);
    }

    fn bad_record(&mut self, bad: &BadRecord) {
        self.bar.println(format!("bad record: {bad}"));
        if bad.kind.is_attempt() {
            self.bar.inc(1);
        }
    }

    fn note(&mut self, message: &str) {
        self.bar.println(message);
    }

    fn finish(&mut self, _summary: &RunSummary) {
        self.bar.finish();
    }
}

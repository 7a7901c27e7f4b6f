//! Progress reporting for the runner, kept behind a small trait so that the
//! library prints nothing by itself: the CLI passes [`BarProgress`] (an
//! indicatif bar with rate and ETA, warnings and bad records printed above
//! it), tests pass [`Silent`].
//!
//! Warnings (bad question lines, missing images, malformed answer lines, a
//! run that answered nothing) must reach the user even when stderr is not
//! a terminal, where indicatif hides the bar and drops what is printed
//! through it. [`BarProgress`] therefore writes warnings straight to stderr
//! when its bar is hidden, and can also append them to a log file
//! ([`BarProgress::with_log_file`]) or send them to any writer
//! ([`BarProgress::with_warnings_to`]).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use crate::pope::AnswerRecord;
use crate::runner::RunSummary;
use crate::{BadRecord, Error, Result};

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
    /// (e.g. how many records were found). Reporters may drop notes when
    /// they have no terminal.
    fn note(&mut self, message: &str) {
        let _ = message;
    }
    /// A problem the user must see (a torn line removed from the answers
    /// file, stale answers, a missing image folder, a run that answered
    /// nothing). Reporters that print anything must print warnings whether
    /// or not stderr is a terminal. Defaults to [`Progress::note`].
    fn warn(&mut self, message: &str) {
        self.note(message);
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

/// Where [`BarProgress`] sends warnings besides (or instead of) stderr.
enum Sink {
    /// stderr: above the bar when it is drawn, plain lines when it is hidden.
    Stderr,
    /// Any writer, instead of stderr.
    Writer(Box<dyn Write + Send>),
}

/// An indicatif progress bar on stderr with position, rate and ETA over the
/// records left to do; warnings, bad records and notes are printed above
/// the bar, or as plain lines on stderr when stderr is not a terminal (see
/// the module docs).
pub struct BarProgress {
    bar: ProgressBar,
    label: String,
    sink: Sink,
    log: Option<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for BarProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarProgress")
            .field("label", &self.label)
            .field("to_stderr", &matches!(self.sink, Sink::Stderr))
            .field("log", &self.log.is_some())
            .finish()
    }
}

impl BarProgress {
    const TEMPLATE: &'static str =
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta_precise}) {msg}";

    /// A bar whose prefix is `label` (e.g. `"pope 0/4"`); warnings go to
    /// stderr.
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            bar: ProgressBar::hidden(),
            label: label.into(),
            sink: Sink::Stderr,
            log: None,
        }
    }

    /// Also appends every warning, bad record and note, one per line, to
    /// the file at `path` (created if absent).
    pub fn with_log_file(mut self, path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io("opening the log file", path, e))?;
        self.log = Some(Box::new(file));
        Ok(self)
    }

    /// Sends warnings, bad records and notes to `writer` instead of stderr
    /// (the bar itself stays on stderr).
    pub fn with_warnings_to(mut self, writer: impl Write + Send + 'static) -> Self {
        self.sink = Sink::Writer(Box::new(writer));
        self
    }

    /// Prints one message line to the sink and the log. Write errors are
    /// ignored: a closed stderr must not stop a run.
    fn emit(&mut self, line: &str) {
        match &mut self.sink {
            Sink::Stderr if !self.bar.is_hidden() => self.bar.println(line),
            Sink::Stderr => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            Sink::Writer(writer) => {
                let bar = &self.bar;
                bar.suspend(|| {
                    let _ = writeln!(writer, "{line}");
                    let _ = writer.flush();
                });
            }
        }
        if let Some(log) = &mut self.log {
            let _ = writeln!(log, "{}: {line}", self.label);
            let _ = log.flush();
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
        self.emit(&format!("bad record: {bad}"));
        if bad.kind.is_attempt() {
            self.bar.inc(1);
        }
    }

    fn note(&mut self, message: &str) {
        self.emit(message);
    }

    fn warn(&mut self, message: &str) {
        self.emit(&format!("warning: {message}"));
    }

    fn finish(&mut self, _summary: &RunSummary) {
        self.bar.finish();
    }
}

//! The files the commands write besides the answers: metrics (written
//! atomically, nothing left behind on failure), the settings file of a run
//! (`<answers>.settings.json`), and the checks and reports on answers files
//! read for scoring.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use damro_eval::pope::{AnswerRecord, AnswerSet};
use damro_eval::{BadRecord, BadRecordKind, RunSettings, Shard};

/// Settings that may differ between the runs that fill one answers file
/// (they change neither greedy answers nor what a question is asked).
const MAY_DIFFER: [&str; 1] = ["batch_size"];

/// Bad records printed one by one before the rest are only counted.
const SHOWN_BAD: usize = 20;

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a temporary sibling and a rename; on
/// any failure the temporary file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = with_suffix(path, &format!(".tmp.{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("writing `{}`", path.display()));
    }
    Ok(())
}

/// Writes `json` (a report, from `damro_eval::to_json_pretty`) to `path`,
/// if given.
pub fn write_json(path: Option<&Path>, what: &str, json: String) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    write_atomically(path, format!("{json}\n").as_bytes())?;
    println!("{what} written to {}", path.display());
    Ok(())
}

/// The answers file of split `name` next to `base`:
/// `answers.jsonl` → `answers.random.jsonl`.
pub fn split_file(base: &Path, name: &str) -> PathBuf {
    let mut file: OsString = base.file_stem().map(OsString::from).unwrap_or_default();
    file.push(format!(".{name}"));
    if let Some(ext) = base.extension() {
        file.push(".");
        file.push(ext);
    }
    base.with_file_name(file)
}

/// The `count` shard files of `base` (`answers.shard-2-of-4.jsonl`, ...).
pub fn shard_files(base: &Path, count: usize) -> Result<Vec<PathBuf>> {
    Ok(Shard::all_of(count)
        .context("--shard-count")?
        .iter()
        .map(|shard| shard.file_name(base))
        .collect())
}

/// Where a run's settings are kept: `<answers>.settings.json`.
pub fn settings_path(answers: &Path) -> PathBuf {
    with_suffix(answers, ".settings.json")
}

/// The settings file of `answers`, if there is one.
pub fn read_settings(answers: &Path) -> Result<Option<RunSettings>> {
    let path = settings_path(answers);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading `{}`", path.display())),
    };
    let settings = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "`{}` is not a settings file (expected a JSON object)",
            path.display()
        )
    })?;
    Ok(Some(settings))
}

/// The settings that differ between `a` and `b`, apart from [`MAY_DIFFER`],
/// as `key: a → b`.
fn differences(a: &RunSettings, b: &RunSettings) -> Vec<String> {
    let keys: std::collections::BTreeSet<&str> = a.iter().chain(b.iter()).map(|(k, _)| k).collect();
    keys.into_iter()
        .filter(|k| !MAY_DIFFER.contains(k) && a.get(k) != b.get(k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("-".to_owned(), |v| v.to_string());
            format!("{k}: {} → {}", show(a.get(k)), show(b.get(k)))
        })
        .collect()
}

/// `a` with every value of `b`'s [`MAY_DIFFER`] keys added: one value, or
/// the sorted list of the distinct values.
fn combine(a: &RunSettings, b: &RunSettings) -> RunSettings {
    let mut out = a.clone();
    for key in MAY_DIFFER {
        let mut values: Vec<serde_json::Value> = Vec::new();
        for value in [a.get(key), b.get(key)].into_iter().flatten() {
            match value {
                serde_json::Value::Array(items) => values.extend(items.iter().cloned()),
                other => values.push(other.clone()),
            }
        }
        values.sort_by_key(|v| v.to_string());
        values.dedup();
        match values.len() {
            0 => {}
            1 => out.insert(key, values.remove(0)),
            _ => out.insert(key, serde_json::Value::Array(values)),
        }
    }
    out
}

/// What [`record_settings`] did, so a failed run can undo it.
#[derive(Debug)]
pub struct SettingsRecord {
    path: PathBuf,
    created: bool,
}

impl SettingsRecord {
    /// Removes the settings file if this run created it.
    pub fn undo(self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Records the settings of a run that appends to `answers`. Refuses when
/// the file already holds answers made with other settings (resuming with
/// another alpha would mix two runs in one file).
pub fn record_settings(answers: &Path, settings: &RunSettings) -> Result<SettingsRecord> {
    let path = settings_path(answers);
    let has_answers = std::fs::metadata(answers).is_ok_and(|m| m.len() > 0);
    let old = read_settings(answers)?;
    let merged = match old.as_ref() {
        Some(old) if has_answers => {
            let changed = differences(old, settings);
            if !changed.is_empty() {
                bail!(
                    "`{}` holds answers made with other settings ({}); give another --answers file, or remove it and `{}` to start over",
                    answers.display(),
                    changed.join(", "),
                    path.display()
                );
            }
            combine(old, settings)
        }
        _ => settings.clone(),
    };
    let json = damro_eval::to_json_pretty(&merged)?;
    write_atomically(&path, format!("{json}\n").as_bytes())?;
    Ok(SettingsRecord {
        path,
        created: old.is_none(),
    })
}

/// The settings to put in a report about `answers`: its settings file, or
/// else the modes its records name.
pub fn settings_for_report<'a>(
    answers: &Path,
    records: impl IntoIterator<Item = &'a AnswerRecord>,
) -> Result<RunSettings> {
    if let Some(settings) = read_settings(answers)? {
        return Ok(settings);
    }
    let modes: std::collections::BTreeSet<&str> = records
        .into_iter()
        .filter_map(|r| r.mode.as_deref())
        .collect();
    let mut settings = RunSettings::new().with("settings_file", "none");
    match modes.len() {
        0 => {}
        1 => settings.insert("mode", modes.into_iter().next().unwrap_or_default()),
        _ => settings.insert("mode", modes.into_iter().collect::<Vec<_>>()),
    }
    Ok(settings)
}

/// Merges the settings files of shard answer files for the merged file
/// `out`: written when every shard has one and they agree; an error when
/// they disagree; a warning when some are missing.
pub fn merge_settings(shards: &[PathBuf], out: &Path) -> Result<()> {
    let mut found: Vec<(PathBuf, RunSettings)> = Vec::new();
    for shard in shards {
        if let Some(settings) = read_settings(shard)? {
            found.push((shard.clone(), settings));
        }
    }
    if found.len() < shards.len() {
        if !found.is_empty() {
            eprintln!(
                "warning: {} of {} shard files have no settings file; `{}` gets none",
                shards.len() - found.len(),
                shards.len(),
                settings_path(out).display()
            );
        }
        return Ok(());
    }
    let Some((first_path, mut merged)) = found.first().cloned() else {
        return Ok(());
    };
    for (path, settings) in &found[1..] {
        let changed = differences(&merged, settings);
        if !changed.is_empty() {
            bail!(
                "the shards ran with different settings: `{}` vs `{}` ({})",
                first_path.display(),
                path.display(),
                changed.join(", ")
            );
        }
        merged = combine(&merged, settings);
    }
    let json = damro_eval::to_json_pretty(&merged)?;
    write_atomically(&settings_path(out), format!("{json}\n").as_bytes())
}

/// Prints bad records to stderr, `what` naming their file.
pub fn report_bad(what: &str, bad: &[BadRecord]) {
    for record in bad.iter().take(SHOWN_BAD) {
        eprintln!("warning: {what}: {record}");
    }
    if bad.len() > SHOWN_BAD {
        eprintln!(
            "warning: {what}: {} more bad record(s)",
            bad.len() - SHOWN_BAD
        );
    }
}

/// Refuses an answers file with no answer in it (a question file, binary
/// data, an empty file), and reports its bad lines.
pub fn check_answers(path: &Path, answers: &AnswerSet) -> Result<()> {
    report_bad(&format!("answers `{}`", path.display()), &answers.bad);
    if !answers.answers.is_empty() {
        return Ok(());
    }
    let question_lines = answers
        .bad
        .iter()
        .filter(|b| b.kind == BadRecordKind::QuestionLine)
        .count();
    if question_lines > 0 {
        bail!(
            "`{}` is not an answers file: it holds question lines ({question_lines}); give the answers a run wrote",
            path.display()
        );
    }
    if !answers.bad.is_empty() {
        bail!(
            "`{}` is not an answers file: none of its {} line(s) is an answer record (binary data?)",
            path.display(),
            answers.bad.len()
        );
    }
    bail!("`{}` has no answer in it (empty file)", path.display())
}

/// Removes an answers file that a failed run left empty.
pub fn remove_if_empty(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        let _ = std::fs::remove_file(path);
    }
}

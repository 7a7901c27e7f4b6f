//! Helpers for the tests that run the `eval` example binary as a user
//! does: `target/<profile>/examples/eval`, found next to the test
//! executable (`cargo test` builds the examples first).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Scheduler variables that must not leak into the commands from the
/// environment the tests run in.
pub const SCHEDULER_VARS: [&str; 5] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "JOB_COMPLETION_INDEX",
    "DAMRO_SHARD_COUNT",
];

/// The `eval` example binary.
pub fn eval_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/examples/eval
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("examples").join("eval");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --example eval` (`cargo test` builds it)",
        bin.display()
    );
    bin
}

/// The repository's test fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// damro-eval's test data.
pub fn eval_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/damro-eval/tests/data")
}

/// A finished command.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts exit status 0.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "command failed:\n{self}");
        self
    }

    /// Asserts a non-zero exit without a panic, and that stderr mentions
    /// every one of `words`.
    pub fn fails_with(self, words: &[&str]) -> Self {
        assert_ne!(self.code, Some(0), "command succeeded:\n{self}");
        assert!(self.code.is_some(), "killed by a signal:\n{self}");
        assert!(!self.stderr.contains("panicked"), "panic:\n{self}");
        for word in words {
            assert!(self.stderr.contains(word), "stderr lacks `{word}`:\n{self}");
        }
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A command line under construction.
#[derive(Debug, Default, Clone)]
pub struct Args(pub Vec<OsString>);

impl Args {
    /// `eval <command>`.
    pub fn new(command: &str) -> Self {
        Self(vec![command.into()])
    }

    /// Adds arguments.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.0.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds `--flag value`.
    pub fn flag(self, flag: &str, value: impl AsRef<OsStr>) -> Self {
        self.arg(flag).arg(value)
    }

    /// The tiny model of `family` (`llava` or `instructblip`) on the CPU,
    /// greedy unless `seed` is given, at most `tokens` new tokens.
    pub fn tiny_model(self, family: &str, tokens: usize) -> Self {
        self.flag("--model", fixtures().join(family).join("models/hub"))
            .flag("--device", "cpu")
            .flag("--max-new-tokens", tokens.to_string())
    }

    /// Runs it with `env` added to a clean scheduler environment.
    pub fn run_env(&self, env: &[(&str, &str)]) -> Output {
        let mut command = self.command();
        for (key, value) in env {
            command.env(key, value);
        }
        let out = command.output().unwrap();
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs it.
    pub fn run(&self) -> Output {
        self.run_env(&[])
    }

    /// The command, stdin closed, scheduler variables removed.
    pub fn command(&self) -> Command {
        let mut command = Command::new(eval_bin());
        command.args(&self.0).stdin(Stdio::null());
        for var in SCHEDULER_VARS {
            command.env_remove(var);
        }
        command
    }
}

/// The JSON lines of a file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// `question_id` (as JSON text) and prompt → output, asserting that no
/// (id, prompt) is answered twice.
pub fn answers_by_question(path: &Path) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for record in read_jsonl(path) {
        let key = (
            record["question_id"].to_string(),
            record["prompt"].as_str().unwrap().to_owned(),
        );
        let output = record["output"].as_str().unwrap().to_owned();
        assert!(
            out.insert(key.clone(), output).is_none(),
            "{key:?} answered twice in {}",
            path.display()
        );
    }
    out
}

/// The `question_id`s of a POPE question file, as JSON text.
pub fn question_ids(path: &Path) -> Vec<String> {
    read_jsonl(path)
        .iter()
        .map(|q| q["question_id"].to_string())
        .collect()
}

/// Asserts `a` and `b` are within 1e-9.
pub fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-9, "{what}: {a} != {b}");
}

/// The files in `dir`, sorted by name.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

//! Scale-out as a cluster runs it: `pope-run --shard auto` started as the
//! tasks of a Slurm job array (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT)
//! and as the pods of a Kubernetes Indexed Job (JOB_COMPLETION_INDEX with
//! --shard-count), merged with `pope-merge`, every question answered
//! exactly once, then scored. Both runs sample with the same seed over
//! different partitions and give the same answers: each generate call
//! starts a generator seeded with --seed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod eval_common;

use std::path::{Path, PathBuf};

use eval_common::{Args, answers_by_question, fixtures, question_ids, read_json, read_jsonl};

fn shard_run(answers: &Path) -> Args {
    Args::new("pope-run")
        .flag("--questions", fixtures().join("pope/questions.jsonl"))
        .flag("--images", fixtures().join("images"))
        .flag("--answers", answers)
        .flag("--shard", "auto")
        .flag("--seed", "7")
        .tiny_model("instructblip", 3)
}

/// Starts every task at once with its environment and waits for all.
fn run_tasks(args: &Args, envs: &[Vec<(&str, String)>]) {
    let children: Vec<_> = envs
        .iter()
        .map(|env| {
            let mut command = args.command();
            command.envs(env.iter().map(|(k, v)| (k, v.as_str())));
            command.output_spawn()
        })
        .collect();
    for (child, env) in children.into_iter().zip(envs) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "task {env:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `Command::spawn` with stdout and stderr captured.
trait SpawnCaptured {
    fn output_spawn(&mut self) -> std::process::Child;
}

impl SpawnCaptured for std::process::Command {
    fn output_spawn(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Merges `answers.shard-i-of-N.jsonl` into `answers.jsonl` and checks that
/// it answers every question exactly once.
fn merge_and_check(answers: &Path, count: usize) {
    let shard_files: Vec<PathBuf> = (0..count)
        .map(|i| answers.with_file_name(format!("answers.shard-{i}-of-{count}.jsonl")))
        .collect();
    let mut answered_in_shards = 0;
    for file in &shard_files {
        let n = read_jsonl(file).len();
        assert!(n > 0, "{} is empty", file.display());
        answered_in_shards += n;
    }
    assert_eq!(answered_in_shards, 6, "each question in one shard");
    Args::new("pope-merge")
        .flag("--questions", fixtures().join("pope/questions.jsonl"))
        .flag("--answers", answers)
        .flag("--shard-count", count.to_string())
        .run()
        .ok();
    let ids: Vec<String> = answers_by_question(answers)
        .keys()
        .map(|(id, _)| id.clone())
        .collect();
    let mut expected = question_ids(&fixtures().join("pope/questions.jsonl"));
    expected.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(ids, expected);
    assert_eq!(read_jsonl(answers).len(), 6);
}

#[test]
fn slurm_array_and_indexed_job_shards_merge_to_every_question_once() {
    let slurm_dir = tempfile::tempdir().unwrap();
    let slurm = slurm_dir.path().join("answers.jsonl");
    let tasks: Vec<Vec<(&str, String)>> = (0..3)
        .map(|i| {
            vec![
                ("SLURM_ARRAY_TASK_ID", (10 + i).to_string()),
                ("SLURM_ARRAY_TASK_MIN", "10".to_string()),
                ("SLURM_ARRAY_TASK_COUNT", "3".to_string()),
            ]
        })
        .collect();
    run_tasks(&shard_run(&slurm), &tasks);
    merge_and_check(&slurm, 3);
    let metrics = slurm_dir.path().join("metrics.json");
    Args::new("pope-score")
        .flag("--questions", fixtures().join("pope/questions.jsonl"))
        .flag("--answers", &slurm)
        .flag("--metrics", &metrics)
        .run()
        .ok();
    let report = read_json(&metrics);
    assert_eq!(report["scored_answers"], 6);
    assert_eq!(report["counts"]["duplicate_answers"], 0);
    assert_eq!(
        report["settings"]["seed"], 7,
        "the shards' settings, merged"
    );
    assert_eq!(report["settings"]["alpha"], 0.5);

    let k8s_dir = tempfile::tempdir().unwrap();
    let k8s = k8s_dir.path().join("answers.jsonl");
    let pods: Vec<Vec<(&str, String)>> = (0..2)
        .map(|i| vec![("JOB_COMPLETION_INDEX", i.to_string())])
        .collect();
    run_tasks(&shard_run(&k8s).flag("--shard-count", "2"), &pods);
    merge_and_check(&k8s, 2);
    assert_eq!(
        answers_by_question(&k8s),
        answers_by_question(&slurm),
        "same seed, same answers, whatever the partition"
    );
}

/// Three splits in one Slurm array of two tasks: each task answers its
/// shard of every split; the merge and the scoring take the same --split
/// flags.
#[test]
fn split_runs_shard_merge_and_score_per_split() {
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers.jsonl");
    let pope = fixtures().join("pope");
    let with_splits = |mut args: Args| {
        for name in ["random", "popular", "adversarial"] {
            args = args.flag(
                "--split",
                format!("{name}={}", pope.join(format!("{name}.jsonl")).display()),
            );
        }
        args
    };
    let run = with_splits(Args::new("pope-run"))
        .flag("--images", fixtures().join("images"))
        .flag("--answers", &answers)
        .flag("--shard", "auto")
        .arg("--greedy")
        .tiny_model("llava", 1);
    let tasks: Vec<Vec<(&str, String)>> = (0..2)
        .map(|i| {
            vec![
                ("SLURM_ARRAY_TASK_ID", i.to_string()),
                ("SLURM_ARRAY_TASK_COUNT", "2".to_string()),
            ]
        })
        .collect();
    run_tasks(&run, &tasks);
    with_splits(Args::new("pope-merge"))
        .flag("--answers", &answers)
        .flag("--shard-count", "2")
        .run()
        .ok();
    for name in ["random", "popular", "adversarial"] {
        let merged = dir.path().join(format!("answers.{name}.jsonl"));
        let ids: Vec<String> = answers_by_question(&merged)
            .keys()
            .map(|k| k.0.clone())
            .collect();
        assert_eq!(
            ids,
            question_ids(&pope.join(format!("{name}.jsonl"))),
            "{name}"
        );
    }
    let metrics = dir.path().join("metrics.json");
    with_splits(Args::new("pope-score"))
        .flag("--answers", &answers)
        .flag("--metrics", &metrics)
        .run()
        .ok();
    let report = read_json(&metrics);
    assert_eq!(report["scored_answers"], 6);
    assert_eq!(report["splits"].as_array().unwrap().len(), 3);
    assert_eq!(report["settings"]["decoding"], "greedy");
}

#[test]
fn shard_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers.jsonl");
    shard_run(&answers).run().fails_with(&[
        "--shard auto",
        "SLURM_ARRAY_TASK_ID",
        "JOB_COMPLETION_INDEX",
    ]);
    shard_run(&answers)
        .run_env(&[("JOB_COMPLETION_INDEX", "0")])
        .fails_with(&["JOB_COMPLETION_INDEX", "--shard-count"]);
    shard_run(&answers)
        .run_env(&[
            ("SLURM_ARRAY_TASK_ID", "x1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ])
        .fails_with(&["SLURM_ARRAY_TASK_ID", "x1"]);
    shard_run(&answers)
        .flag("--shard-count", "2")
        .run_env(&[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ])
        .fails_with(&["3", "2"]);
    Args::new("pope-run")
        .flag("--questions", fixtures().join("pope/questions.jsonl"))
        .flag("--images", fixtures().join("images"))
        .flag("--answers", &answers)
        .flag("--shard", "3/3")
        .tiny_model("llava", 1)
        .run()
        .fails_with(&["3/3"]);
    Args::new("pope-merge")
        .flag("--questions", fixtures().join("pope/questions.jsonl"))
        .flag("--answers", &answers)
        .flag("--shard-count", "2")
        .run()
        .fails_with(&["answers.shard-0-of-2.jsonl"]);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

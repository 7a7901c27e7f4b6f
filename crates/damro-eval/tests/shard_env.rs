//! `--shard auto`: the shard from a Slurm job array or a Kubernetes Indexed
//! Job, and a typed error for every way the environment can be wrong.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use damro_eval::{Error, Shard, ShardEnvError, ShardSpec};

/// A fake environment.
fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |key| map.get(key).cloned()
}

fn shard(index: usize, count: usize) -> Shard {
    Shard::new(index, count).unwrap()
}

#[test]
fn slurm_arrays() {
    // --array=0-3, task 2
    let e = env(&[
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
    ]);
    assert_eq!(Shard::from_env(&e, None), Ok(shard(2, 4)));
    // the same count given by the caller is fine
    assert_eq!(Shard::from_env(&e, Some(4)), Ok(shard(2, 4)));
    // --array=1-4, task 4 -> index 4 - 1 = 3
    let e = env(&[
        ("SLURM_ARRAY_TASK_ID", "4"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
    ]);
    assert_eq!(Shard::from_env(&e, None), Ok(shard(3, 4)));
    // no SLURM_ARRAY_TASK_COUNT: the caller's count or DAMRO_SHARD_COUNT
    let e = env(&[("SLURM_ARRAY_TASK_ID", " 1 ")]);
    assert_eq!(Shard::from_env(&e, Some(3)), Ok(shard(1, 3)));
    let e = env(&[("SLURM_ARRAY_TASK_ID", "1"), ("DAMRO_SHARD_COUNT", "2")]);
    assert_eq!(Shard::from_env(&e, None), Ok(shard(1, 2)));
    // Slurm wins over a stray Kubernetes index
    let e = env(&[
        ("SLURM_ARRAY_TASK_ID", "0"),
        ("SLURM_ARRAY_TASK_COUNT", "2"),
        ("JOB_COMPLETION_INDEX", "1"),
    ]);
    assert_eq!(Shard::from_env(&e, None), Ok(shard(0, 2)));
}

#[test]
fn kubernetes_indexed_jobs() {
    let e = env(&[("JOB_COMPLETION_INDEX", "5")]);
    assert_eq!(Shard::from_env(&e, Some(8)), Ok(shard(5, 8)));
    let e = env(&[("JOB_COMPLETION_INDEX", "0"), ("DAMRO_SHARD_COUNT", "3")]);
    assert_eq!(Shard::from_env(&e, None), Ok(shard(0, 3)));
    assert_eq!(
        Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "0")]), None),
        Err(ShardEnvError::MissingCount {
            index_var: "JOB_COMPLETION_INDEX"
        })
    );
}

#[test]
fn every_bad_environment_has_its_error() {
    assert_eq!(
        Shard::from_env(env(&[]), Some(4)),
        Err(ShardEnvError::NotSet)
    );
    type Case = (
        Vec<(&'static str, &'static str)>,
        Option<usize>,
        ShardEnvError,
    );
    let cases: Vec<Case> = vec![
        (
            vec![("SLURM_ARRAY_TASK_ID", "two")],
            Some(4),
            ShardEnvError::NotANumber {
                var: "SLURM_ARRAY_TASK_ID",
                value: "two".into(),
            },
        ),
        (
            vec![("JOB_COMPLETION_INDEX", "1.5")],
            Some(4),
            ShardEnvError::NotANumber {
                var: "JOB_COMPLETION_INDEX",
                value: "1.5".into(),
            },
        ),
        (
            vec![("JOB_COMPLETION_INDEX", "1"), ("DAMRO_SHARD_COUNT", "")],
            None,
            ShardEnvError::NotANumber {
                var: "DAMRO_SHARD_COUNT",
                value: String::new(),
            },
        ),
        (
            vec![("JOB_COMPLETION_INDEX", "-1")],
            Some(4),
            ShardEnvError::Negative {
                var: "JOB_COMPLETION_INDEX",
                value: -1,
            },
        ),
        (
            vec![
                ("SLURM_ARRAY_TASK_ID", "3"),
                ("SLURM_ARRAY_TASK_COUNT", "-2"),
            ],
            None,
            ShardEnvError::Negative {
                var: "SLURM_ARRAY_TASK_COUNT",
                value: -2,
            },
        ),
        (
            vec![("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_MIN", "1")],
            Some(4),
            ShardEnvError::BelowMin { id: 0, min: 1 },
        ),
        // --array=0-15:4 gives ids 0, 4, 8, 12 with count 4
        (
            vec![
                ("SLURM_ARRAY_TASK_ID", "12"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
            ],
            None,
            ShardEnvError::IndexOutOfRange {
                index: 12,
                index_var: "SLURM_ARRAY_TASK_ID",
                count: 4,
            },
        ),
        (
            vec![("JOB_COMPLETION_INDEX", "4")],
            Some(4),
            ShardEnvError::IndexOutOfRange {
                index: 4,
                index_var: "JOB_COMPLETION_INDEX",
                count: 4,
            },
        ),
        (
            vec![("JOB_COMPLETION_INDEX", "0")],
            Some(0),
            ShardEnvError::ZeroCount {
                from: "the count argument",
            },
        ),
        (
            vec![
                ("SLURM_ARRAY_TASK_ID", "0"),
                ("SLURM_ARRAY_TASK_COUNT", "0"),
            ],
            None,
            ShardEnvError::ZeroCount {
                from: "SLURM_ARRAY_TASK_COUNT",
            },
        ),
        (
            vec![("JOB_COMPLETION_INDEX", "0"), ("DAMRO_SHARD_COUNT", "0")],
            None,
            ShardEnvError::ZeroCount {
                from: "DAMRO_SHARD_COUNT",
            },
        ),
        (
            vec![
                ("SLURM_ARRAY_TASK_ID", "1"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
            ],
            Some(8),
            ShardEnvError::CountMismatch {
                first: 4,
                first_from: "SLURM_ARRAY_TASK_COUNT",
                second: 8,
                second_from: "the count argument",
            },
        ),
    ];
    for (vars, count, expected) in cases {
        assert_eq!(
            Shard::from_env(env(&vars), count),
            Err(expected.clone()),
            "{vars:?} {count:?}"
        );
        // the message names what was wrong
        let message = expected.to_string();
        assert!(!message.is_empty());
    }
}

#[test]
fn the_shard_flag_takes_auto_or_a_fixed_shard() {
    let e = env(&[("JOB_COMPLETION_INDEX", "1")]);
    assert_eq!(
        "auto"
            .parse::<ShardSpec>()
            .unwrap()
            .resolve(&e, Some(2))
            .unwrap(),
        shard(1, 2)
    );
    assert_eq!(
        "0/3"
            .parse::<ShardSpec>()
            .unwrap()
            .resolve(&e, Some(2))
            .unwrap(),
        shard(0, 3)
    );
    assert!(matches!(
        "AUTO".parse::<ShardSpec>().unwrap().resolve(env(&[]), None),
        Err(Error::ShardEnv(ShardEnvError::NotSet))
    ));
    assert!(matches!(
        "4/3".parse::<ShardSpec>(),
        Err(Error::InvalidShard { .. })
    ));
    let message = Error::from(ShardEnvError::NotSet).to_string();
    assert!(
        message.contains("SLURM_ARRAY_TASK_ID") && message.contains("JOB_COMPLETION_INDEX"),
        "{message}"
    );
}

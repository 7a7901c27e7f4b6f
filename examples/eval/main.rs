//! POPE, MME and CHAIR from the command line: run a model over a
//! benchmark's questions (batched, resumable, shardable over a cluster's
//! job array), merge the shards, score answer files under the authors'
//! rules, and compare several answer files side by side.
//!
//! Run with: `scripts/libtorch-env.sh cargo run --release --example eval -- <command> ...`
//! (`eval <command> --help` lists every flag of a command).
//!
//! Commands:
//! - `pope-run`: answers a POPE question file (`--questions FILE`) or
//!   several named splits at once (`--split random=FILE --split
//!   popular=FILE ...`, one answers file per split), then scores them when
//!   the whole set is answered.
//! - `pope-score`: scores POPE answers (`--rule damro`, the authors' rule,
//!   by default; `--rule pope`, the common one); several splits give one
//!   report per split and a table with their average.
//! - `pope-merge`: checks that shard files answer every question exactly
//!   once and writes them as one file.
//! - `chair-run`, `chair`: captions COCO images (the CHAIR preset), scores
//!   captions against COCO annotations.
//! - `mme-run`, `mme-score`, `mme-merge`: MME from the `lmms-lab/MME`
//!   parquet shards or the release folder, the question as the prompt.
//! - `compare`: several answers files of the same questions, side by side.
//!
//! Every run command takes the model flags, `--mode plain|damro` with the
//! contrast view (`--contrast damro|vcd|no-image|cutoff-only` and its
//! parameters), `--batch-size N`, `--shard i/N|auto` (with `--shard-count`),
//! `--limit N` and `--seed S` or `--greedy`. It writes its settings next to
//! its answers (`<answers>.settings.json`); the scorers record them in the
//! metrics JSON with the rule, the model ids and the scored / unscored
//! counts.
//!
//! Seeding: the authors seed their run once (seed 42) and sample every
//! question from that one generator stream. Here every generate call (one
//! batch of `--batch-size` questions) starts a generator seeded with
//! `--seed`, so a resumed or sharded run answers each question as an
//! uninterrupted one does at batch size 1; the draws are not the authors'
//! draws. With sampling and a batch size above 1 a question's draws depend
//! on the other questions of its batch; `--greedy` answers do not.

#[path = "../common/cli.rs"]
mod cli;

mod chair;
mod compare;
mod files;
mod mme;
mod pope;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Evaluation of LVLM decoding (plain, DAMRO, other contrast views) on
/// POPE, MME and CHAIR.
#[derive(Debug, Parser)]
#[command(name = "eval")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Answer POPE questions (one file or several splits), then score them.
    PopeRun(pope::RunArgs),
    /// Score POPE answers (one file or several splits and their average).
    PopeScore(pope::ScoreArgs),
    /// Merge the shard answer files of a POPE run (every question once).
    PopeMerge(pope::MergeArgs),
    /// Caption the COCO images of a folder for CHAIR.
    ChairRun(chair::RunArgs),
    /// Score captions with CHAIR against COCO annotation files.
    Chair(chair::ScoreArgs),
    /// Answer MME questions (parquet shards or the release folder).
    MmeRun(mme::RunArgs),
    /// Score MME answers.
    MmeScore(mme::ScoreArgs),
    /// Merge the shard answer files of an MME run.
    MmeMerge(mme::MergeArgs),
    /// Score several answers files of the same questions side by side.
    Compare(compare::CompareArgs),
}

fn main() -> ExitCode {
    // Thousands of generations: keep freed buffers for the next batch.
    damro::memory::retain_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::PopeRun(args) => pope::run(args),
        Command::PopeScore(args) => pope::score(args),
        Command::PopeMerge(args) => pope::merge(args),
        Command::ChairRun(args) => chair::run(args),
        Command::Chair(args) => chair::score(args),
        Command::MmeRun(args) => mme::run(args),
        Command::MmeScore(args) => mme::score(args),
        Command::MmeMerge(args) => mme::merge(args),
        Command::Compare(args) => compare::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            print_error(&err);
            ExitCode::FAILURE
        }
    }
}

/// Prints `error: ` and the chain of causes, one per line, leaving out a
/// cause whose text the line before already shows (the library's messages
/// often include their source).
fn print_error(err: &anyhow::Error) {
    let mut shown = err.to_string();
    eprintln!("error: {shown}");
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !shown.contains(&text) {
            eprintln!("  caused by: {text}");
        }
        shown = text;
    }
}

//! The paper's analysis (DAMRO Sec. 2.3, Figures 2-5) from this project's
//! own decoder: where the LLM's attention over the image goes when it
//! generates each word, compared with the ViT's \[CLS\] outliers.
//!
//! Run with: `scripts/libtorch-env.sh cargo run --release --example analyze -- <command> ...`
//! (`analyze <command> --help` lists every flag of a command).
//!
//! Commands:
//! - `run`: captions every COCO image of a folder with the paper's prompt
//!   ("What can you see in this image?", plain greedy decoding by
//!   default) with the decoder's attention captured, and writes one
//!   record per image: the caption, the token ids, each token's text
//!   piece and its `H_1..H_10` and `F` (or, where those are undefined, as
//!   for InstructBLIP's Q-Former queries, its raw image attention).
//!   Batched, resumable and shardable like the `eval` runs.
//! - `score`: marks hallucinated object words and sentences with CHAIR
//!   and writes Figure 4 (mean `H_i`, hallucinatory vs not, sentence and
//!   object level: CSV, PNG plot, Markdown) and Figure 5 (mean `F`:
//!   Markdown and JSON).
//! - `heatmap`: for one image and one generated word or token, the
//!   decoder's image attention beside the ViT's \[CLS\] attention, as one
//!   PNG (Figures 2 and 3).

#[path = "../common/cli.rs"]
mod cli;

mod capture;
mod heatmap;
mod plot;
mod run;
mod score;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The paper's analysis of decoder attention and hallucination.
#[derive(Debug, Parser)]
#[command(name = "analyze")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Caption a folder of COCO images with the attention captured.
    Run(run::RunArgs),
    /// Figures 4 and 5 from the records of `run` and COCO annotations.
    Score(score::ScoreArgs),
    /// The decoder's attention for one generated word beside the ViT's
    /// [CLS] map.
    Heatmap(heatmap::HeatmapArgs),
}

fn main() -> ExitCode {
    // One generation per image: keep freed buffers for the next one.
    damro::memory::retain_freed_memory();
    let result = match Cli::parse().command {
        Command::Run(args) => run::run(args),
        Command::Score(args) => score::score(args),
        Command::Heatmap(args) => heatmap::heatmap(args),
    };
    cli::exit_code(result)
}

//! `analyze score`: marks the hallucinated object words and sentences of
//! every record with CHAIR and writes Figures 4 and 5.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use damro_eval::analysis::{
    Aggregator, AnalysisSummary, CaptionAnalysis, Level, Measures, RecordSet, mark_caption,
    read_records,
};
use damro_eval::chair::{ChairEvaluator, GroundTruth};
use serde_json::json;

use crate::plot;

/// Bad records printed one by one before the rest are only counted.
const SHOWN_BAD: usize = 20;

/// `score`'s flags.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The records of `analyze run` (repeat for the shard files).
    #[arg(long, value_name = "FILE", required = true)]
    records: Vec<PathBuf>,
    /// The CHAIR synonyms file (one line per COCO object: its words).
    #[arg(long, value_name = "FILE")]
    synonyms: PathBuf,
    /// COCO instances files (instances_val2014.json); repeat for several.
    #[arg(long, value_name = "FILE", required = true)]
    instances: Vec<PathBuf>,
    /// COCO caption files (captions_val2014.json) adding ground truth.
    #[arg(long, value_name = "FILE")]
    coco_captions: Vec<PathBuf>,
    /// The folder for figure4.csv, figure4.png, figure4.md, figure5.md,
    /// figure5.json and marks.jsonl (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A TrueType / OpenType font file for the plot's text (title, axes,
    /// legend); without one the plot has no text and figure4.md holds
    /// its legend.
    #[arg(long, value_name = "FILE")]
    font: Option<PathBuf>,
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
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

/// The records with `H` and `F`, all from runs with the same settings.
fn overlap_records(set: &RecordSet) -> Result<Vec<&CaptionAnalysis>> {
    let (overlap, raw): (Vec<&CaptionAnalysis>, Vec<&CaptionAnalysis>) = set
        .records
        .iter()
        .partition(|r| r.measures == Measures::Overlap);
    if overlap.is_empty() {
        let why = raw.first().and_then(|r| r.note.clone()).unwrap_or_default();
        bail!("no record carries H_i and F: {why}");
    }
    if !raw.is_empty() {
        eprintln!(
            "warning: {} record(s) carry raw attention only (no H_i / F); left out",
            raw.len()
        );
    }
    let first = &overlap[0];
    if let Some(other) = overlap.iter().find(|r| r.settings != first.settings) {
        bail!(
            "the records come from runs with different settings (image {}: {:?}; image {}: {:?}); score each run on its own",
            first.image_id,
            first.settings,
            other.image_id,
            other.settings
        );
    }
    Ok(overlap)
}

/// Figures 4 and 5 of the records; also returns each image's marks.
fn figures(
    records: &[&CaptionAnalysis],
    evaluator: &ChairEvaluator,
    truth: &GroundTruth,
) -> Result<(AnalysisSummary, Vec<serde_json::Value>, usize)> {
    let max_i = records
        .iter()
        .find_map(|r| r.tokens.first().and_then(|t| t.h.as_ref()).map(Vec::len))
        .unwrap_or(damro::analysis::OVERLAP_MAX_I);
    let mut aggregator = Aggregator::new(max_i);
    let mut marked = Vec::new();
    let mut without_truth = 0;
    for record in records {
        let Some(objects) = truth.objects(record.image_id) else {
            without_truth += 1;
            continue;
        };
        let marks = mark_caption(evaluator, objects, &record.pieces());
        aggregator
            .add(&marks, &record.tokens)
            .map_err(|e| anyhow::anyhow!("image {}: {e}", record.image_id))?;
        let mut line = serde_json::to_value(&marks)?;
        line["image_id"] = record.image_id.into();
        marked.push(line);
    }
    Ok((aggregator.summary(), marked, without_truth))
}

/// Figure 4's Markdown: the legend of the PNG and the table.
fn figure4_markdown(summary: &AnalysisSummary) -> String {
    format!(
        "# Figure 4: mean H_i, hallucinatory vs not\n\n\
         {} images. H_i = |top-i decoder image attention ∩ top-i ViT [CLS] attention| / i, \
         averaged over the tokens of each column.\n\n\
         figure4.png:\n\n{}\n{}",
        summary.images,
        plot::legend_markdown(),
        summary.figure4_markdown()
    )
}

/// Figure 5's JSON: the mean F per level and group, with the paper's.
fn figure5_json(summary: &AnalysisSummary, record: &CaptionAnalysis) -> serde_json::Value {
    let level = |l: Level| {
        let s = summary.level(l);
        let group = |g: &damro_eval::analysis::GroupSummary| json!({"mean_f": g.mean_f, "tokens": g.f_tokens});
        json!({"hallucinatory": group(&s.hallucinatory), "non_hallucinatory": group(&s.non_hallucinatory)})
    };
    json!({
        "figure": 5,
        "measure": "F: the share of the decoder's image attention on the ViT's top outliers",
        "influence_top": record.settings.get("influence_top"),
        "images": summary.images,
        "model_id": record.model_id,
        "settings": record.settings,
        "sentence": level(Level::Sentence),
        "object": level(Level::Object),
        "paper_llava_1_5_coco_1000": {
            "sentence": {"hallucinatory": 0.0554, "non_hallucinatory": 0.0539},
            "object": {"hallucinatory": 0.0605, "non_hallucinatory": 0.0551}
        }
    })
}

fn report_bad(set: &RecordSet) {
    for bad in set.bad.iter().take(SHOWN_BAD) {
        eprintln!("warning: unusable record: {bad}");
    }
    if set.bad.len() > SHOWN_BAD {
        eprintln!(
            "warning: ... and {} more unusable records",
            set.bad.len() - SHOWN_BAD
        );
    }
}

/// `score`.
pub fn score(args: ScoreArgs) -> Result<()> {
    let set = read_records(&args.records)?;
    report_bad(&set);
    if set.records.is_empty() {
        bail!(
            "no usable record in {:?}; expected the records file(s) of `analyze run`",
            args.records
        );
    }
    let records = overlap_records(&set)?;
    let evaluator = ChairEvaluator::from_synonyms_file(&args.synonyms)?;
    let ids: HashSet<u64> = records.iter().map(|r| r.image_id).collect();
    let truth =
        GroundTruth::from_coco(&evaluator, &args.instances, &args.coco_captions, Some(&ids))?;
    let (summary, marked, without_truth) = figures(&records, &evaluator, &truth)?;
    if without_truth > 0 {
        eprintln!(
            "warning: {without_truth} image(s) have no annotation in the --instances / --coco-captions files; left out"
        );
    }
    if summary.images == 0 {
        bail!(
            "none of the images has an annotation in the --instances / --coco-captions files (wrong files?)"
        );
    }
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating `{}`", out.display()))?;
    write_atomically(&out.join("figure4.csv"), summary.figure4_csv().as_bytes())?;
    write_atomically(
        &out.join("figure4.md"),
        figure4_markdown(&summary).as_bytes(),
    )?;
    plot::figure4_png(&summary, args.font.as_deref(), &out.join("figure4.png"))?;
    let figure5 = format!(
        "# Figure 5: mean F (share of the decoder's image attention on the ViT's top outliers)\n\n{} images.\n\n{}\n\
         The paper (LLaVA-1.5, 1000 COCO val2014 images): sentence level 0.0554 hallucinatory vs 0.0539 not; \
         object level 0.0605 vs 0.0551.\n",
        summary.images,
        summary.figure5_markdown()
    );
    write_atomically(&out.join("figure5.md"), figure5.as_bytes())?;
    let json = serde_json::to_string_pretty(&figure5_json(&summary, records[0]))?;
    write_atomically(&out.join("figure5.json"), format!("{json}\n").as_bytes())?;
    let mut lines = String::new();
    for line in &marked {
        lines.push_str(&serde_json::to_string(line)?);
        lines.push('\n');
    }
    write_atomically(&out.join("marks.jsonl"), lines.as_bytes())?;
    println!(
        "{} images\n\nFigure 5 (mean F):\n{}",
        summary.images,
        summary.figure5_markdown()
    );
    println!("Figure 4 and 5 files in {}", out.display());
    Ok(())
}

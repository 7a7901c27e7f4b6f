//! What `run` and `heatmap` share: the capture flags, the paper's prompt,
//! and one generation turned into an analysis record (text pieces and
//! per-token measures).

use anyhow::{Context, Result};
use clap::Args;
use clap::builder::TypedValueParser;
use damro::analysis::token_metrics;
use damro::{AttentionCapture, AutoDecoder, DamroDecoder, Generation, Selection};
use damro_eval::RunSettings;
use damro_eval::analysis::{CaptionAnalysis, Measures, TokenRecord, incremental_pieces};

/// The paper's analysis prompt (Sec. 2.3).
pub const PAPER_PROMPT: &str = "What can you see in this image?";

/// Which decoder layers and heads the captured attention averages over.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Decoder layers to average over: `all` or 0-based indices (`0,5,31`).
    #[arg(long, default_value = "all", value_parser = parse_selection)]
    pub layers: Selection,
    /// Attention heads to average over: `all` or 0-based indices.
    #[arg(long, default_value = "all", value_parser = parse_selection)]
    pub heads: Selection,
    /// `n` of `H_1..H_n` (the paper: 10).
    #[arg(long, default_value_t = damro::analysis::OVERLAP_MAX_I,
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub max_i: usize,
    /// The ViT outliers `F` is measured on (the paper: top 3).
    #[arg(long, default_value_t = damro::analysis::INFLUENCE_TOP,
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub influence_top: usize,
}

/// `all` or a comma-separated list of indices.
fn parse_selection(text: &str) -> Result<Selection, String> {
    if text == "all" {
        return Ok(Selection::All);
    }
    let indices = text
        .split(',')
        .map(|part| part.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("`{text}`: expected `all` or 0-based indices such as `0,5,31`"))?;
    Ok(Selection::Only(indices))
}

fn describe(selection: &Selection) -> serde_json::Value {
    match selection {
        Selection::Only(indices) => serde_json::json!(indices),
        _ => "all".into(),
    }
}

impl CaptureArgs {
    /// The capture for the generation config, checked against the
    /// decoder's layer and head counts.
    pub fn capture(&self, decoder: &AutoDecoder) -> Result<AttentionCapture> {
        let capture = AttentionCapture {
            layers: self.layers.clone(),
            heads: self.heads.clone(),
        };
        let config = decoder.language_model().config();
        capture
            .validate(
                usize::try_from(config.num_hidden_layers).unwrap_or(0),
                usize::try_from(config.num_attention_heads).unwrap_or(0),
            )
            .context("--layers / --heads")?;
        Ok(capture)
    }

    /// The capture's entries of a record's settings.
    pub fn record(&self, settings: &mut RunSettings) {
        settings.insert("capture_layers", describe(&self.layers));
        settings.insert("capture_heads", describe(&self.heads));
        settings.insert("overlap_max_i", self.max_i);
        settings.insert("influence_top", self.influence_top);
    }
}

/// Why a model's records carry raw attention instead of `H` and `F`.
pub fn raw_attention_note(decoder: &AutoDecoder) -> String {
    match decoder {
        AutoDecoder::InstructBlip(_) => {
            "InstructBLIP's image tokens are the Q-Former's query outputs, \
            not ViT patches: H_i and F (overlap with the ViT's [CLS] outliers) are undefined; each \
            token carries its attention over the query tokens instead"
                .to_owned()
        }
        other => format!(
            "the {} model gives no [CLS] scores over its image tokens: each token carries its raw \
             attention over the image tokens instead of H_i and F",
            other.family()
        ),
    }
}

/// Checks that the generation carries one attention map per token (a
/// model whose adapter does not say where its image tokens are records
/// none).
pub fn check_attention(decoder: &AutoDecoder, generation: &Generation) -> Result<()> {
    let (maps, tokens) = (generation.attention.len(), generation.token_ids.len());
    if maps == 0 && tokens > 0 {
        anyhow::bail!(
            "the {} model recorded no decoder attention over its image tokens (its adapter's \
             DamroDecoder::analysis_inputs gives no image span)",
            decoder.family()
        );
    }
    anyhow::ensure!(
        maps == tokens,
        "{maps} attention maps for {tokens} generated tokens"
    );
    Ok(())
}

/// The text each generated token adds.
pub fn pieces(decoder: &AutoDecoder, token_ids: &[i64]) -> Result<Vec<String>> {
    incremental_pieces(token_ids.len(), |n| decoder.decode(&token_ids[..n]))
        .context("decoding the generated tokens one prefix at a time")
}

/// The analysis record of one generation (image fields left for the
/// caller).
pub fn analysis_record(
    decoder: &AutoDecoder,
    generation: &Generation,
    capture: &CaptureArgs,
    mut record: CaptionAnalysis,
) -> Result<CaptionAnalysis> {
    check_attention(decoder, generation)?;
    let pieces = pieces(decoder, &generation.token_ids)?;
    record.caption = generation.text.clone();
    if generation.cls_attention.is_some() {
        record.measures = Measures::Overlap;
        let metrics = token_metrics(generation, capture.max_i, capture.influence_top)
            .context("computing H_i and F")?;
        for ((piece, id), m) in pieces.into_iter().zip(&generation.token_ids).zip(metrics) {
            record.push_token(*id, TokenRecord::overlap(piece, m.overlap, m.influence));
        }
    } else {
        record.measures = Measures::RawAttention;
        record.note = Some(raw_attention_note(decoder));
        for ((piece, id), map) in pieces
            .into_iter()
            .zip(&generation.token_ids)
            .zip(&generation.attention)
        {
            record.push_token(*id, TokenRecord::raw(piece, map.clone()));
        }
    }
    record
        .validate()
        .map_err(|problem| anyhow::anyhow!("inconsistent analysis of a generation: {problem}"))?;
    Ok(record)
}

//! Every size a built-in model's `config.json` states, checked against the
//! bounds of [`damro_nn::limits`] and against the tensors its checkpoint
//! holds, before anything is built.
//!
//! Each function below lists, for one config type, which field is carried
//! by which tensor dimension (`hidden_size` is the width of the embedding
//! matrix, `image_size / patch_size` fixes the rows of the position
//! embedding, `num_hidden_layers` the layers on disk). A config that
//! disagrees with its weights, or states a size past the bounds, is then
//! one error naming `config.json`, each field and each tensor, instead of
//! a huge allocation or a loop over a billion layers while loading.
//! Tensors that are absent are left to the loaders, which report them with
//! every other missing tensor.

use std::path::Path;

use damro_core::Result;
use damro_llm::LlamaConfig;
use damro_nn::Weights;
use damro_nn::limits::{self, SizeCheck, field_name};
use damro_vision::{
    ClipVisionConfig, EvaVisionConfig, InstructBlipConfig, LlavaConfig, LlavaNextConfig,
    QFormerConfig,
};

/// `` `field` = value ``, the way a claim names its source.
fn claim(field: &str, value: i64) -> String {
    format!("`{field}` = {value}")
}

/// Checks each `(field, value, max)` against its bound; true when all hold.
fn all_bounded(check: &mut SizeCheck, section: &str, bounds: &[(&str, i64, i64)]) -> bool {
    let mut within = true;
    for &(name, value, max) in bounds {
        within &= check.bounded(&field_name(section, name), value, max);
    }
    within
}

/// A LLaMA's sizes; `w` is the position [`damro_llm::Llama::load`] is
/// given, fields are named under `section` (`text_config`).
pub fn check_llama(check: &mut SizeCheck, config: &LlamaConfig, w: &Weights, section: &str) {
    let c = config;
    let bounds = [
        ("vocab_size", c.vocab_size, limits::MAX_VOCAB),
        ("hidden_size", c.hidden_size, limits::MAX_WIDTH),
        ("intermediate_size", c.intermediate_size, limits::MAX_WIDTH),
        ("num_hidden_layers", c.num_hidden_layers, limits::MAX_LAYERS),
        (
            "num_attention_heads",
            c.num_attention_heads,
            limits::MAX_HEADS,
        ),
        (
            "num_key_value_heads",
            c.num_key_value_heads,
            limits::MAX_HEADS,
        ),
        ("head_dim", c.head_dim, limits::MAX_WIDTH),
        (
            "max_position_embeddings",
            c.max_position_embeddings,
            limits::MAX_POSITIONS,
        ),
    ];
    if !all_bounded(check, section, &bounds) {
        return;
    }
    let field = |name: &str| field_name(section, name);
    let m = w.pp("model");
    let hidden = claim(&field("hidden_size"), c.hidden_size);
    check.dim(&m, "embed_tokens.weight", 1, &hidden, c.hidden_size);
    let layer = m.pp("layers").pp(0);
    let heads = |name: &str, count: i64| {
        format!(
            "{} x {}",
            claim(&field(name), count),
            claim(&field("head_dim"), c.head_dim)
        )
    };
    let (q, kv) = (c.num_attention_heads, c.num_key_value_heads);
    let q_heads = heads("num_attention_heads", q);
    check.dim(
        &layer,
        "self_attn.q_proj.weight",
        0,
        q_heads,
        q * c.head_dim,
    );
    check.dim(&layer, "self_attn.q_proj.weight", 1, &hidden, c.hidden_size);
    let kv_heads = heads("num_key_value_heads", kv);
    check.dim(
        &layer,
        "self_attn.k_proj.weight",
        0,
        kv_heads,
        kv * c.head_dim,
    );
    let inter = claim(&field("intermediate_size"), c.intermediate_size);
    check.dim(
        &layer,
        "mlp.gate_proj.weight",
        0,
        inter,
        c.intermediate_size,
    );
    let layers = c.num_hidden_layers;
    check.layers(&m.pp("layers"), &field("num_hidden_layers"), layers, layers);
}

/// The patch geometry both ViTs share: the patch embedding's
/// `[hidden, channels, patch, patch]` and the positions' rows.
struct Patches<'a> {
    hidden: i64,
    channels: i64,
    image: i64,
    patch: i64,
    /// Position embedding: tensor name and the axis of its rows.
    positions: (&'a str, usize),
}

fn check_patches(check: &mut SizeCheck, w: &Weights, section: &str, p: &Patches<'_>) {
    let field = |name: &str| field_name(section, name);
    let e = w.pp("embeddings");
    let hidden = claim(&field("hidden_size"), p.hidden);
    check.dim(&e, "patch_embedding.weight", 0, &hidden, p.hidden);
    let channels = claim(&field("num_channels"), p.channels);
    check.dim(&e, "patch_embedding.weight", 1, channels, p.channels);
    let patch = claim(&field("patch_size"), p.patch);
    check.dim(&e, "patch_embedding.weight", 2, patch, p.patch);
    let grid = p.image / p.patch;
    let positions = format!(
        "{} with {} ({grid}x{grid} patches and [CLS])",
        claim(&field("image_size"), p.image),
        claim(&field("patch_size"), p.patch)
    );
    let (name, axis) = p.positions;
    check.dim(&e, name, axis, positions, grid * grid + 1);
}

/// A CLIP tower's sizes; `w` is `vision_tower.vision_model`, `needed` the
/// number of encoder layers the model loads.
pub fn check_clip(check: &mut SizeCheck, c: &ClipVisionConfig, w: &Weights, needed: i64) {
    let section = "vision_config";
    let bounds = [
        ("hidden_size", c.hidden_size, limits::MAX_WIDTH),
        ("intermediate_size", c.intermediate_size, limits::MAX_WIDTH),
        ("num_hidden_layers", c.num_hidden_layers, limits::MAX_LAYERS),
        (
            "num_attention_heads",
            c.num_attention_heads,
            limits::MAX_HEADS,
        ),
        ("num_channels", c.num_channels, limits::MAX_CHANNELS),
        ("image_size", c.image_size, limits::MAX_IMAGE_SIDE),
    ];
    if !all_bounded(check, section, &bounds) {
        return;
    }
    let patches = Patches {
        hidden: c.hidden_size,
        channels: c.num_channels,
        image: c.image_size,
        patch: c.patch_size,
        positions: ("position_embedding.weight", 0),
    };
    check_patches(check, w, section, &patches);
    let layers = w.pp("encoder").pp("layers");
    let inter = claim(
        &field_name(section, "intermediate_size"),
        c.intermediate_size,
    );
    check.dim(
        &layers.pp(0),
        "mlp.fc1.weight",
        0,
        inter,
        c.intermediate_size,
    );
    let field = field_name(section, "num_hidden_layers");
    check.layers(&layers, &field, c.num_hidden_layers, needed);
}

/// An EVA tower's sizes (InstructBLIP); `w` is `vision_model`.
pub fn check_eva(check: &mut SizeCheck, c: &EvaVisionConfig, w: &Weights) {
    let section = "vision_config";
    let bounds = [
        ("hidden_size", c.hidden_size, limits::MAX_WIDTH),
        ("intermediate_size", c.intermediate_size, limits::MAX_WIDTH),
        ("num_hidden_layers", c.num_hidden_layers, limits::MAX_LAYERS),
        (
            "num_attention_heads",
            c.num_attention_heads,
            limits::MAX_HEADS,
        ),
        ("image_size", c.image_size, limits::MAX_IMAGE_SIDE),
    ];
    if !all_bounded(check, section, &bounds) {
        return;
    }
    let patches = Patches {
        hidden: c.hidden_size,
        channels: 3,
        image: c.image_size,
        patch: c.patch_size,
        positions: ("position_embedding", 1),
    };
    check_patches(check, w, section, &patches);
    let layers = w.pp("encoder").pp("layers");
    let inter = claim(
        &field_name(section, "intermediate_size"),
        c.intermediate_size,
    );
    check.dim(
        &layers.pp(0),
        "mlp.fc1.weight",
        0,
        inter,
        c.intermediate_size,
    );
    let n = c.num_hidden_layers;
    check.layers(&layers, &field_name(section, "num_hidden_layers"), n, n);
}

/// A Q-Former's sizes; `w` is `qformer`.
pub fn check_qformer(check: &mut SizeCheck, c: &QFormerConfig, w: &Weights) {
    let section = "qformer_config";
    let bounds = [
        ("vocab_size", c.vocab_size, limits::MAX_VOCAB),
        ("hidden_size", c.hidden_size, limits::MAX_WIDTH),
        ("intermediate_size", c.intermediate_size, limits::MAX_WIDTH),
        ("num_hidden_layers", c.num_hidden_layers, limits::MAX_LAYERS),
        (
            "num_attention_heads",
            c.num_attention_heads,
            limits::MAX_HEADS,
        ),
        (
            "max_position_embeddings",
            c.max_position_embeddings,
            limits::MAX_POSITIONS,
        ),
        (
            "encoder_hidden_size",
            c.encoder_hidden_size,
            limits::MAX_WIDTH,
        ),
    ];
    if !all_bounded(check, section, &bounds) {
        return;
    }
    let field = |name: &str| field_name(section, name);
    let e = w.pp("embeddings");
    let vocab = claim(&field("vocab_size"), c.vocab_size);
    check.dim(&e, "word_embeddings.weight", 0, vocab, c.vocab_size);
    let hidden = claim(&field("hidden_size"), c.hidden_size);
    check.dim(&e, "word_embeddings.weight", 1, &hidden, c.hidden_size);
    let positions = claim(&field("max_position_embeddings"), c.max_position_embeddings);
    check.dim(
        &e,
        "position_embeddings.weight",
        0,
        positions,
        c.max_position_embeddings,
    );
    let layers = w.pp("encoder").pp("layer");
    let inter = claim(&field("intermediate_size"), c.intermediate_size);
    let dense = "intermediate_query.dense.weight";
    check.dim(&layers.pp(0), dense, 0, inter, c.intermediate_size);
    let n = c.num_hidden_layers;
    check.layers(&layers, &field("num_hidden_layers"), n, n);
}

/// A LLaVA-1.5 directory's `config.json` against its checkpoint (`root`,
/// opened with [`damro_nn::KeyMap::llava`]) and the bounds.
///
/// # Errors
/// [`damro_nn::Error::ConfigSizes`] listing every problem.
pub fn check_llava(
    dir: &Path,
    root: &Weights,
    config: &LlavaConfig,
    text: &LlamaConfig,
) -> Result<()> {
    let mut check = SizeCheck::new(dir.join("config.json"));
    let needed = config.layers_needed()?;
    check_clip(
        &mut check,
        &config.vision,
        &root.pp("vision_tower").pp("vision_model"),
        needed,
    );
    check_llama(&mut check, text, &root.pp("language_model"), "text_config");
    if !check.has_problems() {
        let projector = root.pp("multi_modal_projector");
        let p = &config.projector;
        let vision = format!(
            "`vision_config.hidden_size` = {} x {} feature layer(s)",
            config.vision.hidden_size,
            config.feature_layers.len()
        );
        check.dim(&projector, "linear_1.weight", 1, vision, p.in_dim);
        let out = claim("text_config.hidden_size", p.out_dim);
        check.dim(&projector, "linear_1.weight", 0, &out, p.out_dim);
        check.dim(&projector, "linear_2.weight", 0, &out, p.out_dim);
    }
    Ok(check.finish()?)
}

/// A LLaVA-NeXT directory's `config.json`: the LLaVA part as
/// [`check_llava`], plus `image_newline` (one row of the text width).
///
/// # Errors
/// [`damro_nn::Error::ConfigSizes`] listing every problem.
pub fn check_llava_next(
    dir: &Path,
    root: &Weights,
    config: &LlavaNextConfig,
    text: &LlamaConfig,
) -> Result<()> {
    check_llava(dir, root, &config.llava, text)?;
    let mut check = SizeCheck::new(dir.join("config.json"));
    let out = config.llava.projector.out_dim;
    check.dim(
        root,
        "image_newline",
        0,
        claim("text_config.hidden_size", out),
        out,
    );
    Ok(check.finish()?)
}

/// An InstructBLIP directory's `config.json` against its checkpoint and
/// the bounds.
///
/// # Errors
/// [`damro_nn::Error::ConfigSizes`] listing every problem.
pub fn check_instructblip(
    dir: &Path,
    root: &Weights,
    config: &InstructBlipConfig,
    text: &LlamaConfig,
) -> Result<()> {
    let mut check = SizeCheck::new(dir.join("config.json"));
    check.bounded(
        "num_query_tokens",
        config.num_query_tokens,
        limits::MAX_TOKENS,
    );
    check_eva(&mut check, &config.vision, &root.pp("vision_model"));
    check_qformer(&mut check, &config.qformer, &root.pp("qformer"));
    check_llama(&mut check, text, &root.pp("language_model"), "text_config");
    if !check.has_problems() {
        let queries = claim("num_query_tokens", config.num_query_tokens);
        check.dim(root, "query_tokens", 1, queries, config.num_query_tokens);
        let hidden = config.qformer.hidden_size;
        let q_hidden = claim("qformer_config.hidden_size", hidden);
        check.dim(root, "query_tokens", 2, q_hidden, hidden);
        let out = claim("text_config.hidden_size", config.text_hidden_size);
        check.dim(
            root,
            "language_projection.weight",
            0,
            out,
            config.text_hidden_size,
        );
    }
    Ok(check.finish()?)
}

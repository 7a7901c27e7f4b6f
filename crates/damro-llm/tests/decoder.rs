//! The decoder on random tiny checkpoints: cached decoding equals one full
//! masked forward, and rows of very different lengths batched together get
//! the same logits as alone (padded prefill and stacked caches alike).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use damro_llm::testing::write_random_llama;
use damro_llm::{Input, KvCache, Llama, LlamaConfig, LlamaConfigJson, LogitsAt, left_pad};
use damro_nn::attention::AttentionImpl;
use damro_nn::{Checkpoint, KeyMap, LoadOptions, Weights};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-5;

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("damro-llm-{tag}-{}-{n}", std::process::id()))
}

fn config(extra: serde_json::Value) -> LlamaConfig {
    let mut json = serde_json::json!({
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-5,
    });
    for (k, v) in extra.as_object().unwrap() {
        json[k] = v.clone();
    }
    LlamaConfigJson::from_value(json)
        .unwrap()
        .into_config()
        .unwrap()
}

/// libtorch's generator is global and the tests run in parallel: seeding
/// and drawing happen under this lock, so every model and input is the
/// same whatever else runs.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A random model stored the way LLaVA stores its LLM, loaded back.
fn model(cfg: &LlamaConfig, kind: Kind) -> Llama {
    let dir = temp_dir("model");
    {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        write_random_llama(&dir, cfg, "language_model", 7).unwrap();
    }
    let ckpt = Checkpoint::open(&dir, &KeyMap::llava()).unwrap();
    let w = Weights::new(
        ckpt,
        LoadOptions {
            kind,
            device: Device::Cpu,
        },
    )
    .unwrap();
    let m = Llama::load(&w.pp("language_model"), cfg).unwrap();
    w.finish().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    m
}

fn embeds(m: &Llama, len: i64, seed: i64) -> Tensor {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    let ids = Tensor::randint(m.config().vocab_size, [1, len], (Kind::Int64, Device::Cpu));
    m.embed(&ids).unwrap()
}

/// Max abs error relative to the second tensor's scale, `max(1, max|b|)`
/// (the workspace's measure, [`damro_nn::testing`]): the same bound then
/// holds on every CPU family.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    damro_nn::testing::Closeness::measure(a, b, damro_nn::testing::SELF_CONSISTENT)
        .unwrap()
        .relative()
}

/// Logits of every position from one full forward on an empty cache.
fn full_logits(m: &Llama, x: &Tensor) -> Tensor {
    let mut cache = m.new_cache(x.size()[0], 4).unwrap();
    m.forward(x, &mut cache, LogitsAt::All).unwrap()
}

fn check_cached_equals_full(cfg: &LlamaConfig) {
    check_model_cached_equals_full(&model(cfg, Kind::Float));
}

fn check_model_cached_equals_full(m: &Llama) {
    let cfg = m.config();
    let x = embeds(m, 13, 1);
    let full = full_logits(m, &x);
    assert_eq!(full.size(), vec![1, 13, cfg.vocab_size]);

    // Prefill 5, then one token at a time (the cache grows past 8 on the way).
    let mut cache = m.new_cache(1, 8).unwrap();
    let mut parts = vec![
        m.forward(&x.narrow(1, 0, 5), &mut cache, LogitsAt::All)
            .unwrap(),
    ];
    for t in 5..13 {
        parts.push(
            m.forward(&x.narrow(1, t, 1), &mut cache, LogitsAt::Last)
                .unwrap(),
        );
    }
    let stepped = Tensor::cat(&parts, 1);
    assert!(
        max_diff(&stepped, &full) < TOL,
        "{}",
        max_diff(&stepped, &full)
    );
    assert_eq!(cache.len(), 13);

    // Chunks after a prefix (offset causal mask).
    let mut cache = m.new_cache(1, 32).unwrap();
    let a = m
        .forward(&x.narrow(1, 0, 4), &mut cache, LogitsAt::All)
        .unwrap();
    let b = m
        .forward(&x.narrow(1, 4, 6), &mut cache, LogitsAt::All)
        .unwrap();
    let c = m
        .forward(
            &x.narrow(1, 10, 3),
            &mut cache,
            LogitsAt::Columns(vec![0, 2]),
        )
        .unwrap();
    let chunked = Tensor::cat(&[a, b], 1);
    assert!(max_diff(&chunked, &full.narrow(1, 0, 10)) < TOL);
    let picked = full.index_select(1, &Tensor::from_slice(&[10i64, 12]));
    assert!(max_diff(&c, &picked) < TOL);

    // A prompt's logits at its last column alone (the final layer then
    // runs that column only) equal the full forward's, and the cache they
    // leave decodes the next token as the full forward does; also for a
    // prompt after a prefix (offset causal mask).
    let mut cache = m.new_cache(1, 16).unwrap();
    let last = m
        .forward(&x.narrow(1, 0, 12), &mut cache, LogitsAt::Last)
        .unwrap();
    assert_eq!(last.size(), vec![1, 1, cfg.vocab_size]);
    assert!(max_diff(&last, &full.narrow(1, 11, 1)) < TOL);
    let next = m
        .forward(&x.narrow(1, 12, 1), &mut cache, LogitsAt::Last)
        .unwrap();
    assert!(max_diff(&next, &full.narrow(1, 12, 1)) < TOL);
    let mut cache = m.new_cache(1, 16).unwrap();
    let _prefix = m
        .forward(&x.narrow(1, 0, 4), &mut cache, LogitsAt::Last)
        .unwrap();
    let tail = m
        .forward(&x.narrow(1, 4, 9), &mut cache, LogitsAt::Last)
        .unwrap();
    assert!(max_diff(&tail, &full.narrow(1, 12, 1)) < TOL);
    assert_eq!(cache.len(), 13);
}

#[test]
fn cached_decoding_equals_full_forward() {
    check_cached_equals_full(&config(serde_json::json!({})));
}

#[test]
fn cached_decoding_with_gqa_tied_and_biases() {
    check_cached_equals_full(&config(serde_json::json!({
        "num_key_value_heads": 2, "tie_word_embeddings": true,
        "attention_bias": true, "mlp_bias": true,
    })));
}

#[test]
fn cached_decoding_with_eager_attention() {
    let cfg = config(serde_json::json!({"num_key_value_heads": 2}));
    check_model_cached_equals_full(&model(&cfg, Kind::Float).with_attention(AttentionImpl::Eager));
}

#[test]
fn cached_decoding_with_scaled_rope() {
    check_cached_equals_full(&config(serde_json::json!({
        "max_position_embeddings": 8, "rope_theta": 500.0,
        "rope_scaling": {"type": "linear", "factor": 2.0},
    })));
}

/// Runs `row` alone: prefill, then decode `steps` (embeddings `[1, n, h]`).
fn alone(m: &Llama, row: &Tensor, steps: &Tensor) -> Vec<Tensor> {
    let mut cache = m.new_cache(1, 16).unwrap();
    let mut out = vec![m.forward(row, &mut cache, LogitsAt::Last).unwrap()];
    for t in 0..steps.size()[1] {
        out.push(
            m.forward(&steps.narrow(1, t, 1), &mut cache, LogitsAt::Last)
                .unwrap(),
        );
    }
    out
}

/// Decodes both rows together on `cache`, one batch-2 forward per step.
fn decode_both(m: &Llama, cache: &mut KvCache, a: &Tensor, b: &Tensor) -> Vec<Tensor> {
    (0..a.size()[1])
        .map(|t| {
            let x = Tensor::cat(&[a.narrow(1, t, 1), b.narrow(1, t, 1)], 0);
            m.forward(&x, cache, LogitsAt::Last).unwrap()
        })
        .collect()
}

#[test]
fn uneven_batch_rows_match_rows_alone() {
    for extra in [
        serde_json::json!({}),
        serde_json::json!({"num_key_value_heads": 1}),
    ] {
        let cfg = config(extra);
        let m = model(&cfg, Kind::Float);
        // DAMRO's LLaVA branches: ~600 and ~30 tokens.
        let (long, short) = (embeds(&m, 600, 2), embeds(&m, 30, 3));
        let (next_long, next_short) = (embeds(&m, 5, 4), embeds(&m, 5, 5));
        let ref_long = alone(&m, &long, &next_long);
        let ref_short = alone(&m, &short, &next_short);

        // (1) One left-padded prefill of both rows.
        let (x, lens) = left_pad(&[&long.squeeze_dim(0), &short.squeeze_dim(0)]).unwrap();
        let mut cache = m.new_cache(2, 512).unwrap();
        let first = m
            .forward(Input::left_padded(&x, &lens), &mut cache, LogitsAt::Last)
            .unwrap();
        assert_eq!(cache.row_lens(), &[600, 30]);
        let mut padded = vec![first];
        padded.extend(decode_both(&m, &mut cache, &next_long, &next_short));

        // (2) Rows prefilled alone, caches stacked, decoded together.
        let mut ca = m.new_cache(1, 600).unwrap();
        let mut cb = m.new_cache(1, 30).unwrap();
        let la = m.forward(&long, &mut ca, LogitsAt::Last).unwrap();
        let lb = m.forward(&short, &mut cb, LogitsAt::Last).unwrap();
        let mut both = KvCache::stack(&[&ca, &cb], 640).unwrap();
        let mut stacked = vec![Tensor::cat(&[la, lb], 0)];
        stacked.extend(decode_both(&m, &mut both, &next_long, &next_short));
        assert_eq!(both.row_lens(), &[605, 35]);

        for (step, (p, s)) in padded.iter().zip(&stacked).enumerate() {
            for (row, reference) in [(0, &ref_long[step]), (1, &ref_short[step])] {
                let dp = max_diff(&p.narrow(0, row, 1), reference);
                let ds = max_diff(&s.narrow(0, row, 1), reference);
                assert!(dp < TOL && ds < TOL, "step {step} row {row}: {dp} {ds}");
            }
        }
    }
}

#[test]
fn forked_branches_decode_independently() {
    let cfg = config(serde_json::json!({}));
    let m = model(&cfg, Kind::Float);
    let prompt = embeds(&m, 9, 1);
    let (a, b) = (embeds(&m, 2, 2), embeds(&m, 2, 3));
    let mut base = m.new_cache(1, 16).unwrap();
    let _logits = m.forward(&prompt, &mut base, LogitsAt::Last).unwrap();
    let mut fork = base.fork().unwrap();
    let la = m.forward(&a, &mut base, LogitsAt::Last).unwrap();
    let lb = m.forward(&b, &mut fork, LogitsAt::Last).unwrap();
    let full_a = full_logits(&m, &Tensor::cat(&[&prompt, &a], 1)).narrow(1, 10, 1);
    let full_b = full_logits(&m, &Tensor::cat(&[&prompt, &b], 1)).narrow(1, 10, 1);
    assert!(max_diff(&la, &full_a) < TOL);
    assert!(max_diff(&lb, &full_b) < TOL);
    // Truncating back to the prompt and redoing b gives the same logits.
    base.truncate(9).unwrap();
    let lb2 = m.forward(&b, &mut base, LogitsAt::Last).unwrap();
    assert!(max_diff(&lb2, &lb) < TOL);
}

#[test]
fn bad_inputs_leave_the_cache_alone() {
    let cfg = config(serde_json::json!({}));
    let m = model(&cfg, Kind::Float);
    let mut cache = m.new_cache(1, 8).unwrap();
    let _logits = m
        .forward(&embeds(&m, 3, 1), &mut cache, LogitsAt::Last)
        .unwrap();
    let wrong_kind = embeds(&m, 1, 2).to_kind(Kind::Double);
    assert!(m.forward(&wrong_kind, &mut cache, LogitsAt::Last).is_err());
    let wrong_batch = embeds(&m, 1, 2).repeat([2, 1, 1]);
    assert!(m.forward(&wrong_batch, &mut cache, LogitsAt::Last).is_err());
    let x = embeds(&m, 2, 2);
    assert!(
        m.forward(&x, &mut cache, LogitsAt::Columns(vec![2]))
            .is_err()
    );
    assert_eq!(cache.len(), 3);
    let bad_lengths = [3i64];
    assert!(
        m.forward(
            Input::left_padded(&x, &bad_lengths),
            &mut cache,
            LogitsAt::Last
        )
        .is_err()
    );
    assert_eq!(cache.len(), 3);
}

#[test]
fn half_precision_runs_close_to_f32() {
    let cfg = config(serde_json::json!({}));
    let reference = model(&cfg, Kind::Float);
    let x = embeds(&reference, 7, 1);
    let want = full_logits(&reference, &x);
    for kind in [Kind::BFloat16, Kind::Half] {
        let m = model(&cfg, kind);
        let got = full_logits(&m, &x.to_kind(kind));
        assert_eq!(got.kind(), kind);
        assert!(
            max_diff(&got, &want) < 0.05,
            "{kind:?}: {}",
            max_diff(&got, &want)
        );
    }
}

#[test]
fn loading_reports_problems_and_reads_vocab_from_weights() {
    let cfg = config(serde_json::json!({}));
    let dir = temp_dir("vocab");
    {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        write_random_llama(&dir, &cfg, "language_model", 1).unwrap();
    }
    let open = || {
        Weights::new(
            Checkpoint::open(&dir, &KeyMap::identity()).unwrap(),
            LoadOptions::cpu_f32(),
        )
        .unwrap()
    };
    // InstructBLIP's config is wrong about the vocabulary size.
    let wrong = LlamaConfig {
        vocab_size: 32000,
        ..cfg.clone()
    };
    let w = open();
    Llama::load(&w.pp("language_model"), &wrong).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(
        err.contains("language_model.model.embed_tokens.weight"),
        "{err}"
    );
    assert!(err.contains("language_model.lm_head.weight"), "{err}");

    let w = open();
    let fixed = wrong
        .clone()
        .with_vocab_from_weights(&w.pp("language_model"))
        .unwrap();
    assert_eq!(fixed.vocab_size, 64);
    Llama::load(&w.pp("language_model"), &fixed).unwrap();
    w.finish().unwrap();
    assert!(wrong.with_vocab_from_weights(&open()).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

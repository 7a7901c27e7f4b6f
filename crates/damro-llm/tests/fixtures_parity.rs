//! Parity with the reference fixtures of `tests/fixtures/` (HF transformers
//! 5.23, fp32, CPU; see `tests/fixtures/README.md`):
//!
//! - tokenizer ids equal HF's for every prompt, in both behaviours, and the
//!   cases' texts decode back;
//! - prefill logits of both DAMRO branches within 1e-4 x max(1, max|ref|) of the
//!   fixtures' first-step logits, for every case and weight layout;
//! - greedy and sampled generation, plain and DAMRO, token for token, with
//!   both DAMRO branches run as one batched forward per step.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use damro_llm::{KvCache, Llama, LlamaConfigJson, LlamaTokenizer, LogitsAt, TokenizerBehavior};
use damro_nn::attention::AttentionImpl;
use damro_nn::{Checkpoint, KeyMap, LoadOptions, Weights};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const LOGIT_TOL: f64 = 1e-4;

fn family_dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(family)
}

fn reference(family: &str) -> Value {
    let text = std::fs::read_to_string(family_dir(family).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tensors(family: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(family_dir(family).join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn model_dir(family: &str, variant: &str) -> PathBuf {
    let r = reference(family);
    family_dir(family).join(r["models"][variant]["dir"].as_str().unwrap())
}

/// The LLM of a fixture model, in f32 on the CPU, everything else ignored.
fn load_llm(family: &str, variant: &str) -> Llama {
    let dir = model_dir(family, variant);
    let config: Value = damro_nn::read_json(&dir.join("config.json")).unwrap();
    let (map, others): (KeyMap, &[&str]) = match family {
        "llava" => (KeyMap::llava(), &["vision_tower", "multi_modal_projector"]),
        _ => (
            KeyMap::identity(),
            &[
                "vision_model",
                "qformer",
                "query_tokens",
                "language_projection",
            ],
        ),
    };
    let w = Weights::new(
        Checkpoint::open(&dir, &map).unwrap(),
        LoadOptions::cpu_f32(),
    )
    .unwrap();
    let lm = w.pp("language_model");
    let cfg = LlamaConfigJson::from_value(config["text_config"].clone())
        .unwrap()
        .into_config()
        .unwrap()
        .with_vocab_from_weights(&lm)
        .unwrap();
    let model = Llama::load(&lm, &cfg).unwrap();
    for o in others {
        w.ignore(o);
    }
    w.finish().unwrap();
    model
}

/// Max abs error relative to the reference's scale, `max(1, max|ref|)`
/// (the workspace's parity measure, [`damro_nn::testing`]).
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    damro_nn::testing::Closeness::measure(&a.view(-1), &b.view(-1), damro_nn::testing::PARITY)
        .unwrap()
        .relative()
}

#[test]
fn tokenizer_ids_match_hf_for_every_prompt() {
    let checks = [
        (
            "llava",
            "hub",
            TokenizerBehavior::AsWritten,
            "ids_as_written",
        ),
        (
            "llava",
            "hub",
            TokenizerBehavior::Transformers5,
            "ids_transformers5",
        ),
        (
            "llava",
            "gqa",
            TokenizerBehavior::AsWritten,
            "ids_as_written",
        ),
        (
            "llava",
            "hub-sharded-bf16",
            TokenizerBehavior::Transformers5,
            "ids_transformers5",
        ),
        // 5.23's own tokenizer.json: as written it already is the 5.x pipeline.
        (
            "llava",
            "tf5",
            TokenizerBehavior::AsWritten,
            "ids_tf5_tokenizer_json",
        ),
        (
            "llava",
            "tf5",
            TokenizerBehavior::Transformers5,
            "ids_transformers5",
        ),
        (
            "instructblip",
            "hub",
            TokenizerBehavior::AsWritten,
            "ids_as_written",
        ),
        (
            "instructblip",
            "hub",
            TokenizerBehavior::Transformers5,
            "ids_transformers5",
        ),
        (
            "instructblip",
            "hub-f16",
            TokenizerBehavior::AsWritten,
            "ids_as_written",
        ),
    ];
    let mut compared = 0;
    for (family, variant, behavior, key) in checks {
        let tok = LlamaTokenizer::from_dir(model_dir(family, variant), behavior).unwrap();
        for (name, prompt) in reference(family)["prompts"].as_object().unwrap() {
            let text = prompt["text"].as_str().unwrap();
            let got = tok.encode(text).unwrap();
            assert_eq!(
                got,
                ids(&prompt[key]),
                "{family}/{variant} {behavior:?} {name}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 3 * 6 + 2 * 3);
}

#[test]
fn tokenizer_special_tokens_come_from_the_files() {
    let r = reference("llava");
    let t = &r["tokens"];
    for behavior in [
        TokenizerBehavior::AsWritten,
        TokenizerBehavior::Transformers5,
    ] {
        let tok = LlamaTokenizer::from_dir(model_dir("llava", "hub"), behavior).unwrap();
        let s = tok.special_tokens();
        assert_eq!(
            s.bos.as_ref().unwrap().id as i64,
            t["bos"].as_i64().unwrap()
        );
        assert_eq!(
            s.eos.as_ref().unwrap().id as i64,
            t["eos"].as_i64().unwrap()
        );
        assert_eq!(
            s.unk.as_ref().unwrap().id as i64,
            t["unk"].as_i64().unwrap()
        );
        assert_eq!(
            s.pad.as_ref().unwrap().id as i64,
            t["pad"].as_i64().unwrap()
        );
        assert_eq!(
            tok.token_to_id("<image>").unwrap() as i64,
            t["image"].as_i64().unwrap()
        );
        assert_eq!(tok.vocab_size() as i64, t["vocab_size"].as_i64().unwrap());
    }
    // InstructBLIP: the config's ids (0, 1) are wrong; the files say 2.
    let r = reference("instructblip");
    let t = &r["tokens"];
    let tok = LlamaTokenizer::from_dir(
        model_dir("instructblip", "hub"),
        TokenizerBehavior::AsWritten,
    )
    .unwrap();
    let s = tok.special_tokens();
    assert_eq!(
        s.bos.as_ref().unwrap().id as i64,
        t["bos"].as_i64().unwrap()
    );
    assert_eq!(
        s.eos.as_ref().unwrap().id as i64,
        t["eos"].as_i64().unwrap()
    );
    assert_eq!(
        s.unk.as_ref().unwrap().text,
        t["unk_token"].as_str().unwrap()
    );
    assert_eq!(
        s.pad.as_ref().unwrap().id as i64,
        t["pad"].as_i64().unwrap()
    );
}

#[test]
fn case_texts_decode_from_their_ids() {
    for family in ["llava", "instructblip"] {
        for behavior in [
            TokenizerBehavior::AsWritten,
            TokenizerBehavior::Transformers5,
        ] {
            let tok = LlamaTokenizer::from_dir(model_dir(family, "hub"), behavior).unwrap();
            for case in reference(family)["cases"].as_array().unwrap() {
                let key = if family == "llava" {
                    "generated_ids"
                } else {
                    "decode_ids"
                };
                let text = tok.decode(&ids(&case[key])).unwrap();
                assert_eq!(
                    text.trim(),
                    case["text"].as_str().unwrap(),
                    "{}",
                    case["name"]
                );
            }
        }
    }
}

/// The two branches' input embeddings of a case, `[1, len, hidden]` each
/// (`None` where the fixtures do not record the image part). The full
/// branch's image part is read under `prefix` (`variant/<v>/` for the
/// variants with their own vision weights).
fn branch_embeds(
    family: &str,
    model: &Llama,
    case: &Value,
    t: &HashMap<String, Tensor>,
    prefix: &str,
) -> (Option<Tensor>, Option<Tensor>) {
    let name = case["name"].as_str().unwrap();
    let gqa_prefix = "variant/gqa/";
    let prefix = if case["variant"] == "gqa" {
        gqa_prefix
    } else {
        prefix
    };
    let image = case["image"].as_str().unwrap();
    let prompt = ids(&case["prompt_ids"]);
    let embed = |ids: &[u32]| model.embed_ids(ids).unwrap();
    match family {
        "llava" => {
            // The `<image>` id is replaced by the projected features.
            let at = prompt.iter().position(|&i| i == 535).unwrap();
            let splice = |img: &Tensor| {
                Tensor::cat(
                    &[
                        embed(&prompt[..at]),
                        img.shallow_clone(),
                        embed(&prompt[at + 1..]),
                    ],
                    1,
                )
            };
            let full = t.get(&format!("{prefix}projector/{image}")).map(splice);
            let outlier = t
                .get(&format!("cases/{name}/projector_outlier"))
                .map(splice);
            (full, outlier)
        }
        _ => {
            // The projected query outputs come first; the Q-Former text of
            // the recorded full prefix is the `pope_dog` prompt.
            let prepend = |img: &Tensor| Tensor::cat(&[img.shallow_clone(), embed(&prompt)], 1);
            let full = (case["prompt"] == "pope_dog")
                .then(|| t.get(&format!("{prefix}projector/{image}")).map(prepend))
                .flatten();
            let outlier = t.get(&format!("cases/{name}/prefix_outlier")).map(prepend);
            (full, outlier)
        }
    }
}

fn prefill(model: &Llama, x: &Tensor) -> Tensor {
    let mut cache = model.new_cache(1, x.size()[1] + 1).unwrap();
    model.forward(x, &mut cache, LogitsAt::Last).unwrap()
}

#[test]
fn prefill_logits_match_fixture() {
    let mut checked = Vec::new();
    let mut worst = [0f64; 2];
    for family in ["llava", "instructblip"] {
        let r = reference(family);
        let t = tensors(family);
        let mut models: HashMap<String, [Llama; 2]> = HashMap::new();
        for case in r["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let variant = case["variant"].as_str().unwrap();
            let pair = models.entry(variant.to_string()).or_insert_with(|| {
                [AttentionImpl::Sdpa, AttentionImpl::Eager]
                    .map(|i| load_llm(family, variant).with_attention(i))
            });
            let (full, outlier) = branch_embeds(family, &pair[0], case, &t, "");
            for (branch, x) in [("full", full), ("outlier", outlier)] {
                let Some(x) = x else { continue };
                let want = &t[&format!("cases/{name}/logits_{branch}_step0")];
                for (m, worst) in pair.iter().zip(&mut worst) {
                    let d = max_diff(&prefill(m, &x), want);
                    assert!(
                        d < LOGIT_TOL,
                        "{family} {name} {branch} {:?}: {d}",
                        m.attention()
                    );
                    *worst = worst.max(d);
                }
                checked.push(format!("{family}/{name}/{branch}"));
            }
        }
    }
    // Every LLaVA case has its full branch, every DAMRO case its outlier
    // branch; InstructBLIP full branches are recorded for pope_dog only.
    assert_eq!(checked.len(), 9 + 6 + 3 + 5, "{checked:?}");
    eprintln!(
        "prefill over {} branches, worst max abs diff: SDPA {:.3e}, eager {:.3e}",
        checked.len(),
        worst[0],
        worst[1]
    );
}

#[test]
fn other_layouts_give_the_same_logits() {
    // LLaVA transformers-5 file layout: same weights as hub.
    let r = reference("llava");
    let t = tensors("llava");
    let case = &r["cases"][1];
    let name = case["name"].as_str().unwrap();
    let tf5 = load_llm("llava", "tf5");
    let (full, _) = branch_embeds("llava", &tf5, case, &t, "");
    let d = max_diff(
        &prefill(&tf5, &full.unwrap()),
        &t[&format!("cases/{name}/logits_full_step0")],
    );
    assert!(d < LOGIT_TOL, "tf5: {d}");
    // Sharded bf16 (LLaVA) and fp16 (InstructBLIP) weights, computed in f32.
    for (family, variant) in [("llava", "hub-sharded-bf16"), ("instructblip", "hub-f16")] {
        let t = tensors(family);
        let case = reference(family)["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "hub_damro_pope_dog_wide")
            .unwrap()
            .clone();
        let prefix = format!("variant/{variant}/");
        let model = load_llm(family, variant);
        let (full, _) = branch_embeds(family, &model, &case, &t, &prefix);
        let want = &t[&format!("{prefix}cases/hub_damro_pope_dog_wide/logits_full_step0")];
        let d = max_diff(&prefill(&model, &full.unwrap()), want);
        assert!(d < LOGIT_TOL, "{family}/{variant}: {d}");
    }
}

/// DAMRO's token choice (cutoff, contrast, first argmax), written out for the test.
fn contrastive(l: &Tensor, lo: &Tensor, alpha: f64, beta: f64) -> Tensor {
    let cutoff = Tensor::from(beta as f32).log() + l.max();
    let s = l * (1.0 + alpha) - lo * alpha;
    s.masked_fill(&l.lt_tensor(&cutoff), f64::NEG_INFINITY)
}

fn choose(scores: &Tensor, sample: bool) -> u32 {
    let pick = if sample {
        scores.softmax(-1, Kind::Float).multinomial(1, false)
    } else {
        scores.argmax(-1, false)
    };
    pick.view(-1).int64_value(&[0]) as u32
}

#[test]
fn generation_matches_fixture_with_branches_batched() {
    let mut ran = Vec::new();
    for family in ["llava", "instructblip"] {
        let r = reference(family);
        let t = tensors(family);
        let eos = r["tokens"]["eos"].as_u64().unwrap() as u32;
        for case in r["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let model = load_llm(family, case["variant"].as_str().unwrap());
            let (Some(full), outlier) = branch_embeds(family, &model, case, &t, "") else {
                continue;
            };
            let damro = case["mode"] == "damro";
            let sample = case["decoding"] == "sample";
            let max_new = case["max_new_tokens"].as_u64().unwrap() as usize;
            // Prefill each branch alone, then one batch of both.
            let mut cf = model.new_cache(1, full.size()[1]).unwrap();
            let mut l = model.forward(&full, &mut cf, LogitsAt::Last).unwrap();
            let (mut cache, mut lo) = match (&outlier, damro) {
                (Some(o), true) => {
                    let mut co = model.new_cache(1, o.size()[1]).unwrap();
                    let lo = model.forward(o, &mut co, LogitsAt::Last).unwrap();
                    (
                        KvCache::stack(&[&cf, &co], cf.len() + 16).unwrap(),
                        Some(lo),
                    )
                }
                _ => (cf, None),
            };
            if sample {
                tch::manual_seed(case["seed"].as_i64().unwrap());
            }
            let mut generated = Vec::new();
            while generated.len() < max_new {
                let lf = l.view(-1);
                let scores = match &lo {
                    Some(lo) => contrastive(
                        &lf,
                        &lo.view(-1),
                        case["alpha"].as_f64().unwrap(),
                        case["beta"].as_f64().unwrap(),
                    ),
                    None => lf,
                };
                let next = choose(&scores, sample);
                generated.push(next);
                if next == eos {
                    break;
                }
                let x = model.embed_ids(&[next]).unwrap();
                let x = x.repeat([cache.batch(), 1, 1]);
                let out = model.forward(&x, &mut cache, LogitsAt::Last).unwrap();
                l = out.narrow(0, 0, 1);
                lo = lo.map(|_| out.narrow(0, 1, 1));
            }
            assert_eq!(generated, ids(&case["generated_ids"]), "{family} {name}");
            ran.push(format!("{family}/{name}"));
        }
    }
    assert_eq!(ran.len(), 9 + 3, "{ran:?}");
}

#[test]
fn fixture_models_run_in_half_precision() {
    // Smoke test: the bf16 checkpoint loaded as bf16 and the fp16 one as f16
    // agree with the f32 reference on the first greedy token.
    for (family, variant, kind) in [
        ("llava", "hub-sharded-bf16", Kind::BFloat16),
        ("instructblip", "hub-f16", Kind::Half),
    ] {
        let dir = model_dir(family, variant);
        let config: Value = damro_nn::read_json(&dir.join("config.json")).unwrap();
        let map = if family == "llava" {
            KeyMap::llava()
        } else {
            KeyMap::identity()
        };
        let w = Weights::new(
            Checkpoint::open(&dir, &map).unwrap(),
            LoadOptions {
                kind,
                device: Device::Cpu,
            },
        )
        .unwrap();
        let cfg = LlamaConfigJson::from_value(config["text_config"].clone())
            .unwrap()
            .into_config()
            .unwrap();
        let model = Llama::load(&w.pp("language_model"), &cfg).unwrap();
        let t = tensors(family);
        let case = reference(family)["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "hub_damro_pope_dog_wide")
            .unwrap()
            .clone();
        let prefix = format!("variant/{variant}/");
        let (full, _) = branch_embeds(family, &model, &case, &t, &prefix);
        let logits = prefill(&model, &full.unwrap().to_kind(kind));
        assert_eq!(logits.kind(), kind);
        let want = &t[&format!("{prefix}cases/hub_damro_pope_dog_wide/logits_full_step0")];
        assert_eq!(
            logits.view(-1).argmax(-1, false).int64_value(&[]),
            want.argmax(-1, false).int64_value(&[]),
            "{family}/{variant}"
        );
    }
}

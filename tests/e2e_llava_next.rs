//! LLaVA-NeXT end to end against `tests/fixtures/llava_next` (made with
//! transformers 4.43, the DAMRO authors' version, by
//! `tools/make_llava_next.py`; the DAMRO branch as
//! `tools/damro_reference_next.py` spells it out): first-step logits of both
//! branches, image-token counts, and every generation case token for token
//! (plain and DAMRO, greedy and seeded sampling, 4.43 and corrected grid
//! layouts, cases that generate `<image>`), through the library (batched
//! and sequential branches, from the PNG files and from preprocessed tiles,
//! several requests in one call) and through the `generate` example.
//!
//! `DAMRO_TEST_DEVICE=cuda` runs the library tests on the GPU.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use damro::llm::PromptTemplate;
use damro::models::LlavaNextDecoder;
use damro::vision::anyres_pack::GridLayout;
use damro::{
    AutoDecoder, BranchExecution, DamroDecoder, DamroSettings, FinishReason, GenerationConfig,
    ImageSource, LanguageModel, Mode, ModelOptions, Request, Rows, SecondImage, generate,
};
use serde_json::Value;
use tch::{Device, Tensor};

/// The authors' preprocessing (transformers 4.43, PIL), the default.
fn options() -> ModelOptions {
    let mut options = ModelOptions::cpu_f32();
    if std::env::var("DAMRO_TEST_DEVICE").as_deref() == Ok("cuda") {
        options.device = Device::Cuda(0);
    }
    options
}

struct Fixture {
    root: PathBuf,
    reference: Value,
    tensors: HashMap<String, Tensor>,
}

impl Fixture {
    fn load() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava_next");
        let text = std::fs::read_to_string(root.join("reference.json")).unwrap();
        let tensors = Tensor::read_safetensors(root.join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
        Self {
            root,
            reference: serde_json::from_str(&text).unwrap(),
            tensors,
        }
    }

    fn cases(&self) -> &[Value] {
        self.reference["cases"].as_array().unwrap()
    }

    fn model_dir(&self) -> PathBuf {
        self.root
            .join(self.reference["models"]["hub"]["dir"].as_str().unwrap())
    }

    fn png(&self, image: &str) -> PathBuf {
        let file = self.reference["images"][image]["file"].as_str().unwrap();
        self.root.join(file)
    }

    fn request(&self, case: &Value, source: ImageSource) -> Request {
        Request::new(
            source,
            case["question"].as_str().unwrap(),
            PromptTemplate::LlavaV1,
        )
    }

    fn tensor(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("reference.safetensors has no {key}"))
    }
}

/// The case's image as a file, or as tiles from our processor (the
/// `ImageSource::Tiles` path).
fn sources(
    fx: &Fixture,
    decoder: &LlavaNextDecoder,
    case: &Value,
) -> Vec<(&'static str, ImageSource)> {
    let png = fx.png(case["image"].as_str().unwrap());
    let tiles = decoder.processor().preprocess_path(&png).unwrap();
    vec![
        ("png", ImageSource::File(png)),
        ("tiles", ImageSource::from(tiles)),
    ]
}

fn layout(case: &Value) -> GridLayout {
    match case["layout"].as_str().unwrap() {
        "transformers_4_43" => GridLayout::Transformers443,
        "corrected" => GridLayout::Corrected,
        other => panic!("unknown layout {other}"),
    }
}

fn config(case: &Value, execution: BranchExecution) -> GenerationConfig {
    let mode = match case["mode"].as_str().unwrap() {
        "plain" => Mode::Plain,
        "damro" => Mode::Damro(
            DamroSettings::new(
                case["alpha"].as_f64().unwrap(),
                case["beta"].as_f64().unwrap(),
                case["k"].as_u64().unwrap() as usize,
            )
            .unwrap(),
        ),
        other => panic!("unknown mode {other}"),
    };
    let max_new = case["max_new_tokens"].as_u64().unwrap() as usize;
    let mut config = match case["decoding"].as_str().unwrap() {
        "greedy" => GenerationConfig::greedy(mode, max_new),
        "sample" => GenerationConfig::sampled(mode, max_new, case["seed"].as_u64().unwrap()),
        other => panic!("unknown decoding {other}"),
    };
    config.branches = execution;
    config
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// Seeded sampling draws from libtorch's global generator, so sampling
/// runs of tests in parallel take turns.
static SAMPLING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One decoder per grid layout.
fn decoders(fx: &Fixture) -> HashMap<&'static str, LlavaNextDecoder> {
    let load = || LlavaNextDecoder::load(fx.model_dir(), options()).unwrap();
    HashMap::from([
        ("transformers_4_43", load()),
        ("corrected", load().with_grid_layout(GridLayout::Corrected)),
    ])
}

#[test]
fn every_case_is_token_exact_in_both_executions_and_sources() {
    let fx = Fixture::load();
    let decoders = decoders(&fx);
    let mut image_token_cases = 0;
    for case in fx.cases() {
        let name = case["name"].as_str().unwrap();
        let decoder = &decoders[case["layout"].as_str().unwrap()];
        assert_eq!(decoder.grid_layout(), layout(case));
        let expected = ids(&case["generated_ids"]);
        let _turn = (case["decoding"] == "sample")
            .then(|| SAMPLING.lock().unwrap_or_else(|e| e.into_inner()));
        for execution in [BranchExecution::Batched, BranchExecution::Sequential] {
            for (source_name, source) in sources(&fx, decoder, case) {
                let what = format!("{name} {execution:?} {source_name}");
                let out = generate(
                    decoder,
                    &[fx.request(case, source)],
                    &config(case, execution),
                )
                .unwrap();
                let out = &out[0];
                assert_eq!(out.token_ids, expected, "{what}: token ids");
                assert_eq!(
                    out.prompt_ids,
                    ids(&case["prompt_ids"]),
                    "{what}: prompt ids"
                );
                assert_eq!(out.text, case["text"].as_str().unwrap(), "{what}: text");
                if case["mode"] == "damro" {
                    assert_eq!(
                        out.outliers,
                        ids(&case["outlier_indices"]),
                        "{what}: outliers"
                    );
                }
                let ended = case["ended_on_eos"].as_bool().unwrap();
                assert_eq!(out.finish == FinishReason::Eos, ended, "{what}: finish");
            }
        }
        let image_id = fx.reference["tokens"]["image"].as_i64().unwrap();
        // `<image>` before the last step: the next step embedded id 0.
        if expected[..expected.len() - 1].contains(&image_id) {
            image_token_cases += 1;
        }
    }
    assert!(fx.cases().len() >= 12, "{} cases", fx.cases().len());
    assert!(
        image_token_cases >= 3,
        "{image_token_cases} cases feed <image> back"
    );
}

/// Both branches' prefill logits, via the trait's pieces.
fn first_step_logits(
    decoder: &LlavaNextDecoder,
    request: &Request,
    k: usize,
) -> ((Tensor, i64), (Tensor, i64)) {
    let visual = decoder
        .encode_image(request, SecondImage::Outliers { k })
        .unwrap();
    let branches = decoder.branch_embeds(request, &visual).unwrap();
    let lm = decoder.language_model();
    let run = |embeds: &Tensor| {
        let len = embeds.size()[1];
        let mut cache = lm.new_cache(1, len).unwrap();
        let logits = LanguageModel::forward(
            lm,
            Rows {
                embeds,
                row_lengths: &[len],
                states: &[()],
            },
            &mut cache,
        )
        .unwrap()
        .squeeze_dim(0)
        .to_device(Device::Cpu);
        (logits, len)
    };
    (
        run(&branches.full.embeds),
        run(&branches.contrast.as_ref().unwrap().embeds),
    )
}

#[test]
fn first_step_logits_and_token_counts_match_the_reference() {
    let fx = Fixture::load();
    let decoders = decoders(&fx);
    let mut compared = 0;
    for case in fx.cases() {
        let name = case["name"].as_str().unwrap();
        let decoder = &decoders[case["layout"].as_str().unwrap()];
        let k = case["k"].as_u64().unwrap_or(10) as usize;
        let request = fx.request(
            case,
            ImageSource::File(fx.png(case["image"].as_str().unwrap())),
        );
        let ((full, full_len), (outlier, outlier_len)) = first_step_logits(decoder, &request, k);
        assert_eq!(
            full_len,
            case["full_len"].as_i64().unwrap(),
            "{name}: full length"
        );
        damro::nn::testing::assert_close(
            &format!("{name} full"),
            &full,
            fx.tensor(&format!("cases/{name}/logits_full_step0")),
            damro::nn::testing::PARITY,
        );
        compared += 1;
        if case["mode"] == "damro" {
            assert_eq!(
                outlier_len,
                case["outlier_len"].as_i64().unwrap(),
                "{name}: outlier length (P - 1 + k + 1)"
            );
            damro::nn::testing::assert_close(
                &format!("{name} outlier"),
                &outlier,
                fx.tensor(&format!("cases/{name}/logits_outlier_step0")),
                damro::nn::testing::PARITY,
            );
            compared += 1;
        }
    }
    assert!(compared >= 19, "{compared} logit vectors compared");
}

#[test]
fn several_requests_of_different_images_in_one_call() {
    let fx = Fixture::load();
    let decoders = decoders(&fx);
    // Greedy 4.43-layout cases grouped by their settings; each group is one
    // call over different images (rows of different lengths).
    let mut groups: HashMap<String, Vec<&Value>> = HashMap::new();
    for case in fx.cases() {
        if case["decoding"] == "greedy" && case["layout"] == "transformers_4_43" {
            let key = format!(
                "{}/{}/{}/{}",
                case["mode"], case["alpha"], case["beta"], case["k"]
            );
            groups.entry(key).or_default().push(case);
        }
    }
    let decoder = &decoders["transformers_4_43"];
    let mut calls = 0;
    for cases in groups.values().filter(|c| c.len() > 1) {
        let images: std::collections::HashSet<&str> =
            cases.iter().map(|c| c["image"].as_str().unwrap()).collect();
        assert!(images.len() > 1, "a group with one image");
        for execution in [BranchExecution::Batched, BranchExecution::Sequential] {
            let requests: Vec<Request> = cases
                .iter()
                .map(|c| fx.request(c, ImageSource::File(fx.png(c["image"].as_str().unwrap()))))
                .collect();
            let out = generate(decoder, &requests, &config(cases[0], execution)).unwrap();
            for (case, got) in cases.iter().zip(&out) {
                assert_eq!(
                    got.token_ids,
                    ids(&case["generated_ids"]),
                    "{} {execution:?}",
                    case["name"]
                );
            }
            calls += 1;
        }
    }
    assert!(calls >= 4, "{calls} batched calls");
}

#[test]
fn a_generated_image_token_is_embedded_as_id_zero() {
    let fx = Fixture::load();
    let decoder = LlavaNextDecoder::load(fx.model_dir(), options()).unwrap();
    let image_id = fx.reference["tokens"]["image"].as_i64().unwrap();
    assert_eq!(decoder.image_token_id(), image_id);
    let device = decoder.options().device;
    let ids = Tensor::from_slice(&[image_id, 7, 0]).to_device(device);
    let got = decoder.embed_tokens(&ids).unwrap();
    let lm = decoder.language_model();
    let want = lm
        .embed_tokens(&Tensor::from_slice(&[0i64, 7, 0]).to_device(device))
        .unwrap();
    assert!(got.equal(&want), "the <image> row is not id 0's");
    let own = lm
        .embed_tokens(&Tensor::from_slice(&[image_id]).to_device(device))
        .unwrap();
    assert!(
        !own.equal(&got.narrow(0, 0, 1)),
        "id 0 and <image> share a row"
    );
    // Through AutoDecoder too.
    let auto = AutoDecoder::load(fx.model_dir(), options()).unwrap();
    assert!(auto.embed_tokens(&ids).unwrap().equal(&want));
}

#[test]
fn auto_decoder_picks_llava_next_with_the_authors_settings() {
    let fx = Fixture::load();
    let auto = AutoDecoder::load(fx.model_dir(), options()).unwrap();
    assert!(matches!(auto, AutoDecoder::LlavaNext(_)));
    assert_eq!(auto.family(), "llava_next");
    assert_eq!(auto.default_template(), PromptTemplate::LlavaV1);
    let preset = auto.preset().unwrap();
    assert_eq!(
        (
            preset.params.alpha(),
            preset.params.beta(),
            preset.outlier_k
        ),
        (2.0, 0.1, 10)
    );
    // Pixel values without the original size cannot be packed.
    let case = &fx.cases()[0];
    let pixels = Tensor::zeros([3, 3, 336, 336], (tch::Kind::Float, Device::Cpu));
    let err = generate(
        &auto,
        &[fx.request(case, ImageSource::Pixels(pixels))],
        &GenerationConfig::greedy(Mode::Plain, 2),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("ImageSource::Tiles"), "{err}");
    // Tiles that do not fit the image's grid are refused, naming both.
    let tiles = ImageSource::Tiles {
        pixel_values: Tensor::zeros([2, 3, 336, 336], (tch::Kind::Float, Device::Cpu)),
        image_size: (333, 500),
    };
    let err = generate(
        &auto,
        &[fx.request(case, tiles)],
        &GenerationConfig::greedy(Mode::Plain, 2),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("3 tiles"), "{err}");
}

#[test]
fn heatmaps_of_the_base_tile_and_of_every_tile() {
    let fx = Fixture::load();
    let auto = AutoDecoder::load(fx.model_dir(), options()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for image in ["wide_rgb", "square_rgb"] {
        let record = &fx.reference["images"][image];
        let tiles = record["tile_outliers"].as_array().unwrap();
        let source = ImageSource::File(fx.png(image));
        let path = dir.path().join(format!("{image}.png"));
        let base = auto.write_outlier_heatmap(&source, 10, &path).unwrap();
        assert_eq!(base, ids(&tiles[0]["indices"]), "{image} base tile");
        assert!(path.is_file());
        let maps = auto
            .write_tile_outlier_heatmaps(&source, 10, &path)
            .unwrap();
        assert_eq!(maps.len(), tiles.len(), "{image} tiles");
        for (map, want) in maps.iter().zip(tiles) {
            assert_eq!(
                map.outliers,
                ids(&want["indices"]),
                "{image} tile {}",
                map.tile
            );
            assert_eq!(
                map.path,
                dir.path().join(format!("{image}_tile{}.png", map.tile))
            );
            let png = image::open(&map.path).unwrap();
            assert!(png.width() >= 336 && png.height() >= 336);
        }
    }
}

/// The `generate` example, built next to this test
/// (`target/<profile>/examples/generate`; `cargo test` builds examples).
fn generate_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("examples").join("generate");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --example generate` (`cargo test` builds it)",
        bin.display()
    );
    bin
}

#[test]
fn the_generate_example_prints_the_reference_tokens() {
    let fx = Fixture::load();
    let bin = generate_bin();
    let mut ran = 0;
    // The example lays grids out as 4.43 does by default;
    // `--grid-layout corrected` gives the corrected cases.
    for case in fx.cases() {
        let name = case["name"].as_str().unwrap();
        let mut args: Vec<String> = vec![
            "--model".into(),
            "tests/fixtures/llava_next/models/hub".into(),
            "--image".into(),
            fx.png(case["image"].as_str().unwrap())
                .display()
                .to_string(),
            "--prompt".into(),
            case["question"].as_str().unwrap().into(),
            "--max-new-tokens".into(),
            case["max_new_tokens"].to_string(),
            "--device".into(),
            "cpu".into(),
            "--json".into(),
        ];
        if case["mode"] == "plain" {
            args.extend(["--mode".into(), "plain".into()]);
        } else {
            for key in ["alpha", "beta", "k"] {
                let flag = match key {
                    "k" => "--top-k".to_string(),
                    _ => format!("--{key}"),
                };
                args.extend([flag, case[key].to_string()]);
            }
        }
        if case["decoding"] == "sample" {
            args.extend(["--seed".into(), case["seed"].to_string()]);
        }
        if case["layout"] != "transformers_4_43" {
            args.extend(["--grid-layout".into(), "corrected".into()]);
        }
        let out = std::process::Command::new(&bin)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(line["model"], "llava_next", "{name}");
        assert_eq!(
            ids(&line["token_ids"]),
            ids(&case["generated_ids"]),
            "{name}"
        );
        assert_eq!(line["text"], case["text"], "{name}");
        ran += 1;
    }
    assert_eq!(ran, fx.cases().len(), "every case through the example");
}

/// The analysis on LLaVA-NeXT: the captured maps cover the base tile's 576
/// tokens (which open the packed image part), its [CLS] scores equal the
/// reference's base-tile scores, and the tokens stay the plain case's.
#[test]
fn analysis_covers_the_base_tile() {
    let fx = Fixture::load();
    let decoder = LlavaNextDecoder::load(fx.model_dir(), options()).unwrap();
    let case = fx
        .cases()
        .iter()
        .find(|c| {
            c["mode"] == "plain" && c["decoding"] == "greedy" && c["layout"] == "transformers_4_43"
        })
        .unwrap();
    let image = case["image"].as_str().unwrap();
    let mut config = config(case, BranchExecution::Batched);
    config.attention = Some(damro::AttentionCapture::default());
    let request = fx.request(case, ImageSource::File(fx.png(image)));
    let out = generate(&decoder, &[request], &config).unwrap();
    let g = &out[0];
    assert_eq!(g.token_ids, ids(&case["generated_ids"]), "{}", case["name"]);
    assert_eq!(g.attention.len(), g.token_ids.len());
    assert!(g.attention.iter().all(|m| m.len() == 576));
    let cls = Tensor::from_slice(g.cls_attention.as_ref().unwrap());
    let want = fx
        .tensor(&format!("vision/cls_attention/{image}"))
        .get(0)
        .to_kind(tch::Kind::Float);
    // Softmax scores of ~1/577: bounded relative to their peak.
    let peak = want.abs().max().double_value(&[]);
    let err = (&cls - &want).abs().max().double_value(&[]);
    assert!(
        err <= 1e-4 * peak,
        "base-tile [CLS]: {err:e} vs peak {peak:e}"
    );
    let metrics = damro::analysis::token_metrics(g, 10, 3).unwrap();
    assert_eq!(metrics.len(), g.token_ids.len());
    assert!(metrics.iter().all(|m| (0.0..=1.0).contains(&m.influence)));
}

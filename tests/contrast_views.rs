//! The contrast views besides DAMRO (VCD, no image, cutoff only) against
//! references computed independently with Python torch and HF transformers
//! 5.23 by `tools/make_contrast_views.py`
//! (`tests/fixtures/contrast_views/`, described in `tests/fixtures/README.md`):
//!
//! - [`VcdNoise::transform`] equals the noised pixel values of the spec
//!   formula computed by Python torch;
//! - the no-image second branch's first-step logits equal HF's language
//!   model forward on the prompt without image tokens;
//! - every generation case (both families, greedy and seeded sampling) gives
//!   the reference decoder's token ids exactly, in batched and sequential
//!   branch execution, from the recorded pixel values and from the PNG;
//! - the `generate` example (built here as a plain binary) prints the same
//!   token ids for every case from the PNG.
//!
//! `DAMRO_TEST_DEVICE=cuda` runs the model checks on the GPU.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use damro::llm::PromptTemplate;
use damro::nn::testing::{PARITY, Tolerance, assert_close};
use damro::sampler::DamroParams;
use damro::{
    BranchExecution, DamroDecoder, FinishReason, GenerationConfig, ImageSource,
    InstructBlipDecoder, LanguageModel, LlavaDecoder, Mode, ModelOptions, PixelTransform, Request,
    Rows, SecondImage, VcdNoise, VcdSettings, generate,
};
use serde_json::Value;
use tch::{Device, Tensor};

/// The noised pixels may differ from Python's in their last bits on another
/// CPU: libtorch's normal sampler runs Sleef's vectorised log/sin/cos
/// (AVX2 build) or libm's (other CPU capabilities), each within an ulp or
/// so. On one machine both sides run the same libtorch 2.13 code and agree
/// bit for bit (measured max error 0). The bound is `1e-6 * max(1, max|x|)`,
/// a few f32 ulps of values up to ~5.
const NOISE: Tolerance = Tolerance::relative(1e-6);

/// VCD's noise and seeded sampling draw from libtorch's global generator:
/// tests that use it take turns.
static RNG: Mutex<()> = Mutex::new(());

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn device() -> Device {
    match std::env::var("DAMRO_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

fn options() -> ModelOptions {
    let mut options = ModelOptions::cpu_f32();
    // The recorded pixel values come from transformers 5.23's PIL backend.
    options.preprocessing = damro::vision::preprocess::ProcessorOptions::transformers5_pil();
    options.device = device();
    options
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// The contrast-view references and the two families' recorded inputs.
struct Fixtures {
    reference: Value,
    tensors: HashMap<String, Tensor>,
    families: HashMap<String, (Value, HashMap<String, Tensor>)>,
}

impl Fixtures {
    fn load() -> Self {
        let dir = fixtures().join("contrast_views");
        let families = ["llava", "instructblip"]
            .into_iter()
            .map(|name| {
                let root = fixtures().join(name);
                let doc = read_json(&root.join("reference.json"));
                let tensors = read_tensors(&root.join("reference.safetensors"));
                (name.to_string(), (doc, tensors))
            })
            .collect();
        Self {
            reference: read_json(&dir.join("reference.json")),
            tensors: read_tensors(&dir.join("reference.safetensors")),
            families,
        }
    }

    fn list(&self, key: &str) -> &[Value] {
        self.reference[key].as_array().unwrap()
    }

    fn pixels(&self, family: &str, image: &str) -> Tensor {
        self.families[family].1[&format!("pixel_values/pil/{image}")].shallow_clone()
    }

    fn png(&self, family: &str, image: &str) -> PathBuf {
        let file = self.families[family].0["images"][image]["file"]
            .as_str()
            .unwrap();
        fixtures().join(family).join(file)
    }

    fn model_dir(family: &str) -> PathBuf {
        fixtures().join(family).join("models/hub")
    }

    fn request(&self, case: &Value, from_png: bool) -> Request {
        let family = case["family"].as_str().unwrap();
        let image = case["image"].as_str().unwrap();
        let source = if from_png {
            ImageSource::File(self.png(family, image))
        } else {
            ImageSource::Pixels(self.pixels(family, image))
        };
        Request::new(source, case["question"].as_str().unwrap(), template(family))
    }
}

fn template(family: &str) -> PromptTemplate {
    match family {
        "llava" => PromptTemplate::LlavaV1,
        _ => PromptTemplate::InstructBlip,
    }
}

/// The case's view as a [`Mode`].
fn mode(case: &Value) -> Mode {
    let beta = case["beta"].as_f64().unwrap();
    let params = DamroParams::new(case["alpha"].as_f64().unwrap(), beta).unwrap();
    match case["view"].as_str().unwrap() {
        "vcd" => Mode::Vcd(VcdSettings {
            params,
            noise: VcdNoise::new(
                case["noise_step"].as_u64().unwrap() as usize,
                case["noise_seed"].as_u64().unwrap(),
            )
            .unwrap(),
        }),
        "no-image" => Mode::NoImage(params),
        "cutoff-only" => Mode::CutoffOnly(params),
        other => panic!("unknown view {other}"),
    }
}

fn config(case: &Value, execution: BranchExecution) -> GenerationConfig {
    let max_new = case["max_new_tokens"].as_u64().unwrap() as usize;
    let mut config = match case["decoding"].as_str().unwrap() {
        "greedy" => GenerationConfig::greedy(mode(case), max_new),
        "sample" => GenerationConfig::sampled(mode(case), max_new, case["seed"].as_u64().unwrap()),
        other => panic!("unknown decoding {other}"),
    };
    config.branches = execution;
    config
}

#[test]
fn vcd_noise_equals_python_torch() {
    let fx = Fixtures::load();
    let records = fx.list("noise");
    assert!(records.len() >= 3, "only {} noise records", records.len());
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    for r in records {
        let what = format!("{} {} {}", r["family"], r["image"], r["key"]);
        let noise = VcdNoise::new(
            r["step"].as_u64().unwrap() as usize,
            r["seed"].as_u64().unwrap(),
        )
        .unwrap();
        // The schedule's coefficients are f32 values: equal to Python's.
        let (keep, scale) = noise.coefficients().unwrap();
        assert_eq!(
            keep as f32,
            r["sqrt_abar"].as_f64().unwrap() as f32,
            "{what}"
        );
        assert_eq!(
            scale as f32,
            r["sqrt_one_minus_abar"].as_f64().unwrap() as f32,
            "{what}"
        );

        let pixels = fx.pixels(r["family"].as_str().unwrap(), r["image"].as_str().unwrap());
        assert_eq!(pixels.size(), ids(&r["shape"]), "{what}: input shape");
        let noised = noise.transform(&pixels).unwrap();
        assert_eq!(noised.size(), pixels.size(), "{what}: output shape");
        let stride = r["stride"].as_i64().unwrap();
        let got = noised.flatten(0, -1).slice(0, 0, None, stride);
        let want = &fx.tensors[r["key"].as_str().unwrap()];
        let rel = assert_close(&what, &got, &want.flatten(0, -1), NOISE);
        eprintln!("{what}: max error / scale {rel:e}");
        // The same seed gives the same noise; another seed another noise.
        let again = noise.transform(&pixels).unwrap();
        assert!(again.equal(&noised), "{what}: not repeatable");
        let other = VcdNoise::new(noise.step, noise.seed + 1).unwrap();
        assert!(!other.transform(&pixels).unwrap().equal(&noised), "{what}");
    }
}

/// The second branch's first-step logits, built through the trait's pieces
/// (`encode_image` with `SecondImage::NoImage`, `branch_embeds`, the
/// language model) as the generation loop builds them.
fn no_image_logits<D: DamroDecoder<Lm = damro::llm::Llama>>(
    decoder: &D,
    request: &Request,
) -> (Tensor, Vec<i64>) {
    let visual = decoder.encode_image(request, SecondImage::NoImage).unwrap();
    let branches = decoder.branch_embeds(request, &visual).unwrap();
    let embeds = branches.contrast.unwrap().embeds;
    let lm = decoder.language_model();
    let len = embeds.size()[1];
    let mut cache = lm.new_cache(1, len).unwrap();
    let rows = Rows {
        embeds: &embeds,
        row_lengths: &[len],
        states: &[()],
    };
    let logits = LanguageModel::forward(lm, rows, &mut cache)
        .unwrap()
        .squeeze_dim(0)
        .to_device(Device::Cpu);
    (logits, branches.prompt_ids)
}

#[test]
fn no_image_branch_logits_match_the_hf_language_model() {
    let fx = Fixtures::load();
    let llava = LlavaDecoder::load(Fixtures::model_dir("llava"), options()).unwrap();
    let blip = InstructBlipDecoder::load(Fixtures::model_dir("instructblip"), options()).unwrap();
    let records = fx.list("no_image");
    assert!(
        records.len() >= 4,
        "only {} no-image records",
        records.len()
    );
    for r in records {
        let family = r["family"].as_str().unwrap();
        let what = format!("{family} {}", r["prompt"]);
        // The image does not reach this branch; any recorded one will do.
        let request = Request::new(
            ImageSource::Pixels(fx.pixels(family, "wide_rgb")),
            r["question"].as_str().unwrap(),
            template(family),
        );
        let (logits, prompt_ids) = match family {
            "llava" => no_image_logits(&llava, &request),
            _ => no_image_logits(&blip, &request),
        };
        assert_eq!(prompt_ids, ids(&r["prompt_ids"]), "{what}: prompt ids");
        let want = &fx.tensors[r["key"].as_str().unwrap()];
        assert_close(&what, &logits, want, PARITY);
    }
}

/// Runs one case in both branch executions, from the recorded pixels and
/// from the PNG, and checks tokens, prompt ids, text and finish reason.
fn check_case<D: DamroDecoder>(fx: &Fixtures, decoder: &D, case: &Value) {
    let name = case["name"].as_str().unwrap();
    let expected = ids(&case["generated_ids"]);
    // Greedy VCD draws its noise from the global generator too.
    let _turn = (case["decoding"] == "sample" || case["view"] == "vcd")
        .then(|| RNG.lock().unwrap_or_else(|e| e.into_inner()));
    for execution in [BranchExecution::Batched, BranchExecution::Sequential] {
        for from_png in [false, true] {
            let what = format!("{name} {execution:?} png={from_png}");
            let request = fx.request(case, from_png);
            let out = generate(decoder, &[request], &config(case, execution)).unwrap();
            let out = &out[0];
            assert_eq!(out.token_ids, expected, "{what}: token ids");
            assert_eq!(
                out.prompt_ids,
                ids(&case["prompt_ids"]),
                "{what}: prompt ids"
            );
            assert_eq!(out.text, case["text"].as_str().unwrap(), "{what}: text");
            let ended = case["ended_on_eos"].as_bool().unwrap();
            assert_eq!(out.finish == FinishReason::Eos, ended, "{what}: finish");
            assert!(out.outliers.is_empty(), "{what}: outliers reported");
        }
    }
}

fn cases_of<'a>(fx: &'a Fixtures, family: &str) -> Vec<&'a Value> {
    let cases: Vec<&Value> = fx
        .list("cases")
        .iter()
        .filter(|c| c["family"] == family)
        .collect();
    // Every view, greedy and sampled.
    for view in ["vcd", "no-image", "cutoff-only"] {
        for decoding in ["greedy", "sample"] {
            assert!(
                cases
                    .iter()
                    .any(|c| c["view"] == view && c["decoding"] == decoding),
                "{family}: no {view} {decoding} case"
            );
        }
    }
    cases
}

#[test]
fn llava_view_cases_match_the_reference() {
    let fx = Fixtures::load();
    let decoder = LlavaDecoder::load(Fixtures::model_dir("llava"), options()).unwrap();
    for case in cases_of(&fx, "llava") {
        check_case(&fx, &decoder, case);
    }
}

#[test]
fn instructblip_view_cases_match_the_reference() {
    let fx = Fixtures::load();
    let decoder =
        InstructBlipDecoder::load(Fixtures::model_dir("instructblip"), options()).unwrap();
    for case in cases_of(&fx, "instructblip") {
        check_case(&fx, &decoder, case);
    }
}

/// Builds the `generate` example as a plain binary and returns its path.
/// (`cargo test --all-targets` builds examples only as test harnesses, so
/// the binary a user runs is built here; cargo holds no lock while tests
/// run.)
fn build_example() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--example",
        "generate",
        "--message-format=json-render-diagnostics",
    ]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo build --example generate: {stderr}"
    );
    // The last line naming the example's executable.
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "generate")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no executable for the generate example")
}

/// The example's flags for a case.
fn example_args(fx: &Fixtures, case: &Value) -> Vec<String> {
    let family = case["family"].as_str().unwrap();
    let mut args: Vec<String> = vec![
        "--model".into(),
        Fixtures::model_dir(family).display().to_string(),
        "--image".into(),
        fx.png(family, case["image"].as_str().unwrap())
            .display()
            .to_string(),
        "--prompt".into(),
        case["question"].as_str().unwrap().into(),
        "--contrast".into(),
        case["view"].as_str().unwrap().into(),
        "--alpha".into(),
        case["alpha"].to_string(),
        "--beta".into(),
        case["beta"].to_string(),
        "--max-new-tokens".into(),
        case["max_new_tokens"].to_string(),
        "--device".into(),
        "cpu".into(),
        "--json".into(),
        "--preprocess".into(),
        "transformers5".into(),
    ];
    if case["view"] == "vcd" {
        for key in ["noise_step", "noise_seed"] {
            args.push(format!("--{}", key.replace('_', "-")));
            args.push(case[key].to_string());
        }
    }
    if case["decoding"] == "sample" {
        args.extend(["--seed".to_string(), case["seed"].to_string()]);
    }
    args
}

#[test]
fn the_generate_example_prints_the_reference_tokens() {
    let binary = build_example();
    let fx = Fixtures::load();
    for case in fx.list("cases") {
        let name = case["name"].as_str().unwrap();
        let out = std::process::Command::new(&binary)
            .args(example_args(&fx, case))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout.lines().find(|l| l.starts_with('{'));
        let value: Value =
            serde_json::from_str(line.unwrap_or_else(|| panic!("{name}: {stdout}"))).unwrap();
        assert_eq!(value["mode"], case["view"], "{name}");
        assert_eq!(
            ids(&value["token_ids"]),
            ids(&case["generated_ids"]),
            "{name}"
        );
        assert_eq!(
            ids(&value["prompt_ids"]),
            ids(&case["prompt_ids"]),
            "{name}"
        );
        assert_eq!(value["text"], case["text"], "{name}");
    }
}

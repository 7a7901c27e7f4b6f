//! The bad-input suite: the `generate`, `outliers` and `eval` commands run
//! as a user runs them (the built example binaries), each on one broken
//! input — argument bytes, flags, images, checkpoints, configs, tokenizers,
//! prompts, evaluation files. Every case must fail cleanly: a non-zero
//! exit, a message that names the problem and the file or flag, no panic,
//! no libtorch exception dump, no backtrace, no file left behind, within a
//! time limit (see `bad_inputs/harness.rs`). Broken models are copies of
//! the tiny fixture models with one thing changed. `BAD_INPUTS_SHOW=1`
//! (with `--nocapture`) prints every message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "bad_inputs/harness.rs"]
mod harness;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use harness::{Model, fixture, generate_on, image, png_claiming, run};
use serde_json::json;
use tempfile::TempDir;

fn llava() -> std::path::PathBuf {
    fixture("llava/models/hub")
}

// ---- argument bytes ------------------------------------------------------

/// Not UTF-8, but a valid Linux file name.
fn non_utf8(prefix: &std::path::Path, tail: &[u8]) -> std::path::PathBuf {
    let mut bytes = prefix.as_os_str().to_os_string().into_vec();
    bytes.extend_from_slice(tail);
    OsString::from_vec(bytes).into()
}

#[test]
fn non_utf8_image_name_is_read_like_any_other() {
    let tmp = TempDir::new().unwrap();
    let path = non_utf8(tmp.path(), b"/caf\xe9.png");
    std::fs::copy(image(), &path).unwrap();
    let out = generate_on(&llava(), &path, &["--max-new-tokens", "1"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn non_utf8_image_name_that_is_missing() {
    let tmp = TempDir::new().unwrap();
    let path = non_utf8(tmp.path(), b"/caf\xe9-missing.png");
    generate_on(&llava(), &path, &[]).fails_with(&["caf\u{fffd}-missing.png", "No such file"]);
}

#[test]
fn non_utf8_prompt() {
    let args: Vec<OsString> = vec![
        "--model".into(),
        llava().into(),
        "--image".into(),
        image().into(),
        "--prompt".into(),
        OsString::from_vec(b"is there a \xff\xfe?".to_vec()),
    ];
    run("generate", args).fails_with(&["for '--prompt", "not valid UTF-8"]);
}

#[test]
fn non_utf8_model_dir() {
    let tmp = TempDir::new().unwrap();
    let dir = non_utf8(tmp.path(), b"/mod\xe8le");
    generate_on(&dir, &image(), &[]).fails_with(&["--model", "mod\u{fffd}le", "config.json"]);
}

// ---- flags -------------------------------------------------------------

#[test]
fn unknown_flag() {
    generate_on(&llava(), &image(), &["--bogus"]).fails_with(&["--bogus"]);
}

#[test]
fn missing_required_flag() {
    run("generate", ["--model".into(), llava().into_os_string()])
        .fails_with(&["--image", "--prompt"]);
    run("outliers", ["--image".into(), image().into_os_string()]).fails_with(&["--model", "--out"]);
}

#[test]
fn bad_dtype() {
    generate_on(&llava(), &image(), &["--dtype", "f8"]).fails_with(&["--dtype", "f8"]);
}

#[test]
fn bad_device() {
    generate_on(&llava(), &image(), &["--device", "tpu"]).fails_with(&["--device", "tpu"]);
}

#[test]
fn cuda_without_a_gpu() {
    if damro::cuda::cuda_if_available().is_cuda() {
        return; // this machine has one: nothing to refuse
    }
    generate_on(&llava(), &image(), &["--device", "cuda"]).fails_with(&["--device", "cuda:0"]);
}

#[test]
fn bad_template() {
    generate_on(&llava(), &image(), &["--template", "chatml"])
        .fails_with(&["--template", "chatml"]);
}

#[test]
fn top_k_zero() {
    generate_on(&llava(), &image(), &["--top-k", "0"]).fails_with(&["--top-k", "k"]);
}

#[test]
fn negative_alpha() {
    generate_on(&llava(), &image(), &["--alpha=-1"]).fails_with(&["--alpha", "`alpha` = -1"]);
}

#[test]
fn beta_above_one() {
    generate_on(&llava(), &image(), &["--beta", "2"]).fails_with(&["--beta", "`beta` = 2"]);
}

#[test]
fn noise_step_past_the_schedule() {
    let extra = ["--contrast", "vcd", "--noise-step", "5000"];
    generate_on(&llava(), &image(), &extra).fails_with(&["--noise-step", "5000"]);
}

#[test]
fn huge_max_new_tokens() {
    let extra = ["--max-new-tokens", "18446744073709551615"];
    generate_on(&llava(), &image(), &extra)
        .fails_with(&["18446744073709551615 new tokens", "context of 4096"]);
}

#[test]
fn prompt_longer_than_the_context() {
    let prompt = "word ".repeat(5000);
    let args = [
        "--model", "", "--image", "", "--prompt", &prompt, "--device", "cpu",
    ];
    let mut args: Vec<OsString> = args.iter().map(OsString::from).collect();
    args[1] = llava().into();
    args[3] = image().into();
    run("generate", args).fails_with(&["prompt takes", "context of 4096"]);
}

// ---- images --------------------------------------------------------------

#[test]
fn image_is_a_directory() {
    let tmp = TempDir::new().unwrap();
    generate_on(&llava(), tmp.path(), &[]).fails_with(&["not a regular file"]);
}

#[test]
fn image_is_dev_zero() {
    generate_on(&llava(), "/dev/zero".as_ref(), &[])
        .fails_with(&["/dev/zero", "not a regular file"]);
}

#[test]
fn image_is_a_decompression_bomb() {
    let tmp = TempDir::new().unwrap();
    let bomb = tmp.path().join("bomb.png");
    std::fs::write(&bomb, png_claiming(100_000, 100_000)).unwrap();
    generate_on(&llava(), &bomb, &[]).fails_with(&[
        "bomb.png",
        "100000x100000",
        "decompression-bomb",
    ]);
}

#[test]
fn image_is_a_text_file() {
    let tmp = TempDir::new().unwrap();
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "not an image\n").unwrap();
    generate_on(&llava(), &text, &[]).fails_with(&["notes.png", "decode"]);
}

#[test]
fn image_is_empty_or_truncated() {
    let tmp = TempDir::new().unwrap();
    let empty = tmp.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    generate_on(&llava(), &empty, &[]).fails_with(&["empty.png"]);
    let cut = tmp.path().join("cut.png");
    let bytes = std::fs::read(image()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    generate_on(&llava(), &cut, &[]).fails_with(&["cut.png"]);
}

#[test]
fn image_is_missing() {
    generate_on(&llava(), "/nonexistent/cat.png".as_ref(), &[])
        .fails_with(&["/nonexistent/cat.png"]);
}

// ---- outliers: its --out is never left behind ---------------------------

fn outliers(
    model: &std::path::Path,
    image: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> harness::Outcome {
    let mut args: Vec<OsString> = vec![
        "--model".into(),
        model.into(),
        "--image".into(),
        image.into(),
    ];
    args.extend(["--out".into(), out.into(), "--device".into(), "cpu".into()]);
    args.extend(extra.iter().map(OsString::from));
    run("outliers", args)
}

fn nothing_in(dir: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
}

#[test]
fn outliers_top_k_out_of_range() {
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("heat.png");
    outliers(&llava(), &image(), &out, &["--top-k", "0"]).fails_with(&["--top-k", "at least 1"]);
    outliers(&llava(), &image(), &out, &["--top-k", "100000"]).fails_with(&["k = 100000", "576"]);
    nothing_in(tmp.path());
}

#[test]
fn outliers_bad_image_leaves_no_output() {
    let tmp = TempDir::new().unwrap();
    let bomb = tmp.path().join("bomb.png");
    std::fs::write(&bomb, png_claiming(60_000, 70_000)).unwrap();
    let out_dir = TempDir::new().unwrap();
    outliers(&llava(), &bomb, &out_dir.path().join("heat.png"), &[]).fails_with(&["bomb.png"]);
    nothing_in(out_dir.path());
}

#[test]
fn outliers_out_is_a_directory_or_unwritable() {
    let tmp = TempDir::new().unwrap();
    outliers(&llava(), &image(), tmp.path(), &[]).fails_with(&[&tmp.path().display().to_string()]);
    nothing_in(tmp.path());
    let nowhere = tmp.path().join("missing/dir/heat.png");
    outliers(&llava(), &image(), &nowhere, &[]).fails_with(&["missing/dir"]);
    nothing_in(tmp.path());
}

#[test]
fn outliers_bad_model_leaves_no_output() {
    let model = Model::llava();
    model.set_config("/vision_config/image_size", json!(1_000_000_000));
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("heat.png");
    outliers(model.path(), &image(), &out, &[])
        .fails_with(&["vision_config.image_size", "config.json"]);
    nothing_in(tmp.path());
}

// ---- checkpoints ---------------------------------------------------------

#[test]
fn no_weights() {
    let model = Model::llava();
    model.remove("model.safetensors");
    generate_on(model.path(), &image(), &[]).fails_with(&["no weights", "model.safetensors"]);
}

#[test]
fn truncated_safetensors() {
    let model = Model::llava();
    let bytes = std::fs::read(model.file("model.safetensors")).unwrap();
    model.write("model.safetensors", &bytes[..bytes.len() / 2]);
    generate_on(model.path(), &image(), &[])
        .fails_with(&["model.safetensors", "invalid safetensors"]);
    model.write("model.safetensors", &bytes[..5]);
    generate_on(model.path(), &image(), &[]).fails_with(&["model.safetensors"]);
}

#[test]
fn corrupt_safetensors_header() {
    let model = Model::llava();
    let mut bytes = std::fs::read(model.file("model.safetensors")).unwrap();
    bytes[8..40].fill(0xff);
    model.write("model.safetensors", &bytes);
    generate_on(model.path(), &image(), &[]).fails_with(&["model.safetensors", "header"]);
}

#[test]
fn safetensors_header_length_is_huge() {
    let model = Model::llava();
    let mut bytes = std::fs::read(model.file("model.safetensors")).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    model.write("model.safetensors", &bytes);
    generate_on(model.path(), &image(), &[]).fails_with(&["model.safetensors", "header too large"]);
}

#[test]
fn safetensors_header_claims_a_huge_tensor() {
    let model = Model::llava();
    let name = "language_model.model.embed_tokens.weight";
    model.edit_header("model.safetensors", |h| {
        h[name]["shape"] = json!([1u64 << 20, 1u64 << 20]);
        h[name]["data_offsets"] = json!([0, 4u64 << 40]);
    });
    generate_on(model.path(), &image(), &[]).fails_with(&["model.safetensors", name]);
}

#[test]
fn tensor_of_the_wrong_shape() {
    let model = Model::llava();
    let name = "language_model.model.layers.1.self_attn.o_proj.weight";
    model.edit_header("model.safetensors", |h| h[name]["shape"] = json!([32, 128]));
    generate_on(model.path(), &image(), &[]).fails_with(&[name, "[32, 128]", "expected [64, 64]"]);
}

#[test]
fn index_names_a_missing_shard() {
    let model = Model::instructblip();
    model.remove("model-00002-of-00002.safetensors");
    generate_on(model.path(), &image(), &[])
        .fails_with(&["model-00002-of-00002.safetensors", "missing"]);
}

#[test]
fn index_names_a_shard_outside_the_directory() {
    let model = Model::instructblip();
    model.edit_json("model.safetensors.index.json", |v| {
        v["weight_map"]["query_tokens"] = json!("../../elsewhere.safetensors");
    });
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "model.safetensors.index.json",
        "../../elsewhere.safetensors",
    ]);
}

#[test]
fn index_maps_a_tensor_to_the_wrong_shard() {
    let model = Model::instructblip();
    model.edit_json("model.safetensors.index.json", |v| {
        v["weight_map"]["query_tokens"] = json!("model-00001-of-00002.safetensors");
    });
    generate_on(model.path(), &image(), &[])
        .fails_with(&["model.safetensors.index.json", "query_tokens"]);
}

#[test]
fn index_is_not_json() {
    let model = Model::instructblip();
    model.write("model.safetensors.index.json", "{\"weight_map\": ");
    generate_on(model.path(), &image(), &[])
        .fails_with(&["model.safetensors.index.json", "invalid JSON"]);
}

// ---- configs -------------------------------------------------------------

#[test]
fn config_missing() {
    let model = Model::llava();
    model.remove("config.json");
    generate_on(model.path(), &image(), &[]).fails_with(&["--model", "config.json"]);
}

#[test]
fn config_not_json() {
    let model = Model::llava();
    model.write("config.json", "{\"model_type\": llava}");
    generate_on(model.path(), &image(), &[]).fails_with(&["config.json", "invalid JSON"]);
}

#[test]
fn config_field_of_the_wrong_type() {
    let model = Model::llava();
    model.set_config("/vision_config/hidden_size", json!("32"));
    generate_on(model.path(), &image(), &[]).fails_with(&["config.json", "invalid type"]);
    model.set_config("/vision_config/hidden_size", json!(32));
    model.set_config("/text_config/num_hidden_layers", json!([2]));
    generate_on(model.path(), &image(), &[]).fails_with(&["config.json", "text_config"]);
}

#[test]
fn config_without_model_type() {
    let model = Model::llava();
    model.remove_config("", "model_type");
    generate_on(model.path(), &image(), &[]).fails_with(&["model_type", "config.json"]);
}

#[test]
fn config_without_vision_config() {
    // LLaVA's default tower is ViT-L/14-336: 1024 wide, unlike the weights.
    let model = Model::llava();
    model.remove_config("", "vision_config");
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "`vision_config.hidden_size` = 1024",
        "patch_embedding",
    ]);
}

#[test]
fn config_without_text_hidden_size() {
    let model = Model::llava();
    model.remove_config("/text_config", "hidden_size");
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "`text_config.hidden_size` = 4096",
        "embed_tokens",
    ]);
}

#[test]
fn config_with_a_negative_size() {
    let model = Model::llava();
    model.set_config("/vision_config/hidden_size", json!(-32));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "vision_config.hidden_size",
        "positive",
    ]);
}

#[test]
fn config_heads_that_do_not_divide() {
    let model = Model::llava();
    model.set_config("/text_config/num_attention_heads", json!(5));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "text_config.",
        "num_attention_heads = 5",
    ]);
}

#[test]
fn huge_image_size() {
    let model = Model::llava();
    model.set_config("/vision_config/image_size", json!(1_000_000_000));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "vision_config.image_size",
        "1000000000",
        "limit",
    ]);
}

#[test]
fn image_size_that_does_not_match_the_positions() {
    let model = Model::llava();
    model.set_config("/vision_config/image_size", json!(448));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "vision_config.image_size",
        "position_embedding",
    ]);
}

#[test]
fn huge_layer_counts() {
    let model = Model::llava();
    model.set_config("/text_config/num_hidden_layers", json!(1_000_000_000));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "`text_config.num_hidden_layers` = 1000000000",
        "limit",
    ]);
    model.set_config("/text_config/num_hidden_layers", json!(2));
    model.set_config("/vision_config/num_hidden_layers", json!(1000));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "`vision_config.num_hidden_layers` = 1000",
        "holds 4 layer(s)",
    ]);
}

#[test]
fn huge_hidden_size() {
    let model = Model::llava();
    model.set_config("/text_config/hidden_size", json!(1u64 << 40));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "`text_config.hidden_size` = 1099511627776",
        "limit",
    ]);
}

#[test]
fn huge_context() {
    let model = Model::llava();
    model.set_config("/text_config/max_position_embeddings", json!(1u64 << 50));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "text_config.max_position_embeddings",
        "limit",
    ]);
}

#[test]
fn instructblip_huge_query_tokens_and_qformer_layers() {
    let model = Model::instructblip();
    model.set_config("/num_query_tokens", json!(1u64 << 40));
    model.set_config("/qformer_config/num_hidden_layers", json!(1u64 << 30));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "`num_query_tokens`",
        "`qformer_config.num_hidden_layers`",
    ]);
}

#[test]
fn instructblip_query_tokens_that_do_not_match() {
    let model = Model::instructblip();
    model.set_config("/num_query_tokens", json!(32));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "`num_query_tokens` = 32",
        "query_tokens",
    ]);
}

#[test]
fn llava_next_sizes_are_checked_too() {
    let model = Model::llava_next();
    model.set_config("/text_config/num_hidden_layers", json!(1_000_000_000));
    let needles = [
        "config.json",
        "`text_config.num_hidden_layers` = 1000000000",
        "limit",
    ];
    generate_on(model.path(), &image(), &[]).fails_with(&needles);
    model.set_config("/text_config/num_hidden_layers", json!(2));
    model.set_config("/text_config/hidden_size", json!(32));
    let needles = [
        "config.json",
        "`text_config.hidden_size` = 32",
        "embed_tokens",
    ];
    generate_on(model.path(), &image(), &[]).fails_with(&needles);
}

// ---- tokenizers and cross-checks ------------------------------------------

#[test]
fn image_token_outside_the_vocabulary() {
    let model = Model::llava();
    model.set_config("/image_token_index", json!(100_000));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "config.json",
        "image_token_index",
        "vocabulary",
    ]);
}

#[test]
fn image_token_id_the_tokenizer_disagrees_with() {
    let model = Model::llava();
    model.set_config("/image_token_index", json!(7));
    generate_on(model.path(), &image(), &[]).fails_with(&[
        "tokenizer.json",
        "<image>",
        "image_token_index",
    ]);
}

#[test]
fn tokenizer_without_the_image_token() {
    let model = Model::llava();
    model.edit_json("tokenizer.json", |t| {
        let added = t["added_tokens"].as_array_mut().unwrap();
        added.retain(|a| a["content"] != "<image>");
    });
    generate_on(model.path(), &image(), &[]).fails_with(&["tokenizer.json", "no `<image>` token"]);
}

#[test]
fn tokenizer_missing_or_not_json() {
    let model = Model::llava();
    model.write("tokenizer.json", "{");
    generate_on(model.path(), &image(), &[]).fails_with(&["tokenizer.json"]);
    model.remove("tokenizer.json");
    generate_on(model.path(), &image(), &[]).fails_with(&["tokenizer.json", "No such file"]);
}

#[test]
fn qformer_tokenizer_missing() {
    let model = Model::instructblip();
    std::fs::remove_dir_all(model.file("qformer_tokenizer")).unwrap();
    generate_on(model.path(), &image(), &[]).fails_with(&["qformer_tokenizer"]);
}

#[test]
fn preprocessor_config_missing() {
    let model = Model::llava();
    model.remove("preprocessor_config.json");
    generate_on(model.path(), &image(), &[])
        .fails_with(&["preprocessor_config.json", "no such file"]);
    model.remove("processor_config.json");
    generate_on(model.path(), &image(), &[])
        .fails_with(&["preprocessor_config.json", "no such file"]);
}

#[test]
fn preprocessor_config_with_a_bad_field() {
    let model = Model::llava();
    model.edit_json("preprocessor_config.json", |v| v["resample"] = json!(2));
    generate_on(model.path(), &image(), &[]).fails_with(&["preprocessor_config.json", "resample"]);
}

// ---- eval: a run that cannot start writes nothing --------------------------

/// A one-question POPE file in a temp dir; answers go to the command's
/// working directory (a relative path), so anything written is caught.
fn pope_args(model: &std::path::Path, extra: &[&str]) -> (TempDir, Vec<OsString>) {
    let tmp = TempDir::new().unwrap();
    let questions = tmp.path().join("questions.jsonl");
    let line = r#"{"question_id": 1, "image": "small_grey.png", "text": "Is there a dog?", "label": "yes"}"#;
    std::fs::write(&questions, format!("{line}\n")).unwrap();
    let mut args: Vec<OsString> = vec!["pope-run".into(), "--questions".into(), questions.into()];
    args.extend([
        "--images".into(),
        fixture("images").into(),
        "--answers".into(),
        "answers.jsonl".into(),
    ]);
    args.extend([
        "--model".into(),
        model.into(),
        "--max-new-tokens".into(),
        "2".into(),
    ]);
    if !extra.iter().any(|a| a.starts_with("--device")) {
        args.extend(["--device".into(), "cpu".into()]);
    }
    args.extend(extra.iter().map(OsString::from));
    (tmp, args)
}

#[test]
fn eval_with_a_broken_model_writes_no_answers() {
    let model = Model::llava();
    model.set_config("/text_config/num_hidden_layers", json!(1_000_000_000));
    let (_tmp, args) = pope_args(model.path(), &[]);
    run("eval", args).fails_with(&["config.json", "text_config.num_hidden_layers"]);
}

#[test]
fn eval_flags_are_checked() {
    let (_tmp, args) = pope_args(&llava(), &["--bogus"]);
    run("eval", args).fails_with(&["--bogus"]);
    let (_tmp, args) = pope_args(&llava(), &["--beta", "2"]);
    run("eval", args).fails_with(&["beta"]);
    if !damro::cuda::cuda_if_available().is_cuda() {
        let (_tmp, args) = pope_args(&llava(), &["--device", "cuda"]);
        run("eval", args).fails_with(&["--device", "cuda:0"]);
    }
}

#[test]
fn eval_questions_that_are_empty_or_binary_or_imageless() {
    let (tmp, mut args) = pope_args(&llava(), &[]);
    std::fs::write(tmp.path().join("questions.jsonl"), b"").unwrap();
    run("eval", args.clone()).fails_with(&["questions.jsonl", "no usable POPE question"]);
    std::fs::write(
        tmp.path().join("questions.jsonl"),
        [0xffu8, 0xfe, 0x00, 0x9c, b'\n'],
    )
    .unwrap();
    run("eval", args.clone()).fails_with(&["questions.jsonl"]);
    let at = args.iter().position(|a| a == "--images").unwrap();
    args[at + 1] = tmp.path().join("no-such-folder").into();
    let line = r#"{"question_id": 1, "image": "small_grey.png", "text": "Is there a dog?", "label": "yes"}"#;
    std::fs::write(tmp.path().join("questions.jsonl"), format!("{line}\n")).unwrap();
    run("eval", args).fails_with(&["no-such-folder", "nothing answered"]);
}

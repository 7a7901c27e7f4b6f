//! The `analyze` example end to end, as a user runs it
//! (`target/<profile>/examples/analyze`, which `scripts/test.sh` builds
//! before the tests), on the tiny fixture models over COCO-named copies
//! of the fixture images, with the small synthetic annotations of
//! `tests/fixtures/analysis` (the tiny model's frequent words stand for
//! objects: the numbers are meaningless, the pipeline is real).
//!
//! Checked: the run writes one record per image, sharded and resumable;
//! `score` writes Figure 4 (CSV, PNG, Markdown) and Figure 5 (Markdown,
//! JSON) whose numbers equal the means recomputed here from the records
//! and the marks; the marks agree with the annotations; `heatmap` writes
//! one PNG of two panels; InstructBLIP records carry raw attention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The ground truth of `tests/fixtures/analysis`: instances plus the
/// objects of the reference captions.
fn truth(image_id: u64) -> BTreeSet<&'static str> {
    match image_id {
        1 => ["horse"].into(),
        2 => ["horse", "dog"].into(),
        3 => ["dog", "sky"].into(),
        _ => BTreeSet::new(),
    }
}

/// The words of `tests/fixtures/analysis/synonyms.txt`.
const OBJECT_WORDS: [&str; 5] = ["what", "phone", "sky", "with", "and"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn analyze_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/examples/analyze
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/analyze");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --example analyze` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn analyze(args: &[&str]) -> Output {
    let out = Command::new(analyze_bin())
        .args(args)
        .stdin(Stdio::null())
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(args: &[&str]) -> Output {
    let out = analyze(args);
    assert_eq!(
        out.code,
        Some(0),
        "analyze {args:?} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out
}

fn fails(args: &[&str], message: &str) {
    let out = analyze(args);
    assert_eq!(
        out.code,
        Some(1),
        "analyze {args:?} should fail:\n{}",
        out.stdout
    );
    assert!(
        out.stderr.contains(message) && !out.stderr.contains("panicked"),
        "stderr of {args:?} lacks {message:?}:\n{}",
        out.stderr
    );
}

fn fixture(path: &str) -> String {
    root()
        .join("tests/fixtures")
        .join(path)
        .display()
        .to_string()
}

/// A folder with COCO-named copies of the three fixture images.
fn coco_images(dir: &Path) -> PathBuf {
    let images = dir.join("val2014");
    std::fs::create_dir_all(&images).unwrap();
    for (id, name) in [
        (1, "small_grey.png"),
        (2, "tall_rgba.png"),
        (3, "wide_rgb.png"),
    ] {
        let from = root().join("tests/fixtures/images").join(name);
        std::fs::copy(from, images.join(format!("COCO_val2014_{id:012}.png"))).unwrap();
    }
    images
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

fn tiny(family: &str) -> String {
    fixture(&format!("{family}/models/hub"))
}

/// Runs the three images as two shards, then the first shard again.
fn run_sharded(dir: &Path) -> [PathBuf; 2] {
    let images = coco_images(dir);
    let records = dir.join("records.jsonl");
    let (llava, images, records_flag) = (tiny("llava"), s(&images), s(&records));
    let run = |shard: &str| {
        ok(&[
            "run",
            "--images",
            &images,
            "--records",
            &records_flag,
            "--model",
            &llava,
            "--device",
            "cpu",
            "--max-new-tokens",
            "12",
            "--shard",
            shard,
        ])
    };
    run("0/2");
    run("1/2");
    let first = dir.join("records.shard-0-of-2.jsonl");
    let second = dir.join("records.shard-1-of-2.jsonl");
    let before = std::fs::read(&first).unwrap();
    run("0/2");
    assert_eq!(
        std::fs::read(&first).unwrap(),
        before,
        "a resumed run rewrote records"
    );
    for (path, captions, ids) in [
        (&first, "records.captions.shard-0-of-2.jsonl", vec![1, 3]),
        (&second, "records.captions.shard-1-of-2.jsonl", vec![2]),
    ] {
        let got: Vec<u64> = lines(path)
            .iter()
            .map(|r| r["image_id"].as_u64().unwrap())
            .collect();
        assert_eq!(got, ids);
        assert_eq!(lines(&dir.join(captions)).len(), ids.len());
    }
    [first, second]
}

/// Checks one record of the tiny LLaVA: its tokens, pieces and measures.
fn check_record(record: &Value) {
    assert_eq!(record["measures"], "overlap");
    assert_eq!(record["prompt"], "What can you see in this image?");
    assert_eq!(record["settings"]["mode"], "plain");
    assert_eq!(record["settings"]["decoding"], "greedy");
    let ids = record["token_ids"].as_array().unwrap();
    let tokens = record["tokens"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 12);
    assert_eq!(tokens.len(), ids.len());
    let text: String = tokens
        .iter()
        .map(|t| t["piece"].as_str().unwrap())
        .collect();
    assert_eq!(text, record["caption"].as_str().unwrap());
    for token in tokens {
        let h = token["h"].as_array().unwrap();
        assert_eq!(h.len(), 10);
        for (i, v) in h.iter().enumerate() {
            // H_i = (overlap count) / i
            let count = v.as_f64().unwrap() * (i + 1) as f64;
            assert!(
                (count - count.round()).abs() < 1e-9 && (0.0..=(i + 1) as f64).contains(&count)
            );
        }
        let f = token["f"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f));
    }
}

/// Σ and count per (level, group) column and i, from the records and marks.
type Columns = BTreeMap<String, (Vec<f64>, usize, f64)>;

fn recompute(records: &[Value], marks: &[Value]) -> Columns {
    let mut columns = Columns::new();
    for (record, marks) in records.iter().zip(marks) {
        assert_eq!(record["image_id"], marks["image_id"]);
        let tokens = record["tokens"].as_array().unwrap();
        let token_marks = marks["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), token_marks.len());
        for (token, mark) in tokens.iter().zip(token_marks) {
            for level in ["sentence", "object"] {
                let Some(group) = mark[format!("{level}_group")].as_str() else {
                    continue;
                };
                let entry =
                    columns
                        .entry(format!("{level}_{group}"))
                        .or_insert((vec![0.0; 10], 0, 0.0));
                for (sum, h) in entry.0.iter_mut().zip(token["h"].as_array().unwrap()) {
                    *sum += h.as_f64().unwrap();
                }
                entry.1 += 1;
                entry.2 += token["f"].as_f64().unwrap();
            }
        }
    }
    columns
}

/// The marks agree with the annotations: object words are synonyms, an
/// object is hallucinated iff it is not in the image's ground truth, and
/// tokens and sentences are marked from their objects.
fn check_marks(marks: &Value) {
    let image = marks["image_id"].as_u64().unwrap();
    let text = marks["text"].as_str().unwrap();
    let objects = marks["objects"].as_array().unwrap();
    let sentences = marks["sentences"].as_array().unwrap();
    let span =
        |v: &Value| v["start"].as_u64().unwrap() as usize..v["end"].as_u64().unwrap() as usize;
    let mut in_object: BTreeMap<u64, bool> = BTreeMap::new();
    for object in objects {
        let word = text[span(&object["span"])].to_lowercase();
        assert!(OBJECT_WORDS.contains(&word.as_str()), "{word}");
        let hallucinated = !truth(image).contains(object["object"].as_str().unwrap());
        assert_eq!(object["hallucinated"], hallucinated, "{object}");
        for t in object["tokens"].as_array().unwrap() {
            let slot = in_object.entry(t.as_u64().unwrap()).or_insert(false);
            *slot |= hallucinated;
        }
    }
    for (t, mark) in marks["tokens"].as_array().unwrap().iter().enumerate() {
        let want = in_object.get(&(t as u64)).map(|&h| {
            if h {
                "hallucinatory"
            } else {
                "non_hallucinatory"
            }
        });
        assert_eq!(
            mark["object_group"].as_str(),
            want,
            "token {t} of image {image}"
        );
        if let Some(s) = mark["sentence"].as_u64() {
            let range = span(&sentences[s as usize]["span"]);
            let has = objects.iter().any(|o| {
                o["hallucinated"] == true
                    && range.contains(&(o["span"]["start"].as_u64().unwrap() as usize))
            });
            let want = if has {
                "hallucinatory"
            } else {
                "non_hallucinatory"
            };
            assert_eq!(mark["sentence_group"], want);
        }
    }
}

fn check_csv(csv: &str, columns: &Columns) {
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    let header = rows[0].clone();
    assert_eq!(header[0], "i");
    assert_eq!(rows.len(), 11);
    for (i, row) in rows[1..].iter().enumerate() {
        assert_eq!(row[0], (i + 1).to_string());
        for (name, cell) in header[1..].iter().zip(&row[1..]) {
            match columns.get(*name) {
                Some((sums, count, _)) => {
                    let want = sums[i] / *count as f64;
                    let got: f64 = cell.parse().unwrap();
                    assert!(
                        (got - want).abs() < 1e-12,
                        "{name} H_{}: {got} vs {want}",
                        i + 1
                    );
                }
                None => assert_eq!(*cell, "", "{name} has no tokens"),
            }
        }
    }
}

fn check_figure5(out: &Path, columns: &Columns) {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("figure5.json")).unwrap()).unwrap();
    let table = std::fs::read_to_string(out.join("figure5.md")).unwrap();
    for level in ["sentence", "object"] {
        let mut cells = Vec::new();
        for group in ["hallucinatory", "non_hallucinatory"] {
            let got = &json[level][group];
            match columns.get(&format!("{level}_{group}")) {
                Some((_, count, f)) => {
                    let want = f / *count as f64;
                    assert!((got["mean_f"].as_f64().unwrap() - want).abs() < 1e-12);
                    assert_eq!(got["tokens"], *count);
                    cells.push(format!("{want:.4} ({count} tokens)"));
                }
                None => {
                    assert!(got["mean_f"].is_null());
                    cells.push("- (0 tokens)".into());
                }
            }
        }
        let row = format!("| {level} | {} | {} |", cells[0], cells[1]);
        assert!(table.contains(&row), "{row} not in\n{table}");
    }
}

fn check_png(path: &Path) {
    let image = image::open(path).unwrap().to_rgb8();
    assert_eq!(image.dimensions(), (800, 520));
    let has = |rgb: [u8; 3]| image.pixels().any(|p| p.0 == rgb);
    assert!(has([214, 39, 40]), "no hallucinatory (red) line");
    assert!(has([31, 119, 180]), "no non-hallucinatory (blue) line");
}

#[test]
fn run_and_score_write_figures_4_and_5_from_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let shards = run_sharded(dir.path());
    let records: Vec<Value> = shards.iter().flat_map(|p| lines(p)).collect();
    records.iter().for_each(check_record);

    let out = dir.path().join("figures");
    let (first, second) = (s(&shards[0]), s(&shards[1]));
    let score = [
        "score",
        "--records",
        &first,
        "--records",
        &second,
        "--synonyms",
        &fixture("analysis/synonyms.txt"),
        "--instances",
        &fixture("analysis/instances.json"),
        "--coco-captions",
        &fixture("analysis/captions.json"),
        "--out",
        &s(&out),
    ];
    let printed = ok(&score);
    assert!(printed.stdout.contains("3 images"), "{}", printed.stdout);
    let marks = lines(&out.join("marks.jsonl"));
    assert_eq!(marks.len(), 3);
    marks.iter().for_each(check_marks);
    let columns = recompute(&records, &marks);
    // The synthetic annotations make both groups non-empty at the object
    // level whatever the tiny model says ("with" is right, "and" is not).
    assert!(columns.contains_key("object_hallucinatory"), "{columns:?}");
    assert!(
        columns.contains_key("object_non_hallucinatory"),
        "{columns:?}"
    );
    check_csv(
        &std::fs::read_to_string(out.join("figure4.csv")).unwrap(),
        &columns,
    );
    check_figure5(&out, &columns);
    check_png(&out.join("figure4.png"));
    let legend = std::fs::read_to_string(out.join("figure4.md")).unwrap();
    assert!(legend.contains("red, thick line, filled circles: sentence level, hallucinatory"));

    // A file that is not a font is refused before anything is drawn.
    let mut bad_font = score.to_vec();
    let not_a_font = fixture("analysis/synonyms.txt");
    bad_font.extend(["--font", &not_a_font]);
    fails(&bad_font, "is not a TrueType or OpenType font");
}

#[test]
fn heatmap_draws_a_token_beside_the_cls_map() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("heat.png");
    let image = fixture("images/wide_rgb.png");
    let llava = tiny("llava");
    let base = [
        "heatmap",
        "--model",
        &llava,
        "--device",
        "cpu",
        "--image",
        &image,
        "--max-new-tokens",
        "6",
    ];
    let mut by_index = base.to_vec();
    let png_flag = s(&png);
    by_index.extend(["--token-index", "0", "--out", &png_flag]);
    let out = ok(&by_index);
    // Two 336x336 panels (the model's crop) 8 pixels apart.
    let picture = image::open(&png).unwrap().to_rgb8();
    assert_eq!(picture.dimensions(), (336 * 2 + 8, 336));
    assert!(picture.get_pixel(338, 100).0 == [255, 255, 255]);
    assert!(out.stdout.contains("H_1..H_10:"), "{}", out.stdout);
    // The caption's first word is token 0's.
    let caption_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("caption: "))
        .unwrap();
    let caption: String = serde_json::from_str(&caption_line["caption: ".len()..]).unwrap();
    let first_word = caption.split_whitespace().next().unwrap().to_owned();
    let mut by_word = base.to_vec();
    by_word.extend(["--word", &first_word, "--out", &png_flag]);
    let out = ok(&by_word);
    assert!(out.stdout.contains("token 0 ("), "{}", out.stdout);

    let mut too_far = base.to_vec();
    too_far.extend(["--token-index", "99", "--out", &png_flag]);
    fails(&too_far, "only");
    let mut missing = base.to_vec();
    missing.extend(["--word", "zebra", "--out", &png_flag]);
    fails(&missing, "is not in the generated text");
    let instructblip = tiny("instructblip");
    fails(
        &[
            "heatmap",
            "--model",
            &instructblip,
            "--device",
            "cpu",
            "--image",
            &image,
            "--token-index",
            "0",
        ],
        "Q-Former",
    );
}

#[test]
fn instructblip_records_carry_the_query_attention() {
    let dir = tempfile::tempdir().unwrap();
    let images = coco_images(dir.path());
    let records = dir.path().join("blip.jsonl");
    let (model, images, records_flag) = (tiny("instructblip"), s(&images), s(&records));
    ok(&[
        "run",
        "--images",
        &images,
        "--records",
        &records_flag,
        "--model",
        &model,
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
        "--num-images",
        "1",
    ]);
    let record = &lines(&records)[0];
    assert_eq!(record["measures"], "raw_attention");
    assert!(record["note"].as_str().unwrap().contains("Q-Former"));
    for token in record["tokens"].as_array().unwrap() {
        assert!(token.get("h").is_none());
        // The full branch's attention over InstructBLIP's 8 query tokens
        // (a share of the whole attention, which sums to 1).
        let map = token["attention"].as_array().unwrap();
        assert_eq!(map.len(), 8);
        let total: f64 = map.iter().map(|v| v.as_f64().unwrap()).sum();
        assert!(total > 0.0 && total <= 1.0 + 1e-5);
    }
    // A different capture refuses to append to these records.
    fails(
        &[
            "run",
            "--images",
            &images,
            "--records",
            &records_flag,
            "--model",
            &model,
            "--device",
            "cpu",
            "--max-new-tokens",
            "4",
            "--num-images",
            "1",
            "--layers",
            "0",
        ],
        "other settings",
    );
    fails(
        &[
            "score",
            "--records",
            &records_flag,
            "--synonyms",
            &fixture("analysis/synonyms.txt"),
            "--instances",
            &fixture("analysis/instances.json"),
            "--out",
            &s(&dir.path().join("f")),
        ],
        "no record carries H_i and F",
    );
}

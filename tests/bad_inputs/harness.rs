//! How the bad-input suite runs the commands: the built example binaries,
//! from a fresh working directory, under a time limit, with panics made
//! loud (`RUST_BACKTRACE=1`), and what every failure must look like.
//! Plus the breakages: copies of the fixture models with one thing broken.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Longer than any case needs in a debug build; a hang fails the test.
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// Text that must never reach a user.
const FORBIDDEN: &[&str] = &[
    "panicked at",
    "RUST_BACKTRACE",
    "stack backtrace",
    "Stack backtrace",
    "Exception raised from",
    "frame #",
    "Internal torch error",
    "c10::",
];

/// A fixture directory under `tests/fixtures`.
pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// A small valid image.
pub fn image() -> PathBuf {
    fixture("images/small_grey.png")
}

/// An example binary built next to this test (`target/<profile>/examples`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    profile_dir.join("examples").join(name)
}

/// A run's outcome.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything printed to stdout.
    pub stdout: String,
    /// Everything printed to stderr.
    pub stderr: String,
    /// Files the command left in its working directory.
    pub left_behind: Vec<PathBuf>,
}

/// Runs example `bin` with `args` in a fresh empty working directory.
pub fn run<I, S>(bin: &str, args: I) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let workdir = TempDir::new().expect("temp dir");
    let out_path = workdir.path().join(".stdout");
    let err_path = workdir.path().join(".stderr");
    let stdout = fs::File::create(&out_path).expect("stdout file");
    let stderr = fs::File::create(&err_path).expect("stderr file");
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut child = Command::new(example(bin))
        .args(&args)
        .current_dir(workdir.path())
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin} (built by `cargo test`?): {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{bin} {args:?} ran past {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    let left_behind = fs::read_dir(workdir.path())
        .expect("read workdir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p != &out_path && p != &err_path)
        .collect();
    Outcome {
        code: status.code(),
        stdout: read(&out_path),
        stderr: read(&err_path),
        left_behind,
    }
}

impl Outcome {
    /// Asserts a clean failure: a non-zero exit (not a signal), every
    /// `needle` in stderr, nothing from [`FORBIDDEN`], no file left.
    /// `BAD_INPUTS_SHOW=1` prints every message (to review their wording).
    pub fn fails_with(&self, needles: &[&str]) -> &Self {
        let shown = format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        if std::env::var_os("BAD_INPUTS_SHOW").is_some() {
            eprintln!("---- {needles:?}\n{}", self.stderr);
        }
        match self.code {
            Some(0) => panic!("exited 0 on bad input\n{shown}"),
            None => panic!("killed by a signal\n{shown}"),
            Some(101) => panic!("exit code 101 is a Rust panic\n{shown}"),
            Some(_) => {}
        }
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks `{needle}`\n{shown}"
            );
        }
        for bad in FORBIDDEN {
            assert!(!self.stderr.contains(bad), "stderr holds `{bad}`\n{shown}");
            assert!(!self.stdout.contains(bad), "stdout holds `{bad}`\n{shown}");
        }
        assert!(
            self.left_behind.is_empty(),
            "left behind {:?}",
            self.left_behind
        );
        self
    }
}

/// `generate` on `model` and the image with a short prompt, plus `extra`
/// (on the CPU and for two tokens unless `extra` says otherwise).
pub fn generate_on(model: &Path, image: &Path, extra: &[&str]) -> Outcome {
    let mut args: Vec<OsString> = vec![
        "--model".into(),
        model.into(),
        "--image".into(),
        image.into(),
        "--prompt".into(),
        "Is there a cat?".into(),
    ];
    for (flag, value) in [("--device", "cpu"), ("--max-new-tokens", "2")] {
        if !extra.iter().any(|a| a.starts_with(flag)) {
            args.extend([flag.into(), value.into()]);
        }
    }
    args.extend(extra.iter().map(OsString::from));
    run("generate", args)
}

/// A copy of a fixture model, to break one thing of.
pub struct Model {
    dir: TempDir,
}

impl Model {
    /// The tiny LLaVA-1.5 (hub layout, one safetensors file).
    pub fn llava() -> Self {
        Self::copy("llava/models/hub")
    }

    /// The tiny InstructBLIP (hub layout, two shards and an index).
    pub fn instructblip() -> Self {
        Self::copy("instructblip/models/hub")
    }

    /// The tiny LLaVA-NeXT (hub layout, anyres tiles).
    pub fn llava_next() -> Self {
        Self::copy("llava_next/models/hub")
    }

    fn copy(from: &str) -> Self {
        let dir = TempDir::new().expect("temp dir");
        copy_dir(&fixture(from), dir.path());
        Self { dir }
    }

    /// The model directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A file of the model directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Edits a JSON file of the model in place.
    pub fn edit_json(&self, name: &str, edit: impl FnOnce(&mut Value)) -> &Self {
        let path = self.file(name);
        let mut value: Value =
            serde_json::from_slice(&fs::read(&path).expect("read json")).expect("fixture JSON");
        edit(&mut value);
        fs::write(&path, serde_json::to_vec_pretty(&value).expect("json")).expect("write json");
        self
    }

    /// Sets `pointer` (a JSON pointer such as `/vision_config/image_size`)
    /// in `config.json`.
    pub fn set_config(&self, pointer: &str, new: Value) -> &Self {
        self.edit_json("config.json", |v| {
            *v.pointer_mut(pointer)
                .unwrap_or_else(|| panic!("config.json has no {pointer}")) = new;
        })
    }

    /// Removes `key` from the object at `pointer` ("" for the top level) of
    /// `config.json`.
    pub fn remove_config(&self, pointer: &str, key: &str) -> &Self {
        self.edit_json("config.json", |v| {
            let object = v.pointer_mut(pointer).and_then(Value::as_object_mut);
            object.expect("an object").remove(key).expect("the key");
        })
    }

    /// Replaces a file's bytes.
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> &Self {
        fs::write(self.file(name), bytes).expect("write");
        self
    }

    /// Deletes a file.
    pub fn remove(&self, name: &str) -> &Self {
        fs::remove_file(self.file(name)).expect("remove");
        self
    }

    /// Rewrites a safetensors file's JSON header (the data is kept; the
    /// header is re-padded to 8 bytes).
    pub fn edit_header(&self, name: &str, edit: impl FnOnce(&mut Value)) -> &Self {
        let bytes = fs::read(self.file(name)).expect("read safetensors");
        let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let mut header: Value = serde_json::from_slice(&bytes[8..8 + len]).expect("header");
        edit(&mut header);
        let mut text = serde_json::to_vec(&header).expect("json");
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&text);
        out.extend_from_slice(&bytes[8 + len..]);
        self.write(name, out)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).expect("fixture dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            fs::create_dir(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A PNG whose header claims `width x height` pixels, with no pixel data:
/// a decompression bomb's header in 77 bytes.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    // One IDAT holding an empty zlib stream: decoders look for it before
    // they report the size.
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

/// The CRC-32 PNG chunks carry (ISO 3309, reflected 0xEDB88320).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

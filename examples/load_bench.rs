//! Load benchmark: damro-nn's memory-mapped `Checkpoint`/`Weights` against
//! tch's readers (`Tensor::read_safetensors`, `VarStore::read_safetensors`)
//! on a generated bf16 safetensors checkpoint, loaded as bf16 on the CPU.
//!
//! Run with: `scripts/libtorch-env.sh cargo run --release --example load_bench -- [--gib 1.0] [--dir DIR]`
//!
//! The checkpoint (LLaMA-shaped `[4096, 4096]` bf16 matrices, 1 GiB by
//! default) is written to a temp dir (or `--dir`) and deleted at the end.
//! Each reader runs in its own child process (`--reader NAME DIR`), so its
//! peak RSS (`VmHWM` of `/proc/self/status`) is its own: once with the file
//! evicted from the page cache (`posix_fadvise(DONTNEED)`, "cold") and once
//! right after ("warm"). The table it prints is what BENCHMARKS.md records.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use damro::nn::{Checkpoint, KeyMap, LoadOptions, Weights};
use tch::{Device, Kind, Tensor};

const ROWS: usize = 4096;
const COLS: usize = 4096;
const READERS: [&str; 3] = ["damro", "tch-tensor", "tch-varstore"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--reader") {
        let reader = args.get(i + 1).context("--reader NAME DIR")?;
        let dir = args.get(i + 2).context("--reader NAME DIR")?;
        return run_reader(reader, Path::new(dir));
    }
    let gib: f64 = flag(&args, "--gib").map_or(Ok(1.0), |v| v.parse())?;
    let tmp;
    let dir = match flag(&args, "--dir") {
        Some(d) => PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("model.safetensors");
    let start = Instant::now();
    let bytes = write_checkpoint(&file, gib)?;
    eprintln!(
        "wrote {} ({:.3} GB) in {:.1} s",
        file.display(),
        bytes as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );

    println!(
        "| reader | page cache | load time (s) | peak RSS (GB) | peak RSS / bytes loaded | RSS before load (GB) | (peak - before) / bytes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for reader in READERS {
        for cache in ["cold", "warm"] {
            if cache == "cold" {
                evict(&file)?;
            }
            let out = Command::new(std::env::current_exe()?)
                .args(["--reader", reader])
                .arg(&dir)
                .output()?;
            if !out.status.success() {
                bail!("{reader}: {}", String::from_utf8_lossy(&out.stderr));
            }
            let line = String::from_utf8(out.stdout)?;
            let v: serde_json::Value = serde_json::from_str(line.trim())?;
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            let loaded = f("bytes");
            println!(
                "| {reader} | {cache} | {:.2} | {:.3} | {:.2}x | {:.3} | {:.2}x |",
                f("seconds"),
                f("peak") / 1e9,
                f("peak") / loaded,
                f("before") / 1e9,
                (f("peak") - f("before")) / loaded,
            );
        }
    }
    if flag(&args, "--dir").is_some() {
        std::fs::remove_file(&file)?;
    }
    Ok(())
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).map(String::as_str)
}

/// Writes `gib` GiB of `[ROWS, COLS]` bf16 tensors (pseudo-random bytes)
/// as one safetensors file, streaming; returns the tensor bytes.
fn write_checkpoint(path: &Path, gib: f64) -> Result<usize> {
    let per = ROWS * COLS * 2;
    let count = ((gib * (1u64 << 30) as f64) / per as f64).ceil() as usize;
    let mut header = serde_json::Map::new();
    for i in 0..count {
        header.insert(
            format!("model.layers.{i}.mlp.weight"),
            serde_json::json!({
                "dtype": "BF16",
                "shape": [ROWS, COLS],
                "data_offsets": [i * per, (i + 1) * per],
            }),
        );
    }
    let mut text = serde_json::to_string(&header)?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all(&(text.len() as u64).to_le_bytes())?;
    file.write_all(text.as_bytes())?;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut chunk = vec![0u8; per];
    for _ in 0..count {
        for pair in chunk.chunks_exact_mut(2) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // A bf16 in [-2, 2): sign, exponent 126..127, random mantissa.
            let bits = 0x3f00 | ((state >> 56) as u16 & 0x80ff);
            pair.copy_from_slice(&bits.to_le_bytes());
        }
        file.write_all(&chunk)?;
    }
    file.flush()?;
    file.get_ref().sync_all()?;
    Ok(count * per)
}

/// Drops the file's pages from the page cache.
fn evict(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: a valid open descriptor; advice only, no memory is touched.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!("posix_fadvise failed: {rc}");
    }
    Ok(())
}

/// `VmHWM` and `VmRSS` of this process, in bytes.
fn memory() -> Result<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} not in /proc/self/status"))?;
        let kb: f64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb * 1024.0)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

fn run_reader(reader: &str, dir: &Path) -> Result<()> {
    // Start libtorch before the baseline.
    let _warm = Tensor::f_zeros([1], (Kind::BFloat16, Device::Cpu))?;
    let (_, before) = memory()?;
    let file = dir.join("model.safetensors");
    let start = Instant::now();
    let tensors: Vec<Tensor> = match reader {
        "damro" => {
            let checkpoint = Checkpoint::open(dir, &KeyMap::identity())?;
            let specs: Vec<(String, Vec<i64>)> = checkpoint
                .tensors()
                .map(|(n, i)| (n.to_string(), i.shape.iter().map(|&d| d as i64).collect()))
                .collect();
            let options = LoadOptions {
                kind: Kind::BFloat16,
                device: Device::Cpu,
            };
            let w = Weights::new(checkpoint, options)?;
            let tensors = specs
                .iter()
                .map(|(name, shape)| w.get(name, shape))
                .collect::<damro::nn::Result<Vec<_>>>()?;
            w.finish()?;
            tensors
        }
        "tch-tensor" => Tensor::read_safetensors(&file)?
            .into_iter()
            .map(|(_, t)| t)
            .collect(),
        "tch-varstore" => {
            let header = Checkpoint::open(dir, &KeyMap::identity())?;
            let mut vs = tch::nn::VarStore::new(Device::Cpu);
            vs.set_kind(Kind::BFloat16);
            let root = vs.root();
            let mut tensors = Vec::new();
            for (name, info) in header.tensors() {
                let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
                let mut parts: Vec<&str> = name.split('.').collect();
                let leaf = parts.pop().context("empty name")?;
                let path = parts.iter().fold(root.clone(), |p, s| p.sub(*s));
                tensors.push(path.zeros(leaf, &shape));
            }
            drop(header);
            tch::no_grad(|| vs.read_safetensors(&file))?;
            tensors
        }
        other => bail!("unknown reader {other}"),
    };
    let seconds = start.elapsed().as_secs_f64();
    let bytes: usize = tensors
        .iter()
        .map(|t| t.numel() * t.kind().elt_size_in_bytes())
        .sum();
    let (peak, _) = memory()?;
    println!(
        "{}",
        serde_json::json!({
            "reader": reader,
            "bytes": bytes,
            "seconds": seconds,
            "before": before,
            "peak": peak,
        })
    );
    Ok(())
}

//! Build script shared by every damro-rs package (each `Cargo.toml` points
//! its `build` key here, so the logic is written once).
//!
//! rustc links with `--as-needed`, which drops `libtorch_cuda.so` from the
//! binaries because no symbol of it is referenced directly; libtorch then
//! never finds CUDA at run time. For every binary of the package (examples,
//! benches, unit and integration test harnesses) this script asks the linker
//! to keep `libtorch_cuda.so` (when the libtorch has it) and `libtorch.so`,
//! and records an rpath to libtorch's `lib/` so the binaries run without
//! `LD_LIBRARY_PATH`.
//!
//! The libtorch directory comes from `torch-sys` (`DEP_TCH_LIBTORCH_LIB`),
//! which is why each package depends on `torch-sys` directly.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=DAMRO_LIBTORCH_VERSION=unknown");
        println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB is not set: binaries are linked without libtorch_cuda"
        );
        return;
    };
    let lib_dir = Path::new(&lib);
    let version = libtorch_version(lib_dir).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=DAMRO_LIBTORCH_VERSION={version}");
    let mut keep = Vec::new();
    for name in ["torch_cuda", "torch"] {
        if lib_dir.join(format!("lib{name}.so")).exists() {
            keep.push(format!("-l{name}"));
        }
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if !keep.is_empty() {
        println!(
            "cargo:rustc-link-arg=-Wl,-L{lib},--no-as-needed,{},--as-needed",
            keep.join(",")
        );
    }
}

/// The libtorch version: `version.py` of a Python torch install, or the
/// `build-version` file of a standalone libtorch.
fn libtorch_version(lib_dir: &Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("build-version")) {
        return Some(text.trim().to_string());
    }
    let text = std::fs::read_to_string(root.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches(['\'', '"']).to_string())
}

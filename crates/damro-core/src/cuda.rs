//! Making libtorch's CUDA backend available to any binary, and checking a
//! requested device in one place.
//!
//! rustc links with `--as-needed`, so a binary whose crate has no build
//! script of its own (any crate that merely depends on `damro`) drops
//! `libtorch_cuda.so`: libtorch then reports no GPU. [`load_backend`] opens
//! `libtorch_cuda.so` from the directory the process loaded libtorch from,
//! which registers the CUDA backend exactly as linking it would have.
//! [`check_device`] calls it, so every command and loader that goes
//! through [`check_device`] (all of this workspace's do) finds the GPU
//! without any link flag.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tch::Device;

use crate::{Error, Result};

/// What [`load_backend`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// `libtorch_cuda.so` is loaded (it was linked, or it was opened now).
    Loaded(PathBuf),
    /// The libtorch in use has no `libtorch_cuda.so` (a CPU-only build).
    CpuOnly,
    /// libtorch's directory could not be found in this process's mappings,
    /// or opening the library failed (the reason).
    Unavailable(String),
}

/// Loads libtorch's CUDA backend into the process once (later calls return
/// the first result). Safe to call on machines without a GPU: the library
/// loads, and libtorch then reports no device.
pub fn load_backend() -> &'static Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    BACKEND.get_or_init(open_backend)
}

fn open_backend() -> Backend {
    // Make sure libtorch itself is mapped before reading the mappings.
    let _ = tch::Cuda::is_available();
    let maps = match std::fs::read_to_string("/proc/self/maps") {
        Ok(m) => m,
        Err(e) => return Backend::Unavailable(format!("cannot read /proc/self/maps: {e}")),
    };
    if let Some(path) = mapped_library(&maps, "libtorch_cuda.so") {
        return Backend::Loaded(path);
    }
    let Some(cpu) = mapped_library(&maps, "libtorch_cpu.so") else {
        return Backend::Unavailable("libtorch_cpu.so is not mapped in this process".into());
    };
    let Some(cuda) = cpu.parent().map(|dir| dir.join("libtorch_cuda.so")) else {
        return Backend::Unavailable(format!("{} has no parent directory", cpu.display()));
    };
    if !cuda.exists() {
        return Backend::CpuOnly;
    }
    match open_global(&cuda) {
        Ok(()) => Backend::Loaded(cuda),
        Err(reason) => Backend::Unavailable(reason),
    }
}

/// The path of a mapped shared library whose file name is `name`.
fn mapped_library(maps: &str, name: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(Path::new)
        .find(|path| {
            path.file_name()
                .is_some_and(|f| f.as_bytes() == name.as_bytes())
        })
        .map(Path::to_path_buf)
}

fn open_global(path: &Path) -> std::result::Result<(), String> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the
    // call; the handle is deliberately never closed (libtorch's backend
    // must stay loaded for the life of the process).
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local NUL-terminated message or null.
        let message = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                String::from("unknown error")
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(format!("dlopen {}: {message}", path.display()));
    }
    Ok(())
}

/// The first GPU when there is one (after loading the CUDA backend), else
/// the CPU.
pub fn cuda_if_available() -> Device {
    load_backend();
    Device::cuda_if_available()
}

/// Checks that `device` can be used: a CUDA device needs the CUDA backend
/// and a GPU with that ordinal. Every loader and command calls this before
/// touching the device, so a missing GPU is an error that says so rather
/// than a libtorch exception.
///
/// # Errors
/// [`Error::Invalid`] naming the device and what is available.
pub fn check_device(device: Device) -> Result<()> {
    let Device::Cuda(ordinal) = device else {
        return match device {
            Device::Cpu => Ok(()),
            other => Err(Error::invalid(
                "device",
                format!("{other:?} is not supported (expected cpu or cuda[:N])"),
            )),
        };
    };
    let backend = load_backend();
    let count = tch::Cuda::device_count();
    if (ordinal as i64) < count {
        return Ok(());
    }
    let why = match backend {
        Backend::Loaded(_) if count == 0 => "no GPU is visible to libtorch".to_string(),
        Backend::Loaded(_) => format!("only {count} GPU(s) are visible"),
        Backend::CpuOnly => "the libtorch in use is a CPU-only build".to_string(),
        Backend::Unavailable(reason) => format!("the CUDA backend could not be loaded: {reason}"),
    };
    Err(Error::invalid(
        "device",
        format!("cuda:{ordinal} was requested but {why}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libraries_in_a_maps_listing() {
        let maps = "7f00-7f01 r--p 00000000 08:01 12 /opt/torch/lib/libtorch_cpu.so\n\
                    7f02-7f03 r-xp 00000000 08:01 13 /opt/torch/lib/libc10.so\n\
                    7f04-7f05 rw-p 00000000 00:00 0 \n";
        assert_eq!(
            mapped_library(maps, "libtorch_cpu.so"),
            Some(PathBuf::from("/opt/torch/lib/libtorch_cpu.so"))
        );
        assert_eq!(mapped_library(maps, "libtorch_cuda.so"), None);
        // A name that merely ends like the library does not match.
        assert_eq!(mapped_library(maps, "torch_cpu.so"), None);
    }

    #[test]
    fn the_cpu_is_always_usable_and_a_missing_gpu_is_an_error() {
        assert!(check_device(Device::Cpu).is_ok());
        let count = tch::Cuda::device_count();
        let err = check_device(Device::Cuda(count as usize)).unwrap_err();
        assert!(err.to_string().contains("was requested"), "{err}");
    }
}

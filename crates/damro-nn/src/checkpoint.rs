//! A HuggingFace model directory's safetensors weights, memory-mapped.
//!
//! Single-file (`model.safetensors`) and sharded
//! (`model.safetensors.index.json` + shards) checkpoints are both supported.
//! Files are mapped, never read whole: a tensor's bytes are copied once, to
//! its target device and dtype, when a model asks for it (see
//! [`crate::Weights`]). Every header is validated when the checkpoint is
//! opened, so a truncated or corrupt file fails here with a typed error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::{Error, KeyMap, Result};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Reads and deserialises a JSON file; the error names the file and, through
/// serde, the offending field.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Where one tensor lives and what it is.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The name as written in the file (before the key map).
    pub disk_name: String,
    /// Element type on disk.
    pub dtype: Dtype,
    /// Shape on disk.
    pub shape: Vec<usize>,
    file: usize,
    start: usize,
    end: usize,
}

#[derive(Debug)]
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
}

/// The memory-mapped weights of one model directory, under canonical names.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorInfo>,
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: HashMap<String, String>,
}

/// A parsed `model.safetensors.index.json`: which shard holds each tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIndex {
    /// Tensor name (as on disk) to shard file name.
    pub weight_map: HashMap<String, String>,
}

impl ShardIndex {
    /// Parses an index file's text; `path` is named in errors.
    ///
    /// # Errors
    /// [`Error::Json`] for text that is not an index, [`Error::BadShardName`]
    /// for a shard name that is not a plain file name (a path with
    /// separators or `..` would reach outside the model directory).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let file: IndexFile = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        for shard in file.weight_map.values() {
            let plain = Path::new(shard).file_name().and_then(|n| n.to_str()) == Some(shard);
            if !plain {
                return Err(Error::BadShardName {
                    index: path.to_path_buf(),
                    shard: shard.clone(),
                });
            }
        }
        Ok(Self {
            weight_map: file.weight_map,
        })
    }

    /// The distinct shard file names, sorted.
    pub fn shards(&self) -> BTreeSet<&str> {
        self.weight_map.values().map(String::as_str).collect()
    }
}

/// Reads the header of a safetensors file held in `bytes` (a mapped file):
/// every tensor's name, dtype, shape and byte range, plus where the data
/// starts. Every range is checked against the data the file holds, so a
/// truncated file or a header claiming more than the file has fails here.
///
/// # Errors
/// [`Error::Safetensors`] naming `path`.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<(usize, Vec<TensorInfo>)> {
    let (header_len, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let data_start = 8 + header_len;
    let data_len = bytes.len().saturating_sub(data_start);
    let mut infos = Vec::new();
    for (disk_name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        if start > end || end > data_len {
            return Err(Error::Safetensors {
                path: path.to_path_buf(),
                reason: format!("tensor {disk_name} lies outside the file"),
            });
        }
        infos.push(TensorInfo {
            disk_name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            file: 0,
            start,
            end,
        });
    }
    Ok((data_start, infos))
}

/// Maps one weights file.
fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the map is read-only and lives as long as the checkpoint;
    // tensors copy out of it before they are returned.
    unsafe { Mmap::map(&file) }.map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// An index file's path and content.
type IndexAt = (PathBuf, ShardIndex);

/// The weight files of `dir` (one, or the index's shards) and the index.
fn weight_files(dir: &Path) -> Result<(Vec<PathBuf>, Option<IndexAt>)> {
    let index_path = dir.join(INDEX_FILE);
    let single = dir.join(SINGLE_FILE);
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|source| Error::Io {
            path: index_path.clone(),
            source,
        })?;
        let index = ShardIndex::parse(&index_path, &text)?;
        let shards: Vec<PathBuf> = index.shards().into_iter().map(|s| dir.join(s)).collect();
        if let Some(shard) = shards.iter().find(|shard| !shard.is_file()) {
            return Err(Error::ShardMissing {
                index: index_path,
                shard: shard.clone(),
            });
        }
        Ok((shards, Some((index_path, index))))
    } else if single.is_file() {
        Ok((vec![single], None))
    } else if dir.is_dir() {
        Err(Error::NoWeights {
            dir: dir.to_path_buf(),
        })
    } else {
        Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        })
    }
}

/// Checks that every tensor the index names is in the shard it names.
fn check_index(
    dir: &Path,
    index_path: PathBuf,
    index: &ShardIndex,
    disk_names: &HashMap<String, PathBuf>,
) -> Result<()> {
    let mut absent: Vec<String> = index
        .weight_map
        .iter()
        .filter(|(name, shard)| disk_names.get(*name) != Some(&dir.join(shard)))
        .map(|(name, _)| name.clone())
        .collect();
    if absent.is_empty() {
        return Ok(());
    }
    absent.sort();
    Err(Error::IndexNamesAbsent {
        index: index_path,
        names: absent,
    })
}

impl Checkpoint {
    /// Opens the safetensors weights of `dir`, renaming every tensor through
    /// `key_map`.
    ///
    /// # Errors
    /// A missing directory or weights, an index naming a missing shard or a
    /// tensor its shard lacks, a corrupt or truncated header, two names
    /// mapping to one canonical name; each error names the file.
    pub fn open(dir: impl AsRef<Path>, key_map: &KeyMap) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let (shards, index) = weight_files(&dir)?;
        let mut files = Vec::with_capacity(shards.len());
        let mut tensors = BTreeMap::new();
        let mut disk_names: HashMap<String, PathBuf> = HashMap::new();
        for path in shards {
            let mmap = map_file(&path)?;
            let (data_start, infos) = parse_header(&path, &mmap)?;
            for mut entry in infos {
                entry.file = files.len();
                let canonical = key_map.canonical(&entry.disk_name);
                disk_names.insert(entry.disk_name.clone(), path.clone());
                let disk_name = entry.disk_name.clone();
                if let Some(previous) = tensors.insert(canonical.clone(), entry) {
                    return Err(Error::DuplicateTensor {
                        canonical,
                        first: previous.disk_name,
                        second: disk_name,
                    });
                }
            }
            files.push(MappedFile {
                path,
                mmap,
                data_start,
            });
        }
        if let Some((index_path, index)) = index {
            check_index(&dir, index_path, &index, &disk_names)?;
        }
        Ok(Self {
            dir,
            files,
            tensors,
        })
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Canonical names and infos of every tensor, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorInfo)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The info of one tensor by canonical name.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Total bytes of all tensors on disk.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.end - t.start).sum()
    }

    /// Copies one tensor to `device`, cast to `kind`. Floating-point tensors
    /// are cast straight from their on-disk type (a bf16 tensor loaded as
    /// bf16 is never widened on the way).
    pub fn load(&self, name: &str, kind: Option<Kind>, device: Device) -> Result<Tensor> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::WeightsMismatch {
                dir: self.dir.clone(),
                problems: vec![format!("missing tensor {name}")],
            })?;
        let disk_kind = kind_of(info.dtype).ok_or_else(|| Error::WeightsMismatch {
            dir: self.dir.clone(),
            problems: vec![format!(
                "tensor {name} has unsupported dtype {:?}",
                info.dtype
            )],
        })?;
        let file = &self.files[info.file];
        let (start, end) = (file.data_start + info.start, file.data_start + info.end);
        let bytes = file
            .mmap
            .get(start..end)
            .ok_or_else(|| Error::Safetensors {
                path: file.path.clone(),
                reason: format!("tensor {} lies outside the file", info.disk_name),
            })?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let target = kind.unwrap_or(disk_kind);
        let element = (info.dtype.bitsize() / 8).max(1);
        let on_cpu = if (bytes.as_ptr() as usize).is_multiple_of(element) {
            let strides = contiguous_strides(&shape);
            // SAFETY: `bytes` holds exactly prod(shape) elements of
            // `disk_kind` (validated by the safetensors header check), is
            // suitably aligned, and outlives this borrowed view, which is
            // copied below before this function returns.
            unsafe {
                Tensor::f_from_blob(bytes.as_ptr(), &shape, &strides, disk_kind, Device::Cpu)?
            }
        } else {
            Tensor::f_from_data_size(bytes, &shape, disk_kind)?
        };
        let loaded = on_cpu.f_to_device_(device, target, false, true)?;
        drop(on_cpu);
        // The copy is done: unmap the file pages just read, so they stop
        // counting towards this process's resident memory (they stay in the
        // page cache). Without this, loading a whole checkpoint peaks at
        // twice its size (the copies plus the mapped file).
        // SAFETY: the map is a read-only file mapping and no tensor views it
        // any more (`on_cpu` was a copy source only); dropped pages are
        // read again from the file if touched later. The advice is only a
        // hint, so its failure is ignored.
        let _ = unsafe {
            file.mmap
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
        };
        Ok(loaded)
    }
}

fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// The libtorch kind of a safetensors dtype, where libtorch has one.
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

//! Weight loading from safetensors: one file or a sharded set (`model.safetensors.index.json`),
//! memory-mapped. A tensor comes out as a [`CheckpointTensor`]: a view of its bytes inside the
//! mapping, in the file's dtype (f32, bf16 or f16), checked against the shape the configuration
//! implies. Nothing is copied or widened here; each backend converts the bytes into its own layout
//! when it is built. Each error names the file and the tensor, so a broken download is diagnosed
//! without a debugger.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The float dtypes Glimpse loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    BF16,
    F16,
}

impl WeightDtype {
    pub(crate) fn of(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(Self::F32),
            Dtype::BF16 => Some(Self::BF16),
            Dtype::F16 => Some(Self::F16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::BF16 | Self::F16 => 2,
        }
    }

    /// Appends little-endian `bytes` of this dtype to `out` as f32 (bf16 and f16 widen exactly).
    pub(crate) fn widen_into(self, bytes: &[u8], out: &mut Vec<f32>) {
        let words = bytes.chunks_exact(self.size_bytes());
        match self {
            Self::F32 => out.extend(words.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            Self::BF16 => {
                out.extend(words.map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()))
            }
            Self::F16 => out.extend(words.map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())),
        }
    }
}

/// One tensor of a checkpoint as the file stores it: name, dtype, shape (row-major) and a view of
/// its bytes in the memory-mapped file, which it keeps mapped. Cloning shares the mapping.
#[derive(Clone)]
pub struct CheckpointTensor {
    name: String,
    dtype: WeightDtype,
    shape: Vec<usize>,
    file: Arc<Mmap>,
    bytes: Range<usize>,
}

impl std::fmt::Debug for CheckpointTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {:?}", self.name, self.dtype, self.shape)
    }
}

impl CheckpointTensor {
    /// The tensor's name in the checkpoint (`model.layers.0.self_attn.q_proj.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dtype(&self) -> WeightDtype {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The stored little-endian bytes, `num_elements · dtype.size_bytes()` of them.
    pub fn bytes(&self) -> &[u8] {
        &self.file[self.bytes.clone()]
    }

    /// The whole tensor widened to f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.num_elements());
        self.dtype.widen_into(self.bytes(), &mut out);
        out
    }

    /// Rows `rows` of the leading axis widened to f32 into `out` (cleared first), so a large
    /// matrix can be read a slice at a time.
    pub fn rows_to_f32(&self, rows: Range<usize>, out: &mut Vec<f32>) {
        let row_bytes = self.shape[1..].iter().product::<usize>() * self.dtype.size_bytes();
        out.clear();
        let bytes = self.bytes();
        self.dtype
            .widen_into(&bytes[rows.start * row_bytes..rows.end * row_bytes], out);
    }
}

/// The safetensors files of one model folder, memory-mapped, with an index from tensor name to
/// where its bytes are.
pub struct WeightFiles {
    files: Vec<MappedFile>,
    location: HashMap<String, Location>,
    /// What error messages call the set of files when a tensor is missing from all of them.
    description: PathBuf,
}

struct MappedFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
}

/// A tensor's file, header entry and bytes within the mapping.
struct Location {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Range<usize>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl WeightFiles {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`, in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| EngineError::io(&index_path, e))?;
            let index: ShardIndex = serde_json::from_str(&text).map_err(|e| {
                EngineError::config(&index_path, format!("malformed shard index: {e}"))
            })?;
            let mut shard_names: Vec<&String> = index.weight_map.values().collect();
            shard_names.sort();
            shard_names.dedup();
            let paths: Vec<PathBuf> = shard_names.iter().map(|name| dir.join(name)).collect();
            Self::from_paths(&paths, index_path)
        } else if single.exists() {
            Self::from_paths(std::slice::from_ref(&single), single.clone())
        } else {
            Err(EngineError::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the model folder",
                ),
            ))
        }
    }

    fn from_paths(paths: &[PathBuf], description: PathBuf) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut location = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
            // SAFETY: the mapping is read-only and lives as long as the last `CheckpointTensor`
            // holding it; like every mmap-based loader we assume the model files are not
            // truncated while the engine runs.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
            for entry in read_header(path, &mmap)? {
                location.insert(
                    entry.name,
                    Location {
                        file: i,
                        dtype: entry.dtype,
                        shape: entry.shape,
                        bytes: entry.bytes,
                    },
                );
            }
            files.push(MappedFile {
                path: path.clone(),
                mmap: Arc::new(mmap),
            });
        }
        Ok(Self {
            files,
            location,
            description,
        })
    }

    /// Whether any file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// The names of every tensor in the files, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    /// The stored shape of tensor `name`, if any file holds it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.location.get(name).map(|at| at.shape.as_slice())
    }

    /// What error messages call this set of files (`model.safetensors`, or the shard index).
    pub fn description(&self) -> &Path {
        &self.description
    }

    /// Tensor `name`, checked to have `expected_shape` and a float dtype Glimpse loads.
    pub fn tensor(&self, name: &str, expected_shape: &[usize]) -> Result<CheckpointTensor> {
        let at = self
            .location
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor {
                path: self.description.clone(),
                tensor: name.to_string(),
            })?;
        let file = &self.files[at.file];
        let dtype = check(&file.path, name, at.dtype, &at.shape, expected_shape)?;
        Ok(CheckpointTensor {
            name: name.to_string(),
            dtype,
            shape: at.shape.clone(),
            file: Arc::clone(&file.mmap),
            bytes: at.bytes.clone(),
        })
    }
}

/// One tensor as a safetensors header lists it, with its byte range in the whole file.
pub(crate) struct HeaderEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Range<usize>,
}

/// The tensors listed by the header of `file`, the bytes of the safetensors file at `path`.
/// `safetensors` checks that the ranges tile the data section exactly and match each shape and
/// dtype, so every returned range lies inside `file`.
///
/// Fails with [`EngineError::Safetensors`] naming `path` when the header is malformed.
pub(crate) fn read_header(path: &Path, file: &[u8]) -> Result<Vec<HeaderEntry>> {
    let (header_len, metadata) =
        SafeTensors::read_metadata(file).map_err(|e| EngineError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    // The data section follows the 8-byte header length and the JSON header.
    let data_start = 8 + header_len;
    Ok(metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (begin, end) = info.data_offsets;
            HeaderEntry {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                bytes: data_start + begin..data_start + end,
            }
        })
        .collect())
}

/// Checks that tensor `name` of the safetensors file at `path` has `expected_shape` and widens it
/// to f32. Lookahead module files read through it and model weights through the same [`check`], so
/// both accept the same dtypes and report a wrong shape or dtype the same way.
pub(crate) fn read_f32(
    path: &Path,
    name: &str,
    view: &TensorView<'_>,
    expected_shape: &[usize],
) -> Result<Vec<f32>> {
    let dtype = check(path, name, view.dtype(), view.shape(), expected_shape)?;
    let mut data = Vec::with_capacity(view.data().len() / dtype.size_bytes());
    dtype.widen_into(view.data(), &mut data);
    Ok(data)
}

/// The tensor's dtype, if its shape is `expected_shape` and its dtype one Glimpse loads; otherwise
/// an error naming the file, the tensor and what was found.
fn check(
    path: &Path,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    expected_shape: &[usize],
) -> Result<WeightDtype> {
    if shape != expected_shape {
        return Err(EngineError::TensorShape {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            expected: expected_shape.to_vec(),
            actual: shape.to_vec(),
        });
    }
    WeightDtype::of(dtype).ok_or_else(|| EngineError::TensorDtype {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        dtype: format!("{dtype:?}"),
    })
}

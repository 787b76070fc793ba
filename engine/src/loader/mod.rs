//! Weight loading from safetensors: one file or a sharded set (`model.safetensors.index.json`),
//! memory-mapped, every tensor checked against the shape the configuration implies and converted to
//! f32 (the CPU backend's compute type; bf16/f16 widen exactly). Each error names the file and the
//! tensor, so a broken download is diagnosed without a debugger.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// A tensor in host memory, row-major, widened to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The safetensors files of one model folder, memory-mapped, with an index from tensor name to file.
pub struct WeightFiles {
    files: Vec<MappedFile>,
    location: HashMap<String, usize>,
    /// What error messages call the set of files when a tensor is missing from all of them.
    description: PathBuf,
}

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
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
            // SAFETY: the mapping is read-only and lives as long as `WeightFiles`; like every
            // mmap-based loader we assume the model files are not truncated while the engine runs.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
            let tensors =
                SafeTensors::deserialize(&mmap).map_err(|e| EngineError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for name in tensors.names() {
                location.insert(name.to_string(), i);
            }
            files.push(MappedFile {
                path: path.clone(),
                mmap,
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

    /// Loads `name`, checks it has `expected_shape`, and widens it to f32.
    pub fn load(&self, name: &str, expected_shape: &[usize]) -> Result<HostTensor> {
        let &file_index = self
            .location
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor {
                path: self.description.clone(),
                tensor: name.to_string(),
            })?;
        let file = &self.files[file_index];
        let tensors = SafeTensors::deserialize(&file.mmap)
            .expect("a file that parsed at open parses again (a bug otherwise)");
        let view = tensors.tensor(name).map_err(|e| EngineError::Safetensors {
            path: file.path.clone(),
            message: e.to_string(),
        })?;
        read_f32(&file.path, name, &view, expected_shape)
    }
}

/// Checks that tensor `name` of the safetensors file at `path` has `expected_shape` and widens it to
/// f32. Model weights and lookahead module files both read through it, so they accept the same
/// dtypes and report a wrong shape or dtype the same way.
pub(crate) fn read_f32(
    path: &Path,
    name: &str,
    view: &TensorView<'_>,
    expected_shape: &[usize],
) -> Result<HostTensor> {
    if view.shape() != expected_shape {
        return Err(EngineError::TensorShape {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            expected: expected_shape.to_vec(),
            actual: view.shape().to_vec(),
        });
    }
    let data = widen_to_f32(view.dtype(), view.data()).ok_or_else(|| EngineError::TensorDtype {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        dtype: format!("{:?}", view.dtype()),
    })?;
    Ok(HostTensor {
        shape: view.shape().to_vec(),
        data,
    })
}

/// Converts little-endian bytes of a float dtype to f32; `None` for dtypes Glimpse does not load.
fn widen_to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let words = |width: usize| bytes.chunks_exact(width);
    match dtype {
        Dtype::F32 => Some(
            words(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::BF16 => Some(
            words(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        Dtype::F16 => Some(
            words(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

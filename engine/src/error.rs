//! The engine's one error type. Variants carry what a user needs to fix the problem: the file, the
//! tensor or field, what was expected and what was found.

use std::path::PathBuf;

/// Every failure the engine reports. Input problems (files, configs, parameters) never panic.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `--model` names no folder on disk nor a model in the local hub cache. Glimpse never
    /// downloads, so the message lists every place looked and how to fetch the model.
    #[error(
        "model `{model}` not found; looked in:\n  {}\nGlimpse never downloads models: pass a local \
         model folder, or fetch the model into the hub cache first (`huggingface-cli download {hub_id}`)",
        looked.join("\n  ")
    )]
    ModelNotFound {
        model: String,
        /// The hub id to fetch: `model` when it is one, else a placeholder `ORG/NAME`.
        hub_id: String,
        looked: Vec<String>,
    },
    /// A JSON file (config, index, tokenizer config) is malformed or misses a required field.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// The model's `architectures` / `model_type` is not one Glimpse runs.
    #[error("{path}: unsupported architecture `{architecture}` (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        architecture: String,
        supported: &'static str,
    },
    /// A safetensors file is malformed (bad header, truncated data, ...).
    #[error("{path}: malformed safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// A tensor the architecture needs is absent from every weight file.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor { path: PathBuf, tensor: String },
    /// The checkpoint holds a decoder layer the configuration does not declare: `config.json`
    /// and the weights describe different models (a layer count edited by hand, a wrong file).
    #[error(
        "{path}: tensor `{tensor}` belongs to a layer beyond `num_hidden_layers` = {num_layers} of config.json"
    )]
    ExtraLayer {
        path: PathBuf,
        tensor: String,
        num_layers: usize,
    },
    /// A tensor has the wrong shape for the configuration.
    #[error("{path}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// A tensor is stored in a dtype Glimpse cannot load.
    #[error("{path}: tensor `{tensor}` has dtype {dtype}, expected one of F32, BF16, F16")]
    TensorDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// A LookaheadKV module file does not hold together or does not belong to the model it is
    /// loaded for: bad metadata, a layer count or rank that does not fit, non-finite values,
    /// unexpected tensors, or another base model's hash. Shape and missing-tensor problems use
    /// [`Self::TensorShape`] and [`Self::MissingTensor`] like model weights do.
    #[error("{path}: lookahead module: {message}")]
    LookaheadFile { path: PathBuf, message: String },
    /// The tokenizer files could not be loaded or used.
    #[error("tokenizer: {message}")]
    Tokenizer { message: String },
    /// The chat template failed to parse or render.
    #[error("chat template: {message}")]
    ChatTemplate { message: String },
    /// A request parameter is out of range; names the field, the allowed range and the value.
    #[error("invalid `{field}`: {message}")]
    InvalidParameter {
        field: &'static str,
        message: String,
    },
    /// A forward batch is inconsistent with the model or the KV pool (a caller bug).
    #[error("invalid batch: {message}")]
    InvalidBatch { message: String },
    /// A tensor operation of the training code failed (candle reports shapes or dtypes that do
    /// not fit: a bug, or an input the checks above let through).
    #[error("tensor operation: {message}")]
    Tensor { message: String },
    /// A buffer whose size follows from the model and the pool (RoPE tables, the KV pool) could
    /// not be allocated; `what` names the buffer and the settings that sized it.
    #[error("could not allocate {bytes} bytes for {what}")]
    OutOfMemory { what: String, bytes: usize },
    /// `--device cuda:N` where the NVIDIA driver library cannot be loaded.
    #[error(
        "device cuda:{ordinal}: the NVIDIA driver library (libcuda.so.1) was not found; install \
         the NVIDIA driver, or run with the GPU exposed (`docker run --gpus all`, the NVIDIA \
         device plugin on Kubernetes); `--device cpu` needs neither"
    )]
    CudaDriverNotFound { ordinal: usize },
    /// `--device cuda:N` past the devices the driver sees.
    #[error(
        "device cuda:{ordinal} is out of range: the driver sees {count} CUDA device(s) \
         (indices 0..{count}, after CUDA_VISIBLE_DEVICES)"
    )]
    CudaDeviceOutOfRange { ordinal: usize, count: usize },
    /// The GPU is older than the CUDA backend supports.
    #[error(
        "device cuda:{ordinal} ({name}) has compute capability {}.{}; Glimpse needs {}.{} or newer",
        actual.0, actual.1, required.0, required.1
    )]
    CudaComputeCapability {
        ordinal: usize,
        name: String,
        actual: (i32, i32),
        required: (i32, i32),
    },
    /// A CUDA driver call failed; `call` names it.
    #[error("device cuda:{ordinal}: {call} failed: {message}")]
    CudaDriver {
        ordinal: usize,
        call: &'static str,
        message: String,
    },
    /// NVRTC, which compiles the CUDA kernels at start-up, cannot be loaded.
    #[error(
        "NVRTC (libnvrtc.so.13, CUDA 13.0) was not found; it ships with the CUDA runtime \
         libraries (the nvidia/cuda runtime images, or pip's nvidia-cuda-nvrtc): put its folder \
         on LD_LIBRARY_PATH"
    )]
    NvrtcNotFound,
    /// NVRTC failed on a kernel file; `message` holds its log.
    #[error("NVRTC: {kernel} for {arch}: {message}")]
    Nvrtc {
        kernel: String,
        arch: String,
        message: String,
    },
    /// A setting or request the CUDA backend does not support; `what` names it and the way
    /// around it. Refused before anything runs, never computed wrongly.
    #[error("device cuda:{ordinal}: {what} is not supported by the CUDA backend")]
    CudaUnsupported { ordinal: usize, what: String },
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        Self::Tensor {
            message: e.to_string(),
        }
    }
}

/// Shorthand used throughout the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A configuration problem in `path`.
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}

//! The dtype the CPU backend holds the model's matrices in (`--dtype`, or Q8_0 under
//! `--quantize int8`), resolved once against the checkpoint's. Only the GEMM weights change:
//! activations, norms, softmax, RoPE, sampling and eviction scoring are f32 in every mode (the
//! int8 GEMM quantizes its activation rows at its inputs only; docs/design.md §3 "Weights dtype",
//! "Int8 weights").

use std::fmt;
use std::str::FromStr;

use crate::backend::Device;
use crate::error::EngineError;
use crate::loader::WeightDtype;

/// What `--dtype` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypeChoice {
    /// The checkpoint's own dtype: bf16 checkpoints run in bf16, f32 ones in f32, and f16 ones in
    /// f32, which holds every f16 value exactly (bf16 would round away 3 bits of each weight's
    /// mantissa; `--dtype bf16` opts into that for half the memory).
    #[default]
    Auto,
    F32,
    Bf16,
}

impl DtypeChoice {
    /// The dtype to hold matrices in, for a checkpoint stored in `checkpoint`.
    pub fn resolve(self, checkpoint: WeightDtype) -> WeightsDtype {
        match (self, checkpoint) {
            (Self::F32, _) => WeightsDtype::F32,
            (Self::Bf16, _) => WeightsDtype::Bf16,
            (Self::Auto, WeightDtype::BF16) => WeightsDtype::Bf16,
            (Self::Auto, WeightDtype::F32 | WeightDtype::F16) => WeightsDtype::F32,
        }
    }
}

/// Parsing and printing of a flag whose values are `auto`, `f32` (or `float32`) and `bf16` (or
/// `bfloat16`), plus the `$variant`s spelt `$name` (or `$alias`): `--dtype` and `--kv-cache-dtype`
/// spell their choices alike; errors name `$field`.
macro_rules! auto_f32_bf16_flag {
    ($choice:ident, $field:literal $(, $variant:ident => $name:literal $(| $alias:literal)*)*) => {
        impl $choice {
            /// Every spelling the flag accepts, for help and error texts.
            pub const NAMES: &'static str = concat!("auto, f32, bf16" $(, ", ", $name)*);
        }

        impl FromStr for $choice {
            type Err = EngineError;

            fn from_str(s: &str) -> Result<Self, EngineError> {
                match s {
                    "auto" => Ok(Self::Auto),
                    "f32" | "float32" => Ok(Self::F32),
                    "bf16" | "bfloat16" => Ok(Self::Bf16),
                    $($name $(| $alias)* => Ok(Self::$variant),)*
                    _ => Err(EngineError::InvalidParameter {
                        field: $field,
                        message: format!("expected one of {}, got `{s}`", Self::NAMES),
                    }),
                }
            }
        }

        impl fmt::Display for $choice {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(match self {
                    Self::Auto => "auto",
                    Self::F32 => "f32",
                    Self::Bf16 => "bf16",
                    $(Self::$variant => $name,)*
                })
            }
        }
    };
}

auto_f32_bf16_flag!(DtypeChoice, "dtype");

/// The dtype the GEMM's weight panels are stored in. bf16 values are the f32 ones rounded to
/// nearest even once, at load (exact for a bf16 checkpoint), and widened exactly in registers.
/// Q8_0 (`--quantize int8`) holds each run of 32 values of a row as 32 int8 and one f16 scale,
/// llama.cpp's Q8_0 block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsDtype {
    F32,
    Bf16,
    Q8_0,
}

impl WeightsDtype {
    /// Bytes `values` stored values take (Q8_0: 34 bytes per block of 32, counted as if the
    /// values filled whole blocks).
    pub fn bytes_for(self, values: usize) -> usize {
        match self {
            Self::F32 => 4 * values,
            Self::Bf16 => 2 * values,
            Self::Q8_0 => values.div_ceil(32) * 34,
        }
    }
}

impl fmt::Display for WeightsDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
        })
    }
}

/// What `--quantize` asks for: `none`, or `int8` — every matrix (the seven projections of each
/// layer, the embedding table and the LM head, as llama.cpp's Q8_0 files hold them) quantized at
/// load into Q8_0 blocks, whatever `--dtype` says; the GEMM then quantizes each activation row
/// per block of 32 alike and multiplies int8 by int8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    #[default]
    None,
    Int8,
}

impl Quantization {
    /// Every spelling the flag accepts, for help and error texts.
    pub const NAMES: &'static str = "none, int8";

    /// The dtype the matrices are held in, given the one `--dtype` resolved to.
    pub fn resolve(self, dtype: WeightsDtype) -> WeightsDtype {
        match self {
            Self::None => dtype,
            Self::Int8 => WeightsDtype::Q8_0,
        }
    }
}

impl FromStr for Quantization {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, EngineError> {
        match s {
            "none" => Ok(Self::None),
            "int8" => Ok(Self::Int8),
            _ => Err(EngineError::InvalidParameter {
                field: "quantize",
                message: format!("expected one of {}, got `{s}`", Self::NAMES),
            }),
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::None => "none",
            Self::Int8 => "int8",
        })
    }
}

/// What `--kv-cache-dtype` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheDtypeChoice {
    /// What the device computes in. On the CPU, f32 whatever the weights' dtype: keys and values
    /// are activations, f32 in every `--dtype`, so holding them in bf16 is a rounding of its
    /// own, opted into with `bf16`. On CUDA, bf16: the only pool its kernels store, next to
    /// bf16 GEMM inputs (as vLLM's `auto` follows the model's dtype, whose activations are bf16).
    #[default]
    Auto,
    F32,
    Bf16,
    /// FP8 E4M3 with a per-(layer, KV head) scale (as vLLM's `fp8`); CPU only.
    Fp8,
}

impl KvCacheDtypeChoice {
    /// The dtype the KV pool on `device` stores its entries in.
    pub fn resolve(self, device: Device) -> KvCacheDtype {
        match self {
            Self::Auto => KvCacheDtype::widest_on(device),
            Self::F32 => KvCacheDtype::F32,
            Self::Bf16 => KvCacheDtype::Bf16,
            Self::Fp8 => KvCacheDtype::Fp8,
        }
    }
}

auto_f32_bf16_flag!(KvCacheDtypeChoice, "kv_cache_dtype", Fp8 => "fp8" | "fp8_e4m3");

/// The dtype the KV pool stores keys and values in. bf16 entries are the f32 K/V rounded to
/// nearest even once, when written, and widened exactly in registers by attention and eviction
/// scoring, so the pool holds twice the entries in the same bytes. fp8 entries are FP8 E4M3
/// (OCP "e4m3fn") codes of the K/V divided by a per-(layer, KV head) power-of-two scale,
/// calibrated once when the backend is created; four times the entries of f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheDtype {
    #[default]
    F32,
    Bf16,
    Fp8,
}

impl KvCacheDtype {
    /// The widest pool `device` stores, which `auto` picks and a compact pool is measured
    /// against: f32 on the CPU, bf16 on CUDA (its kernels store nothing else).
    pub fn widest_on(device: Device) -> Self {
        match device {
            Device::Cpu => Self::F32,
            Device::Cuda(_) => Self::Bf16,
        }
    }

    /// Bytes per stored key or value element.
    pub fn size_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
            Self::Fp8 => 1,
        }
    }
}

impl fmt::Display for KvCacheDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Fp8 => "fp8",
        })
    }
}

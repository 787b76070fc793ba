//! Row-major GEMMs through cuBLAS, which is column-major: `y[rows, out] = α·x[rows, in]·w[out,
//! in]ᵀ + β·y`, every matrix with its own row stride so a GEMM can read or write a column block
//! of a wider matrix (one LoRA target's columns of a fused qkv row). The weights' GEMMs take
//! bf16 `x` and `w` and write f32 `y` with f32 accumulation (`cublasGemmEx`, compute type 32F);
//! the LoRA and bias GEMMs are f32 throughout.
//!
//! The mapping: a row-major `[r, c]` matrix with row stride `ld` is the column-major `[c, r]`
//! matrix with leading dimension `ld`. So `yᵀ = w·xᵀ` in column-major terms: cuBLAS's `A` is `w`
//! (transposed, `lda` = its row stride), `B` is `x` (as is, `ldb` = its row stride), `m = out`,
//! `n = rows`, `k = in`, `ldc` = `y`'s row stride.

use std::ffi::c_void;

use cudarc::cublas::result::gemm_ex;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};

use super::gpu::{DevPtr, Gpu};
use crate::error::{EngineError, Result};

/// The element type of a GEMM's `x` and `w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operands {
    /// Raw bf16 bits (the weights, and activations rounded by `glimpse_round_to_bf16`).
    Bf16,
    F32,
}

/// One row-major product `y = α·x·wᵀ + β·y`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowMajorGemm {
    pub rows: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// Row strides of `x`, `w` and `y`, in elements.
    pub ldx: usize,
    pub ldw: usize,
    pub ldy: usize,
    pub alpha: f32,
    /// 0 overwrites `y`, 1 adds to it.
    pub beta: f32,
}

/// cuBLAS's column-major arguments for a [`RowMajorGemm`]: `(m, n, k, lda, ldb, ldc)`, with `A`
/// transposed and `B` not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnMajorShape {
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
}

impl RowMajorGemm {
    /// `y[rows, out] = x[rows, in]·w[out, in]ᵀ` over dense matrices.
    pub fn dense(rows: usize, in_features: usize, out_features: usize) -> Self {
        Self {
            rows,
            in_features,
            out_features,
            ldx: in_features,
            ldw: in_features,
            ldy: out_features,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// The same product added to `y`.
    pub fn accumulate(self) -> Self {
        Self { beta: 1.0, ..self }
    }

    /// cuBLAS's arguments; fails when a dimension does not fit cuBLAS's `int`.
    pub fn column_major(&self) -> Result<ColumnMajorShape> {
        let int = |value: usize| {
            i32::try_from(value).map_err(|_| EngineError::InvalidBatch {
                message: format!("GEMM dimension {value} exceeds cuBLAS's i32 limit"),
            })
        };
        Ok(ColumnMajorShape {
            m: int(self.out_features)?,
            n: int(self.rows)?,
            k: int(self.in_features)?,
            lda: int(self.ldw)?,
            ldb: int(self.ldx)?,
            ldc: int(self.ldy)?,
        })
    }

    /// Runs the product on the device: `x` and `w` hold [`Operands`] (`u16` bits for bf16), `y`
    /// is f32. Does nothing for an empty product.
    pub fn run<X>(
        &self,
        gpu: &Gpu,
        operands: Operands,
        x: DevPtr<X>,
        w: DevPtr<X>,
        y: DevPtr<f32>,
    ) -> Result<()> {
        if self.rows == 0 || self.out_features == 0 {
            return Ok(());
        }
        assert!(
            x.len() >= (self.rows - 1) * self.ldx + self.in_features
                && w.len() >= (self.out_features - 1) * self.ldw + self.in_features
                && y.len() >= (self.rows - 1) * self.ldy + self.out_features,
            "GEMM operand smaller than its shape"
        );
        let shape = self.column_major()?;
        let data_type = match operands {
            Operands::Bf16 => cudaDataType_t::CUDA_R_16BF,
            Operands::F32 => cudaDataType_t::CUDA_R_32F,
        };
        let (alpha, beta) = (self.alpha, self.beta);
        // SAFETY: the three operands lie in live device buffers of at least the sizes their
        // shapes and strides span (asserted above); cuBLAS runs on the backend's one stream.
        let result = unsafe {
            gemm_ex(
                *gpu.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                shape.m,
                shape.n,
                shape.k,
                (&alpha as *const f32).cast::<c_void>(),
                w.address() as *const c_void,
                data_type,
                shape.lda,
                x.address() as *const c_void,
                data_type,
                shape.ldb,
                (&beta as *const f32).cast::<c_void>(),
                y.address() as *mut c_void,
                cudaDataType_t::CUDA_R_32F,
                shape.ldc,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        result.map_err(|error| EngineError::CudaDriver {
            ordinal: gpu.ordinal,
            call: "cublasGemmEx",
            message: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cuBLAS's `C = α·op(A)·op(B) + β·C` with `op(A) = Aᵀ`, `op(B) = B`, column-major, as its
    /// documentation defines it.
    fn column_major_gemm(
        s: ColumnMajorShape,
        alpha: f32,
        a: &[f32],
        b: &[f32],
        beta: f32,
        c: &mut [f32],
    ) {
        let (m, n, k) = (s.m as usize, s.n as usize, s.k as usize);
        for j in 0..n {
            for i in 0..m {
                let dot: f32 = (0..k)
                    .map(|p| a[i * s.lda as usize + p] * b[j * s.ldb as usize + p])
                    .sum();
                let at = j * s.ldc as usize + i;
                c[at] = alpha * dot + beta * c[at];
            }
        }
    }

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 * 0.37 + seed).sin() * 4.0).round())
            .collect()
    }

    #[test]
    fn the_column_major_call_computes_the_row_major_product() {
        let (rows, inputs, outputs) = (3, 5, 4);
        let (x, w) = (values(rows * inputs, 0.1), values(outputs * inputs, 0.7));
        let gemm = RowMajorGemm::dense(rows, inputs, outputs);
        let mut y = vec![0.0; rows * outputs];
        column_major_gemm(gemm.column_major().unwrap(), 1.0, &w, &x, 0.0, &mut y);
        for r in 0..rows {
            for o in 0..outputs {
                let want: f32 = (0..inputs)
                    .map(|i| x[r * inputs + i] * w[o * inputs + i])
                    .sum();
                assert_eq!(y[r * outputs + o], want, "row {r}, output {o}");
            }
        }
    }

    #[test]
    fn a_strided_gemm_adds_into_a_column_block_of_a_wider_matrix() {
        // x: columns 2..4 of a [3, 6] matrix; y: columns 1..4 of a [3, 7] matrix, accumulated.
        let (rows, inputs, outputs) = (3, 2, 3);
        let (x_wide, w) = (values(rows * 6, 0.3), values(outputs * inputs, 0.9));
        let gemm = RowMajorGemm {
            ldx: 6,
            ldy: 7,
            alpha: 2.0,
            ..RowMajorGemm::dense(rows, inputs, outputs).accumulate()
        };
        let mut y = values(rows * 7, 0.5);
        let before = y.clone();
        column_major_gemm(
            gemm.column_major().unwrap(),
            2.0,
            &w,
            &x_wide[2..],
            1.0,
            &mut y[1..],
        );
        for r in 0..rows {
            for c in 0..7 {
                let at = r * 7 + c;
                let want = if (1..4).contains(&c) {
                    let o = c - 1;
                    before[at]
                        + 2.0
                            * (0..inputs)
                                .map(|i| x_wide[r * 6 + 2 + i] * w[o * inputs + i])
                                .sum::<f32>()
                } else {
                    before[at]
                };
                assert_eq!(y[at], want, "row {r}, column {c}");
            }
        }
    }

    #[test]
    fn a_dimension_past_i32_is_refused() {
        let error = RowMajorGemm::dense(1 << 31, 4, 4)
            .column_major()
            .unwrap_err();
        assert!(error.to_string().contains("2147483648"), "{error}");
    }
}

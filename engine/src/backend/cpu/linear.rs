//! `y = x·Wᵀ` for row-major `x [rows, k]` and `W [n, k]` (the layout Hugging Face stores), the CPU
//! backend's only GEMM.
//!
//! Why our own kernel rather than a BLAS: every output element is one dot product of two contiguous
//! rows, accumulated in a fixed order (16 lanes striding over `k`, a masked tail, then a fixed
//! horizontal sum) whatever the number of rows or the tile an element falls in. So a sequence's
//! numbers do not depend on what else is in the batch — DESIGN §3 "batching is invisible" holds to
//! the bit — and the output goes straight into a reused buffer. Work is split over output columns
//! across threads; with one row (decode at batch 1) the kernel streams `W` once at memory speed.

use rayon::prelude::*;

/// Rows of `x` handled together by the micro-kernel.
const MR: usize = 4;
/// Rows of `W` (output columns) handled together by the micro-kernel.
const NR: usize = 4;
/// Rows of `x` kept hot in cache while all columns of a thread's share stream past.
const ROW_PANEL: usize = 64;

/// Computes `y[r, j] = Σ_k x[r, k]·w[j, k]` for `r < rows`, `j < n`, overwriting `y` (`[rows, n]`).
pub fn matmul_nt(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), rows * k, "x must be [rows, k]");
    assert_eq!(w.len(), n * k, "w must be [n, k]");
    assert_eq!(y.len(), rows * n, "y must be [rows, n]");
    if rows == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // Enough chunks to balance the threads, each a whole number of micro-tiles.
    let chunk_cols = n.div_ceil(threads * 4).div_ceil(NR) * NR;
    let num_chunks = n.div_ceil(chunk_cols);
    let out = OutPtr(y.as_mut_ptr());
    (0..num_chunks).into_par_iter().for_each(|chunk| {
        let col_start = chunk * chunk_cols;
        let col_end = (col_start + chunk_cols).min(n);
        // SAFETY: chunks own disjoint column ranges of `y`, so no element is written twice, and
        // `y` outlives the parallel loop.
        unsafe { compute_columns(x, rows, k, w, n, col_start, col_end, out) };
    });
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: writers through this pointer touch disjoint elements (see `matmul_nt`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Fills columns `col_start..col_end` of every row of `y`.
///
/// # Safety
/// `out` points to a `[rows, n]` buffer, and no other thread writes these columns.
#[allow(clippy::too_many_arguments)]
unsafe fn compute_columns(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    col_start: usize,
    col_end: usize,
    out: OutPtr,
) {
    let kernel = Kernel::detect();
    for panel_start in (0..rows).step_by(ROW_PANEL) {
        let panel_end = (panel_start + ROW_PANEL).min(rows);
        let mut col = col_start;
        while col < col_end {
            let nr = NR.min(col_end - col);
            let mut row = panel_start;
            while row < panel_end {
                let mr = MR.min(panel_end - row);
                let mut tile = [[0.0f32; NR]; MR];
                kernel.tile(&x[row * k..], &w[col * k..], k, mr, nr, &mut tile);
                for (r, tile_row) in tile.iter().enumerate().take(mr) {
                    for (c, &v) in tile_row.iter().enumerate().take(nr) {
                        // SAFETY: (row + r, col + c) is inside `y` and in this chunk's columns.
                        unsafe { *out.0.add((row + r) * n + col + c) = v };
                    }
                }
                row += mr;
            }
            col += nr;
        }
    }
}

/// The micro-kernel implementation chosen for this CPU.
#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Self::Avx512;
        }
        Self::Portable
    }

    /// Dot products of `mr` rows of `x` (stride `k`) with `nr` rows of `w` (stride `k`).
    #[inline]
    fn tile(self, x: &[f32], w: &[f32], k: usize, mr: usize, nr: usize, out: &mut [[f32; NR]; MR]) {
        match self {
            // SAFETY: AVX-512F was detected at run time.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { avx512::tile(x, w, k, mr, nr, out) },
            Self::Portable => portable_tile(x, w, k, mr, nr, out),
        }
    }
}

/// Lanes of the portable accumulator; matches the AVX-512 width so both paths sum in 16 strands.
const LANES: usize = 16;

fn portable_tile(x: &[f32], w: &[f32], k: usize, mr: usize, nr: usize, out: &mut [[f32; NR]; MR]) {
    for r in 0..mr {
        let xr = &x[r * k..r * k + k];
        for c in 0..nr {
            let wc = &w[c * k..c * k + k];
            let mut acc = [0.0f32; LANES];
            let mut xs = xr.chunks_exact(LANES);
            let mut ws = wc.chunks_exact(LANES);
            for (a, b) in (&mut xs).zip(&mut ws) {
                for l in 0..LANES {
                    acc[l] += a[l] * b[l];
                }
            }
            for (l, (a, b)) in xs.remainder().iter().zip(ws.remainder()).enumerate() {
                acc[l] += a * b;
            }
            out[r][c] = acc.iter().sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// # Safety
    /// The CPU supports AVX-512F; `x` holds `mr` rows and `w` holds `nr` rows of stride `k`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile(
        x: &[f32],
        w: &[f32],
        k: usize,
        mr: usize,
        nr: usize,
        out: &mut [[f32; NR]; MR],
    ) {
        // Dispatch to a fully unrolled kernel so the accumulators live in registers.
        unsafe {
            match (mr, nr) {
                (4, 4) => kernel::<4, 4>(x, w, k, out),
                (1, 4) => kernel::<1, 4>(x, w, k, out),
                (2, 4) => kernel::<2, 4>(x, w, k, out),
                (3, 4) => kernel::<3, 4>(x, w, k, out),
                (1, _) => kernel_any::<1>(x, w, k, nr, out),
                (2, _) => kernel_any::<2>(x, w, k, nr, out),
                (3, _) => kernel_any::<3>(x, w, k, nr, out),
                _ => kernel_any::<4>(x, w, k, nr, out),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const M: usize, const N: usize>(
        x: &[f32],
        w: &[f32],
        k: usize,
        out: &mut [[f32; NR]; MR],
    ) {
        debug_assert!(x.len() >= (M - 1) * k + k && w.len() >= (N - 1) * k + k);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); N]; M];
        let full = k / 16 * 16;
        let mut i = 0;
        while i < full {
            // SAFETY: i + 16 <= k, so every load stays inside its row.
            unsafe {
                let mut wv = [_mm512_setzero_ps(); N];
                for (c, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(wp.add(c * k + i));
                }
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    let xv = _mm512_loadu_ps(xp.add(r * k + i));
                    for (a, v) in acc_row.iter_mut().zip(&wv) {
                        *a = _mm512_fmadd_ps(xv, *v, *a);
                    }
                }
            }
            i += 16;
        }
        if full < k {
            let mask: __mmask16 = (1u32 << (k - full)).wrapping_sub(1) as __mmask16;
            // SAFETY: masked loads read only the `k - full` elements left in each row.
            unsafe {
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    let xv = _mm512_maskz_loadu_ps(mask, xp.add(r * k + full));
                    for (c, a) in acc_row.iter_mut().enumerate() {
                        let wv = _mm512_maskz_loadu_ps(mask, wp.add(c * k + full));
                        *a = _mm512_fmadd_ps(xv, wv, *a);
                    }
                }
            }
        }
        for (r, acc_row) in acc.iter().enumerate() {
            for (c, a) in acc_row.iter().enumerate() {
                out[r][c] = _mm512_reduce_add_ps(*a);
            }
        }
    }

    /// Column tails (`nr < NR`): one column at a time, with exactly the per-element arithmetic of
    /// [`kernel`], so an element's value never depends on which tile computed it.
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel_any<const M: usize>(
        x: &[f32],
        w: &[f32],
        k: usize,
        nr: usize,
        out: &mut [[f32; NR]; MR],
    ) {
        for c in 0..nr {
            let mut one = [[0.0f32; NR]; MR];
            // SAFETY: column c's row of `w` has k elements.
            unsafe { kernel::<M, 1>(x, &w[c * k..], k, &mut one) };
            for r in 0..M {
                out[r][c] = one[r][0];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                y[r * n + j] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                    .sum();
            }
        }
        y
    }

    fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_a_float64_reference_for_odd_shapes() {
        for &(rows, k, n) in &[
            (1, 1, 1),
            (3, 17, 5),
            (7, 64, 9),
            (70, 33, 130),
            (5, 172, 64),
        ] {
            let x = pseudo_random(rows * k, 1);
            let w = pseudo_random(n * k, 2);
            let mut y = vec![0.0; rows * n];
            matmul_nt(&x, rows, k, &w, n, &mut y);
            for (got, want) in y.iter().zip(reference(&x, rows, k, &w, n)) {
                assert!(
                    (*got as f64 - want).abs() < 1e-4,
                    "{rows}x{k}x{n}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_whatever_else_is_in_the_batch() {
        let (k, n) = (100, 37);
        let w = pseudo_random(n * k, 3);
        let batch = pseudo_random(13 * k, 4);
        let mut all = vec![0.0; 13 * n];
        matmul_nt(&batch, 13, k, &w, n, &mut all);
        for r in 0..13 {
            let mut alone = vec![0.0; n];
            matmul_nt(&batch[r * k..(r + 1) * k], 1, k, &w, n, &mut alone);
            assert_eq!(alone, all[r * n..(r + 1) * n], "row {r}");
        }
    }
}

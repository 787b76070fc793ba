//! `y = x·Wᵀ` for row-major `x [rows, k]` and `W [n, k]` (the layout Hugging Face stores), the CPU
//! backend's only GEMM.
//!
//! Why our own kernel rather than a BLAS: docs/design.md §3 "batching is invisible" must hold to the bit, so
//! every output element `y[r, j]` is accumulated in one fixed order — a single chain
//! `acc = x[r, 0]·W[j, 0]`, `acc += x[r, p]·W[j, p]` for `p = 1, 2, …, k-1` (one fused multiply-add
//! per step with AVX-512, a multiply then an add in the portable kernel) — whatever the number of
//! rows, the tile the element falls in, the blocking over `k` (a partial sum is parked in `y` as an
//! exact `f32` and picked up again) or the thread that computes it. A BLAS picks its blocking and
//! reduction order from the problem shape, so a row's numbers would change with the batch.
//!
//! The design is the classic BLIS one. `W` is packed once, at load, into [`PackedMatrix`] panels of
//! 16 output columns, `[n/16][k][16]`: one 64-byte line per `(panel, p)`, read with one aligned
//! vector load. The micro-kernel keeps an `MR × (PR·16)` block of `y` in vector registers and, per
//! step of `k`, broadcasts one `x` value per row and does one FMA per (row, panel) — no horizontal
//! sums, no shuffles, 24 FMAs per 14 loads. Around it, `k` is cut into `KC` slices so the slice of a
//! strip of `W` stays in L1 while the row micro-blocks pass over it, rows into blocks of at most
//! `MC_BYTES` of `x` that stay in L2 while a thread's strips stream past, and the (row block ×
//! column range) pieces are spread over rayon's threads. With one row (decode at batch 1) the same
//! kernel streams `W` once at memory speed.
//!
//! Model weights are packed at load ([`crate::model::Linear`]); [`matmul_nt`] packs on the fly for
//! small matrices that are not.

use rayon::prelude::*;

/// Output columns per packed panel: one AVX-512 vector of `f32`.
const NR: usize = 16;
/// Rows of `x` per micro-tile: with [`PR`] panels, `MR·PR` = 24 of the 32 vector registers hold
/// accumulators, leaving room for the `W` loads and the broadcast.
const MR: usize = 12;
/// Panels (of [`NR`] columns) per micro-tile.
const PR: usize = 2;
/// Slice of `k` per pass: `KC × PR·NR` floats of `W` (32 KiB) stay in L1 across a row block.
const KC: usize = 256;
/// Bytes of `x` per row block: the block stays in L2 (2 MiB per core on the machines we measure)
/// beside the strips of `W` streaming through while a thread's columns stream past.
const MC_BYTES: usize = 512 << 10;

/// One 64-byte, cache-line-aligned row of a panel.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Lane([f32; NR]);

/// A weight matrix `W [n, k]` in the GEMM's panel layout: for each group of 16 consecutive rows of
/// `W` (output columns of `y`), its `k` columns as `k` cache-line-aligned lanes of 16 floats. The
/// last panel is zero-padded, so the layout costs at most `15·k` extra floats: a packed copy
/// replaces the row-major matrix rather than adding to it.
#[derive(Clone)]
pub struct PackedMatrix {
    lanes: Vec<Lane>,
    n: usize,
    k: usize,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix [{}, {}]", self.n, self.k)
    }
}

impl PackedMatrix {
    /// Packs row-major `w [n, k]`.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "w must be [n, k]");
        let mut packed = Self::zeros(n, k);
        packed.set_rows(0, w);
        packed
    }

    /// An all-zero `[n, k]` matrix, to be filled with [`set_rows`](Self::set_rows) — so a matrix
    /// stacked from several checkpoint tensors is packed part by part, never whole in both layouts.
    pub fn zeros(n: usize, k: usize) -> Self {
        Self {
            lanes: vec![Lane([0.0; NR]); n.div_ceil(NR) * k],
            n,
            k,
        }
    }

    /// Overwrites rows `first..first + rows.len() / k` with the row-major `rows`.
    pub fn set_rows(&mut self, first: usize, rows: &[f32]) {
        let k = self.k;
        if k == 0 {
            return;
        }
        assert_eq!(rows.len() % k, 0, "rows must be whole rows of length k");
        assert!(
            first + rows.len() / k <= self.n,
            "rows past the end of the matrix"
        );
        for (i, row) in rows.chunks_exact(k).enumerate() {
            let (panel, lane) = ((first + i) / NR, (first + i) % NR);
            let panel = &mut self.lanes[panel * k..(panel + 1) * k];
            for (dst, &v) in panel.iter_mut().zip(row) {
                dst.0[lane] = v;
            }
        }
    }

    /// Copies row `j` of `W` (`k` floats) into `out`: the embedding lookup, whose table is kept only
    /// packed because it doubles as the LM head of tied models. It reads one cache line per element
    /// (a stride of 16 floats), a few microseconds per token beside the GEMMs of its forward pass.
    pub fn copy_row(&self, j: usize, out: &mut [f32]) {
        assert!(j < self.n, "row {j} of a matrix with {} rows", self.n);
        let (panel, lane) = (j / NR, j % NR);
        let panel = &self.lanes[panel * self.k..(panel + 1) * self.k];
        for (dst, src) in out[..self.k].iter_mut().zip(panel) {
            *dst = src.0[lane];
        }
    }

    /// Rows of `W` (output features).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Columns of `W` (input features).
    pub fn cols(&self) -> usize {
        self.k
    }
}

/// Computes `y[r, j] = Σ_k x[r, k]·w[j, k]` for `r < rows`, `j < n`, overwriting `y` (`[rows, n]`),
/// with `w` row-major `[n, k]`.
///
/// Packs `w` on every call (an `n·k` copy), so it suits small or one-off matrices; model weights are
/// packed once at load and go through [`matmul_packed`], which gives the same bits.
pub fn matmul_nt(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    matmul_packed(x, rows, &PackedMatrix::pack(w, n, k), y);
}

/// Computes `y = x·Wᵀ` for `x [rows, k]` and packed `w [n, k]`, overwriting `y` (`[rows, n]`).
pub fn matmul_packed(x: &[f32], rows: usize, w: &PackedMatrix, y: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), rows * k, "x must be [rows, k]");
    assert_eq!(y.len(), rows * n, "y must be [rows, n]");
    if rows == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    let kernel = Kernel::detect();
    let strips = n.div_ceil(NR).div_ceil(PR);
    // Row blocks of at most MC_BYTES of `x`, evened out and rounded up to whole micro-tiles.
    let max_block = (MC_BYTES / (4 * k) / MR).max(1) * MR;
    let row_blocks = rows.div_ceil(max_block);
    let mc = rows.div_ceil(row_blocks).next_multiple_of(MR);
    let row_blocks = rows.div_ceil(mc);
    // Enough pieces to keep every thread busy (and balance the load when another process takes a
    // core for a while), each a whole number of strips.
    let threads = rayon::current_num_threads().max(1);
    let col_chunks = (8 * threads).div_ceil(row_blocks).clamp(1, strips);
    let strips_per_chunk = strips.div_ceil(col_chunks);
    let col_chunks = strips.div_ceil(strips_per_chunk);
    let out = OutPtr(y.as_mut_ptr());
    (0..row_blocks * col_chunks)
        .into_par_iter()
        .for_each(|piece| {
            let (block, chunk) = (piece / col_chunks, piece % col_chunks);
            let row_range = block * mc..((block + 1) * mc).min(rows);
            let first_strip = chunk * strips_per_chunk;
            let strip_range = first_strip..(first_strip + strips_per_chunk).min(strips);
            // SAFETY: pieces own disjoint (row range × column range) blocks of `y`, no element is
            // written by two pieces, and `y` outlives the parallel loop.
            unsafe { compute_block(kernel, x, w, row_range, strip_range, out) };
        });
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: writers through this pointer touch disjoint elements (see `matmul_packed`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Fills rows `row_range` × the columns of strips `strip_range` (each [`PR`] panels) of `y`.
///
/// # Safety
/// `out` points to a `[rows, w.n]` buffer with `rows ≥ row_range.end`, and no other thread touches
/// this block.
unsafe fn compute_block(
    kernel: Kernel,
    x: &[f32],
    w: &PackedMatrix,
    row_range: std::ops::Range<usize>,
    strip_range: std::ops::Range<usize>,
    out: OutPtr,
) {
    let (n, k) = (w.n, w.k);
    let panels = n.div_ceil(NR);
    let w_base: *const f32 = w.lanes.as_ptr().cast();
    let micro_blocks = row_range.len().div_ceil(MR);
    for strip in strip_range.clone() {
        let panel = strip * PR;
        let p = PR.min(panels - panel);
        let col = panel * NR;
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            // The slice of `W` this block uses next: the same panels further along `k`, or the
            // next strip's first slice. Its lines are prefetched while this slice is computed,
            // shared evenly among the row micro-blocks, so a slice coming from memory does not
            // stall the first micro-block that reads it.
            let next = if k0 + KC < k {
                Some((panel, k0 + KC))
            } else {
                (strip + 1 < strip_range.end).then_some((panel + PR, 0))
            };
            let (next_w, next_kc) = next.map_or((w_base, 0), |(panel, k0)| {
                (w_base.wrapping_add((panel * k + k0) * NR), KC.min(k - k0))
            });
            let mut row = row_range.start;
            let mut block = 0;
            while row < row_range.end {
                let m = MR.min(row_range.end - row);
                let first_line = next_kc * block / micro_blocks;
                let last_line = next_kc * (block + 1) / micro_blocks;
                let tile = Tile {
                    // SAFETY (all four offsets): `row < rows`, `k0 < k`, `panel < panels` and
                    // `col < n`, so each pointer is inside its buffer.
                    x: unsafe { x.as_ptr().add(row * k + k0) },
                    x_stride: k,
                    w: unsafe { w_base.add((panel * k + k0) * NR) },
                    w_stride: k * NR,
                    kc,
                    y: unsafe { out.0.add(row * n + col) },
                    y_stride: n,
                    cols: n - col,
                    accumulate: k0 > 0,
                    prefetch: next_w.wrapping_add(first_line * NR),
                    prefetch_lines: last_line - first_line,
                };
                // SAFETY: `tile` describes `m` rows of `x` and `y` and `p` panels that exist.
                unsafe { kernel.run(m, p, &tile) };
                row += m;
                block += 1;
            }
        }
    }
}

/// One micro-tile: `m` rows (stride `x_stride`) of `x` from `x`, `kc` steps of `k`; `p` panels of
/// `W` (stride `w_stride`) from `w`; the `m × p·NR` block of `y` (stride `y_stride`) at `y`, of
/// which only the first `cols` columns exist. With `accumulate`, the block of `y` holds the sums
/// over the previous slices of `k` and the chains continue from them.
struct Tile {
    x: *const f32,
    x_stride: usize,
    w: *const f32,
    w_stride: usize,
    kc: usize,
    y: *mut f32,
    y_stride: usize,
    cols: usize,
    accumulate: bool,
    /// `prefetch_lines` lanes of each of the tile's panels from `prefetch` (stride `w_stride`
    /// between panels) are wanted soon: a hint for the AVX-512 kernel (at most `kc` lanes are
    /// prefetched), never dereferenced; the portable kernel ignores it.
    prefetch: *const f32,
    prefetch_lines: usize,
}

/// A micro-kernel instance for a fixed (rows, panels) shape.
type TileFn = unsafe fn(&Tile);

/// The micro-kernel implementation chosen for this CPU. Both give batch-invariant results; they
/// differ from each other (a fused multiply-add rounds once, a multiply then an add twice).
#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Portable,
}

/// `[$f::<1, P>, …, $f::<MR, P>]` for each `P` in `1..=PR`.
macro_rules! tile_table {
    ($f:ident) => {
        [
            tile_table!(@row $f, 1),
            tile_table!(@row $f, 2),
        ]
    };
    (@row $f:ident, $p:literal) => {
        [
            $f::<1, $p> as TileFn,
            $f::<2, $p>,
            $f::<3, $p>,
            $f::<4, $p>,
            $f::<5, $p>,
            $f::<6, $p>,
            $f::<7, $p>,
            $f::<8, $p>,
            $f::<9, $p>,
            $f::<10, $p>,
            $f::<11, $p>,
            $f::<12, $p>,
        ]
    };
}

#[cfg(target_arch = "x86_64")]
static AVX512_TILES: [[TileFn; MR]; PR] = tile_table!(avx512_tile);
static PORTABLE_TILES: [[TileFn; MR]; PR] = tile_table!(portable_tile);

#[cfg(target_arch = "x86_64")]
use avx512::tile as avx512_tile;

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Self::Avx512;
        }
        Self::Portable
    }

    /// Runs the `m`-row, `p`-panel micro-kernel on `tile`.
    ///
    /// # Safety
    /// `tile`'s pointers cover `m` rows of `x` and `y` and `p` panels of `W` as [`Tile`] describes.
    #[inline]
    unsafe fn run(self, m: usize, p: usize, tile: &Tile) {
        let table = match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => &AVX512_TILES,
            Self::Portable => &PORTABLE_TILES,
        };
        // SAFETY: AVX-512F was detected at run time when `table` is the AVX-512 one; the caller
        // vouches for the pointers.
        unsafe { table[p - 1][m - 1](tile) }
    }
}

/// Portable micro-kernel: the same loop as the AVX-512 one with a multiply and an add per step.
/// Rust never contracts them into a fused multiply-add, so the order and rounding are fixed.
///
/// # Safety
/// As [`Kernel::run`].
unsafe fn portable_tile<const M: usize, const P: usize>(t: &Tile) {
    let mut acc = [[[0.0f32; NR]; P]; M];
    if t.accumulate {
        for (r, acc_row) in acc.iter_mut().enumerate() {
            for (j, acc) in acc_row.iter_mut().enumerate() {
                for (c, a) in acc
                    .iter_mut()
                    .enumerate()
                    .take(t.cols.saturating_sub(j * NR))
                {
                    // SAFETY: column j·NR + c < cols exists in row r of `y`.
                    *a = unsafe { *t.y.add(r * t.y_stride + j * NR + c) };
                }
            }
        }
    }
    for i in 0..t.kc {
        // SAFETY: i < kc, so every lane and `x` element read is inside the tile.
        let lanes: [&[f32; NR]; P] =
            std::array::from_fn(|j| unsafe { &*t.w.add(j * t.w_stride + i * NR).cast() });
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let xv = unsafe { *t.x.add(r * t.x_stride + i) };
            for (acc, lane) in acc_row.iter_mut().zip(lanes) {
                for (a, &wv) in acc.iter_mut().zip(lane) {
                    *a += xv * wv;
                }
            }
        }
    }
    for (r, acc_row) in acc.iter().enumerate() {
        for (j, acc) in acc_row.iter().enumerate() {
            for (c, &a) in acc.iter().enumerate().take(t.cols.saturating_sub(j * NR)) {
                // SAFETY: as for the load above.
                unsafe { *t.y.add(r * t.y_stride + j * NR + c) = a };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{NR, Tile};

    /// The AVX-512 micro-kernel: `M × P` accumulator vectors, one broadcast of `x` per row and one
    /// FMA per (row, panel) for each step of `k`.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `t` is as [`super::Kernel::run`] requires.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const M: usize, const P: usize>(t: &Tile) {
        // Columns of each panel that exist in `y` (the last panel of `W` may be padding).
        let masks: [__mmask16; P] = std::array::from_fn(|j| {
            let cols = t.cols.saturating_sub(j * NR).min(NR);
            ((1u32 << cols) - 1) as __mmask16
        });
        let mut acc = [[_mm512_setzero_ps(); P]; M];
        if t.accumulate {
            for (r, acc_row) in acc.iter_mut().enumerate() {
                for (j, a) in acc_row.iter_mut().enumerate() {
                    // SAFETY: the masked load reads only columns that exist in row r of `y`.
                    *a = unsafe {
                        _mm512_maskz_loadu_ps(masks[j], t.y.add(r * t.y_stride + j * NR))
                    };
                }
            }
        }
        let (mut x, mut w) = (t.x, t.w);
        for i in 0..t.kc {
            if i < t.prefetch_lines {
                for j in 0..P {
                    let line = t.prefetch.wrapping_add(j * t.w_stride + i * NR);
                    // Prefetches never fault, whatever the address.
                    _mm_prefetch::<_MM_HINT_T1>(line.cast());
                }
            }
            // SAFETY: fewer than kc steps taken, so each lane (64-byte aligned) and `x` element is
            // inside the tile.
            unsafe {
                let lanes: [__m512; P] =
                    std::array::from_fn(|j| _mm512_load_ps(w.add(j * t.w_stride)));
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*x.add(r * t.x_stride));
                    for (a, lane) in acc_row.iter_mut().zip(lanes) {
                        *a = _mm512_fmadd_ps(xv, lane, *a);
                    }
                }
                x = x.add(1);
                w = w.add(NR);
            }
        }
        for (r, acc_row) in acc.iter().enumerate() {
            for (j, a) in acc_row.iter().enumerate() {
                // SAFETY: the masked store writes only columns that exist in row r of `y`.
                unsafe { _mm512_mask_storeu_ps(t.y.add(r * t.y_stride + j * NR), masks[j], *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::pseudo_random;

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

    #[test]
    fn matches_a_float64_reference_for_odd_shapes() {
        for &(rows, k, n) in &[
            (1, 1, 1),
            (3, 17, 5),
            (7, 64, 9),
            (70, 33, 130),
            (5, 172, 64),
            (13, 600, 50),
            (200, 300, 33),
            (2, 0, 3),
        ] {
            let x = pseudo_random(rows * k, 1);
            let w = pseudo_random(n * k, 2);
            let mut y = vec![f32::NAN; rows * n];
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
        // n and k are not multiples of the panel width, the micro-tile or the k slice.
        for &(k, n) in &[(100, 37), (KC + 77, 3 * NR * PR + 5)] {
            let w = PackedMatrix::pack(&pseudo_random(n * k, 3), n, k);
            let pool = pseudo_random(40 * k, 4);
            let alone: Vec<Vec<f32>> = (0..40)
                .map(|r| {
                    let mut y = vec![0.0; n];
                    matmul_packed(&pool[r * k..(r + 1) * k], 1, &w, &mut y);
                    y
                })
                .collect();
            for rows in 1..=40 {
                // Row i of the batch is pool row (i + rows) % 40, so each pool row is seen at many
                // positions across the batch sizes.
                let batch: Vec<f32> = (0..rows)
                    .flat_map(|i| pool[(i + rows) % 40 * k..][..k].iter().copied())
                    .collect();
                let mut y = vec![0.0; rows * n];
                matmul_packed(&batch, rows, &w, &mut y);
                for i in 0..rows {
                    assert_eq!(
                        y[i * n..(i + 1) * n],
                        alone[(i + rows) % 40],
                        "k {k}, n {n}: row {i} of a batch of {rows}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_large_batch_spans_row_blocks_with_the_same_bits() {
        let (k, n) = (3000, 20);
        let rows = 2 * (MC_BYTES / (4 * k) / MR * MR) + 5;
        let w = PackedMatrix::pack(&pseudo_random(n * k, 5), n, k);
        let x = pseudo_random(rows * k, 6);
        let mut all = vec![0.0; rows * n];
        matmul_packed(&x, rows, &w, &mut all);
        for r in 0..rows {
            let mut alone = vec![0.0; n];
            matmul_packed(&x[r * k..(r + 1) * k], 1, &w, &mut alone);
            assert_eq!(alone, all[r * n..(r + 1) * n], "row {r}");
        }
    }

    #[test]
    fn the_portable_kernel_is_batch_invariant_too() {
        let (k, n) = (KC + 9, 2 * NR + 3);
        let w = PackedMatrix::pack(&pseudo_random(n * k, 7), n, k);
        let x = pseudo_random(MR * 3 * k, 8);
        let rows = x.len() / k;
        let run = |x: &[f32], rows: usize| {
            let mut y = vec![0.0; rows * n];
            let strips = n.div_ceil(NR).div_ceil(PR);
            // SAFETY: one block covering all of `y`, on this thread only.
            unsafe {
                compute_block(
                    Kernel::Portable,
                    x,
                    &w,
                    0..rows,
                    0..strips,
                    OutPtr(y.as_mut_ptr()),
                )
            };
            y
        };
        let all = run(&x, rows);
        let want = reference(&x, rows, k, &w_rows(&w), n);
        for (got, want) in all.iter().zip(&want) {
            assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
        }
        for r in 0..rows {
            assert_eq!(
                run(&x[r * k..(r + 1) * k], 1),
                all[r * n..(r + 1) * n],
                "row {r}"
            );
        }
    }

    /// Unpacks `w` through [`PackedMatrix::copy_row`].
    fn w_rows(w: &PackedMatrix) -> Vec<f32> {
        let mut out = vec![0.0; w.rows() * w.cols()];
        for (j, row) in out.chunks_exact_mut(w.cols()).enumerate() {
            w.copy_row(j, row);
        }
        out
    }

    #[test]
    fn packing_round_trips_and_stacks_parts() {
        let (n, k) = (37, 11);
        let w = pseudo_random(n * k, 9);
        assert_eq!(w_rows(&PackedMatrix::pack(&w, n, k)), w);
        let mut stacked = PackedMatrix::zeros(n, k);
        stacked.set_rows(20, &w[20 * k..]);
        stacked.set_rows(0, &w[..20 * k]);
        assert_eq!(w_rows(&stacked), w);
    }
}

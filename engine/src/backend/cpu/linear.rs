//! `y = x·Wᵀ` for row-major `x [rows, k]` and `W [n, k]` (the layout Hugging Face stores), the CPU
//! backend's only GEMM.
//!
//! Why our own kernel rather than a BLAS: docs/design.md §3 "batching is invisible" must hold to the bit, so
//! every output element `y[r, j]` is accumulated in one fixed order — a single chain
//! `acc = 0`, `acc += x[r, p]·W[j, p]` for `p = 0, 1, …, k-1` — whatever the number of rows, the
//! tile the element falls in, the blocking over `k` (a partial sum is parked in `y` as an exact
//! `f32` and picked up again) or the thread that computes it. A BLAS picks its blocking and
//! reduction order from the problem shape, so a row's numbers would change with the batch.
//!
//! Three micro-kernels run that chain, the best the CPU supports chosen at run time: AVX-512, AVX2
//! with FMA, and a portable one. The two SIMD kernels do one fused multiply-add per step, so they
//! give the same bits as each other (each element is the same sequence of correctly rounded FMAs;
//! vector width and tile shape only decide which elements are computed side by side); the portable
//! kernel rounds the product and the sum separately, so its bits differ from theirs, though it too
//! is batch-invariant.
//!
//! The design is the classic BLIS one. `W` is packed once, at load, into [`PackedMatrix`] panels of
//! 16 output columns, `[n/16][k][16]`: one 64-byte line per `(panel, p)`, read with one aligned
//! vector load (two with AVX2). The AVX-512 micro-kernel keeps an `MR × (PR·16)` block of `y` in
//! vector registers and, per step of `k`, broadcasts one `x` value per row and does one FMA per
//! (row, panel) — no horizontal sums, no shuffles, 24 FMAs per 14 loads; the AVX2 one, with half
//! the registers of half the width, runs the same tile as register-sized sub-tiles of at most 6
//! rows × 1 panel (12 FMAs per 8 loads), each over the whole slice of `k`. Around it, `k` is cut
//! into `KC` slices so the slice of a strip of `W` stays in L1 while the row micro-blocks pass over
//! it, rows into blocks of at most `MC_BYTES` of `x` that stay in L2 while a thread's strips stream
//! past, and the (row block × column range) pieces are spread over rayon's threads. With one row
//! (decode at batch 1) the same kernel streams `W` once at memory speed.
//!
//! Model weights are packed at load ([`crate::model::Linear`]); [`matmul_nt`] packs on the fly for
//! small matrices that are not.

use rayon::prelude::*;

/// Output columns per packed panel: one AVX-512 vector of `f32`, two AVX2 ones.
const NR: usize = 16;
/// Rows of `x` per micro-tile: with [`PR`] panels, `MR·PR` = 24 of the 32 AVX-512 registers hold
/// accumulators, leaving room for the `W` loads and the broadcast. (The AVX2 kernel splits the tile
/// into sub-tiles that fit its 16 registers.)
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
    /// between panels) are wanted soon: a hint for the SIMD kernels (at most `kc` lanes are
    /// prefetched), never dereferenced; the portable kernel ignores it.
    prefetch: *const f32,
    prefetch_lines: usize,
}

/// A micro-kernel instance for a fixed (rows, panels) shape.
type TileFn = unsafe fn(&Tile);

/// The micro-kernel implementation chosen for this CPU. All give batch-invariant results.
/// `Avx512` and `Avx2` give the same bits (one fused multiply-add per step, which rounds once);
/// `Portable` differs from them (a multiply then an add, which round twice).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
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
#[cfg(target_arch = "x86_64")]
static AVX2_TILES: [[TileFn; MR]; PR] = tile_table!(avx2_tile);
static PORTABLE_TILES: [[TileFn; MR]; PR] = tile_table!(portable_tile);

#[cfg(target_arch = "x86_64")]
use {avx2::tile as avx2_tile, avx512::tile as avx512_tile};

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
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
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => &AVX2_TILES,
            Self::Portable => &PORTABLE_TILES,
        };
        // SAFETY: AVX-512F was detected at run time when `table` is the AVX-512 one, AVX2 and FMA
        // when it is the AVX2 one; the caller vouches for the pointers.
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{NR, Tile};

    /// Rows per sub-tile: 6 rows × 2 vectors of accumulators, the 2 vectors of a lane of `W` and
    /// the broadcast take 15 of the 16 AVX2 registers.
    const SUB_ROWS: usize = 6;
    /// `f32`s per AVX2 vector: a lane of [`NR`] is two of them.
    const HALF: usize = NR / 2;

    /// The AVX2 micro-kernel: the `M × P` tile as register-sized sub-tiles, each running the
    /// whole slice of `k` (which stays in L1) for its rows and panels. Every element of `y` gets
    /// the same chain of fused multiply-adds as in the AVX-512 kernel — starting from 0 or the
    /// parked partial sum, one correctly rounded FMA per step of `k` in order — so both kernels
    /// give the same bits; how elements are grouped into vectors and sub-tiles touches no chain.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; `t` is as [`super::Kernel::run`] requires.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const M: usize, const P: usize>(t: &Tile) {
        // SAFETY (every call below): its rows and panels are inside the tile.
        if P == 2 && M <= 2 {
            // Few rows: both panels in one pass, for 4·M independent FMA chains per step.
            match M {
                1 => unsafe { sub_tile::<1, 2>(t, 0, 0, t.prefetch_lines) },
                _ => unsafe { sub_tile::<2, 2>(t, 0, 0, t.prefetch_lines) },
            }
            return;
        }
        // Rows split evenly (7 = 3 + 4, not 6 + 1), so no sub-tile has too few chains.
        let parts = M.div_ceil(SUB_ROWS);
        for panel in 0..P {
            for part in 0..parts {
                let row = M * part / parts;
                let rows = M * (part + 1) / parts - row;
                // The first pass over a panel prefetches that panel's next slice.
                let prefetch_lines = if part == 0 { t.prefetch_lines } else { 0 };
                unsafe {
                    match rows {
                        1 => sub_tile::<1, 1>(t, row, panel, prefetch_lines),
                        2 => sub_tile::<2, 1>(t, row, panel, prefetch_lines),
                        3 => sub_tile::<3, 1>(t, row, panel, prefetch_lines),
                        4 => sub_tile::<4, 1>(t, row, panel, prefetch_lines),
                        5 => sub_tile::<5, 1>(t, row, panel, prefetch_lines),
                        _ => sub_tile::<SUB_ROWS, 1>(t, row, panel, prefetch_lines),
                    }
                }
            }
        }
    }

    /// Rows `row..row + R` × panels `panel..panel + Q` of `t`, over all `kc` steps; prefetches
    /// `prefetch_lines` lanes of each of its panels' next slice.
    ///
    /// # Safety
    /// As [`tile`]; the rows and panels are inside `t`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sub_tile<const R: usize, const Q: usize>(
        t: &Tile,
        row: usize,
        panel: usize,
        prefetch_lines: usize,
    ) {
        // SAFETY: row `row` and column `panel·NR` exist in `y` and `x`, panel `panel` in `W`.
        let (y, x, w) = unsafe {
            (
                t.y.add(row * t.y_stride + panel * NR),
                t.x.add(row * t.x_stride),
                t.w.add(panel * t.w_stride),
            )
        };
        // Columns of each panel that exist in `y` (the last panel of `W` may be padding).
        let cols: [usize; Q] = std::array::from_fn(|j| t.cols.saturating_sub((panel + j) * NR));
        let mut acc = [[[_mm256_setzero_ps(); 2]; Q]; R];
        if t.accumulate {
            for (r, acc_row) in acc.iter_mut().enumerate() {
                for (j, a) in acc_row.iter_mut().enumerate() {
                    // SAFETY: reads only columns that exist in row r of `y`.
                    *a = unsafe { load_lane(y.add(r * t.y_stride + j * NR), cols[j]) };
                }
            }
        }
        let prefetch = t.prefetch.wrapping_add(panel * t.w_stride);
        let (mut x, mut w) = (x, w);
        for i in 0..t.kc {
            if i < prefetch_lines {
                for j in 0..Q {
                    let line = prefetch.wrapping_add(j * t.w_stride + i * NR);
                    // Prefetches never fault, whatever the address.
                    _mm_prefetch::<_MM_HINT_T1>(line.cast());
                }
            }
            // SAFETY: fewer than kc steps taken, so each lane (64-byte aligned) and `x` element is
            // inside the tile.
            unsafe {
                let lanes: [[__m256; 2]; Q] = std::array::from_fn(|j| {
                    let lane = w.add(j * t.w_stride);
                    [_mm256_load_ps(lane), _mm256_load_ps(lane.add(HALF))]
                });
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    let xv = _mm256_set1_ps(*x.add(r * t.x_stride));
                    for (a, lane) in acc_row.iter_mut().zip(lanes) {
                        a[0] = _mm256_fmadd_ps(xv, lane[0], a[0]);
                        a[1] = _mm256_fmadd_ps(xv, lane[1], a[1]);
                    }
                }
                x = x.add(1);
                w = w.add(NR);
            }
        }
        for (r, acc_row) in acc.iter().enumerate() {
            for (j, a) in acc_row.iter().enumerate() {
                // SAFETY: writes only columns that exist in row r of `y`.
                unsafe { store_lane(y.add(r * t.y_stride + j * NR), cols[j], *a) };
            }
        }
    }

    /// Lane masks for the first `cols` columns of a lane: all-ones elements where they exist.
    #[target_feature(enable = "avx2")]
    fn masks(cols: usize) -> [__m256i; 2] {
        let cols = _mm256_set1_epi32(cols.min(NR) as i32);
        let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let half = _mm256_set1_epi32(HALF as i32);
        [
            _mm256_cmpgt_epi32(cols, index),
            _mm256_cmpgt_epi32(cols, _mm256_add_epi32(index, half)),
        ]
    }

    /// Loads the first `cols` columns of the lane at `y` (zeros past them), reading no others.
    ///
    /// # Safety
    /// The CPU supports AVX2; `min(cols, NR)` floats from `y` are readable.
    #[target_feature(enable = "avx2")]
    unsafe fn load_lane(y: *const f32, cols: usize) -> [__m256; 2] {
        let high = y.wrapping_add(HALF);
        // SAFETY: whole lanes are in bounds; a masked load touches only its selected elements.
        unsafe {
            if cols >= NR {
                [_mm256_loadu_ps(y), _mm256_loadu_ps(high)]
            } else {
                let [low_mask, high_mask] = masks(cols);
                [
                    _mm256_maskload_ps(y, low_mask),
                    _mm256_maskload_ps(high, high_mask),
                ]
            }
        }
    }

    /// Stores the first `cols` columns of `lane` at `y`, writing no others.
    ///
    /// # Safety
    /// The CPU supports AVX2; `min(cols, NR)` floats from `y` are writable.
    #[target_feature(enable = "avx2")]
    unsafe fn store_lane(y: *mut f32, cols: usize, lane: [__m256; 2]) {
        let high = y.wrapping_add(HALF);
        // SAFETY: as in `load_lane`.
        unsafe {
            if cols >= NR {
                _mm256_storeu_ps(y, lane[0]);
                _mm256_storeu_ps(high, lane[1]);
            } else {
                let [low_mask, high_mask] = masks(cols);
                _mm256_maskstore_ps(y, low_mask, lane[0]);
                _mm256_maskstore_ps(high, high_mask, lane[1]);
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

    /// `x·Wᵀ` for `x [rows, k]` computed by `kernel` as one block on this thread.
    fn run_kernel(kernel: Kernel, x: &[f32], rows: usize, w: &PackedMatrix) -> Vec<f32> {
        let mut y = vec![f32::NAN; rows * w.rows()];
        let strips = w.rows().div_ceil(NR).div_ceil(PR);
        // SAFETY: one block covering all of `y`, on this thread only.
        unsafe { compute_block(kernel, x, w, 0..rows, 0..strips, OutPtr(y.as_mut_ptr())) };
        y
    }

    #[test]
    fn the_portable_kernel_is_batch_invariant_too() {
        let (k, n) = (KC + 9, 2 * NR + 3);
        let w = PackedMatrix::pack(&pseudo_random(n * k, 7), n, k);
        let x = pseudo_random(MR * 3 * k, 8);
        let rows = x.len() / k;
        let run = |x: &[f32], rows: usize| run_kernel(Kernel::Portable, x, rows, &w);
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

    /// Every kernel this CPU runs: the one [`Kernel::detect`] picks, the AVX2 one where supported
    /// (also on AVX-512 machines, so it is checked there too), and the portable one.
    fn kernels_here() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::detect()];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            kernels.push(Kernel::Avx2);
        }
        kernels.push(Kernel::Portable);
        kernels.dedup();
        kernels
    }

    /// Each `y[r, j]` as the module doc's chain: `acc = 0`, then per step of `k` in order either
    /// one fused multiply-add (`fused`) or a rounded product added to `acc`.
    fn chain_reference(
        x: &[f32],
        rows: usize,
        k: usize,
        w: &[f32],
        n: usize,
        fused: bool,
    ) -> Vec<f32> {
        let mut y = vec![0.0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let (xr, wj) = (&x[r * k..][..k], &w[j * k..][..k]);
                y[r * n + j] = xr.iter().zip(wj).fold(0.0f32, |acc, (&xv, &wv)| {
                    if fused {
                        xv.mul_add(wv, acc)
                    } else {
                        acc + xv * wv
                    }
                });
            }
        }
        y
    }

    #[test]
    fn every_kernel_here_computes_each_element_as_the_fixed_chain_to_the_bit() {
        let kernels = kernels_here();
        // The kernel the GEMM uses is always checked, whatever the CPU.
        assert_eq!(kernels[0], Kernel::detect());
        // k past KC parks partial sums in `y`; n leaves partial last panels of 5 and 13 columns;
        // 1..=13 rows reach every micro-tile shape (13 = 12 + 1).
        for &(k, n) in &[
            (KC + 77, 3 * NR * PR + 5),
            (2 * KC + 3, 2 * NR + 13),
            (7, 3),
        ] {
            let w = pseudo_random(n * k, 10);
            let packed = PackedMatrix::pack(&w, n, k);
            let x = pseudo_random(13 * k, 11);
            for &kernel in &kernels {
                let fused = !matches!(kernel, Kernel::Portable);
                for rows in 1..=13 {
                    let x = &x[..rows * k];
                    let got = run_kernel(kernel, x, rows, &packed);
                    let want = chain_reference(x, rows, k, &w, n, fused);
                    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{kernel:?}, k {k}, n {n}, {rows} rows: element {i} is {got}, \
                             the chain gives {want}"
                        );
                    }
                }
            }
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

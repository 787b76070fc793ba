//! `y = x·Wᵀ` with `W` quantized to Q8_0 (`--quantize int8`): llama.cpp's block scheme and
//! rounding rule, so a comparison with its Q8_0 files streams the same bytes per weight.
//!
//! **Blocks.** Each row of `W` is cut along `k` into blocks of [`QK`] = 32 values, stored as 32
//! int8 `q = round(w/d)` with `d = max|w|/127` and the scale `d` as f16 (34 bytes per 32 values,
//! as llama.cpp's `block_q8_0`; an f32 scale would stream 6 % more bytes per decode step for no
//! accuracy that the int8 values keep). A `k` that is not a multiple of 32 is zero-padded to one:
//! zeros add nothing to any dot product, so no shape is refused.
//!
//! **Activations.** Each row of `x` is quantized the same way, per block of 32, with an f32 scale
//! (computed per call, so there are no bytes to save); a row's quantization depends on that row
//! alone, so batching stays invisible (docs/design.md §3).
//!
//! **The chain.** Every output `y[r, j]` is `acc = 0`, then for each block `b` in `k` order:
//! `acc = acc + (isum as f32)·(dx·dw)`, where `isum` is the exact int32 dot of the two blocks'
//! int8 values (at most 32·127² in size, so exact in f32 too), each product and sum rounded once.
//! No fused multiply-add, so the AVX2 kernel and the portable one give identical bits, whatever
//! the batch, tile or thread.
//!
//! **Layout.** Rows of `W` are grouped in panels of [`QN`] = 8 outputs; a panel holds, per block,
//! the 8 rows' 32-byte blocks side by side (256 bytes) and their 8 scales (16 bytes). The AVX2
//! kernel loads one block per output, multiplies it by the activation block with
//! `vpmaddubsw` (after moving the activation's sign onto the weight, `vpsignb`, since that
//! instruction takes one unsigned operand) and `vpmaddwd`, reduces the 8 outputs' partial sums
//! into one vector with horizontal adds, and scales and accumulates the 8 outputs at once. With one
//! row (decode at batch 1) it streams `W` once; with more, a tile of up to [`MR`] rows reuses each
//! panel block from L1.

use half::f16;
use rayon::prelude::*;
use std::cell::RefCell;

use super::linear::{OutPtr, for_each_piece};

/// Values per quantization block (llama.cpp's `QK8_0`).
const QK: usize = 32;
/// Outputs (rows of `W`) per panel: one AVX2 vector of f32 accumulators.
const QN: usize = 8;
/// Rows of `x` per micro-tile.
const MR: usize = 4;
/// Rows of `x` from which the activations are quantized on rayon's threads.
const PARALLEL_QUANTIZE_ROWS: usize = 16;
/// Bytes of quantized `x` per row block: the block stays in L2 while a thread's panels pass.
const MC_BYTES: usize = 256 << 10;

/// One block's 32 int8 values, aligned for one 32-byte vector load.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Block([i8; QK]);

const ZERO_BLOCK: Block = Block([0; QK]);

/// Quantizes `values` (at most [`QK`]; missing ones are zeros) into `out` and returns the scale
/// `d = max|v|/127`, with `q = round(v/d)` computed as llama.cpp's reference does (`v·(1/d)`,
/// rounded half away from zero), so `|q| ≤ 127`.
fn quantize_block(values: &[f32], out: &mut Block) -> f32 {
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    out.0 = [0; QK];
    for (q, &v) in out.0.iter_mut().zip(values) {
        *q = (v * id).round().clamp(-127.0, 127.0) as i8;
    }
    d
}

/// A matrix `W [n, k]` in Q8_0 panels (see the module doc): `n/8` panels (rounded up, the last
/// zero-padded) of `k/32` blocks (rounded up, the last zero-padded).
#[derive(Clone)]
pub struct Q8Matrix {
    /// `[panel][block][QN]` blocks.
    quants: Vec<Block>,
    /// `[panel][block][QN]` scales.
    scales: Vec<f16>,
    n: usize,
    k: usize,
}

impl Q8Matrix {
    /// An all-zero `[n, k]` matrix, to be filled with [`set_row`](Self::set_row).
    pub fn zeros(n: usize, k: usize) -> Self {
        let slots = n.div_ceil(QN) * k.div_ceil(QK) * QN;
        Self {
            quants: vec![ZERO_BLOCK; slots],
            scales: vec![f16::ZERO; slots],
            n,
            k,
        }
    }

    fn blocks(&self) -> usize {
        self.k.div_ceil(QK)
    }

    /// Index of row `j`'s block `b` in `quants` and `scales`.
    fn slot(&self, j: usize, b: usize) -> usize {
        ((j / QN) * self.blocks() + b) * QN + j % QN
    }

    /// Quantizes `row` (`k` values) into row `j`.
    pub fn set_row(&mut self, j: usize, row: &[f32]) {
        debug_assert_eq!(row.len(), self.k, "a row has k values");
        for (b, values) in row.chunks(QK).enumerate() {
            let slot = self.slot(j, b);
            self.scales[slot] = f16::from_f32(quantize_block(values, &mut self.quants[slot]));
        }
    }

    /// Row `j` dequantized (`q·d`, each value exactly as the GEMM sees it) into `out[..k]`.
    pub fn copy_row(&self, j: usize, out: &mut [f32]) {
        for (b, chunk) in out[..self.k].chunks_mut(QK).enumerate() {
            let slot = self.slot(j, b);
            let d = self.scales[slot].to_f32();
            for (o, &q) in chunk.iter_mut().zip(&self.quants[slot].0) {
                *o = f32::from(q) * d;
            }
        }
    }

    /// Bytes the blocks and scales occupy, padding included.
    pub fn size_bytes(&self) -> usize {
        self.quants.len() * QK + self.scales.len() * 2
    }
}

/// `x` quantized row by row: `[rows][k/32]` blocks and their f32 scales.
#[derive(Default)]
struct QuantizedRows {
    quants: Vec<Block>,
    scales: Vec<f32>,
}

impl QuantizedRows {
    /// Quantizes `x [rows, k]` into `self` (resized), each row on its own — on rayon's threads
    /// for a prefill-sized batch, on this one for a few rows, where handing work to the pool
    /// would cost more than the work (the result is the same either way).
    fn fill(&mut self, x: &[f32], rows: usize, k: usize) {
        let blocks = k.div_ceil(QK);
        self.quants.resize(rows * blocks, ZERO_BLOCK);
        self.scales.resize(rows * blocks, 0.0);
        let quantize_row = |((quants, scales), row): ((&mut [Block], &mut [f32]), &[f32])| {
            for ((q, d), values) in quants.iter_mut().zip(scales).zip(row.chunks(QK)) {
                *d = quantize_block(values, q);
            }
        };
        if rows < PARALLEL_QUANTIZE_ROWS {
            self.quants
                .chunks_mut(blocks)
                .zip(self.scales.chunks_mut(blocks))
                .zip(x.chunks(k))
                .for_each(quantize_row);
        } else {
            self.quants
                .par_chunks_mut(blocks)
                .zip(self.scales.par_chunks_mut(blocks))
                .zip(x.par_chunks(k))
                .for_each(quantize_row);
        }
    }
}

thread_local! {
    /// The calling thread's quantized activations, reused from call to call (no allocation per
    /// GEMM once the largest batch has been seen).
    static ACTIVATIONS: RefCell<QuantizedRows> = RefCell::default();
}

/// Computes `y = x·Wᵀ` for `x [rows, k]` and Q8_0 `w [n, k]`, overwriting `y` (`[rows, n]`).
pub fn matmul(x: &[f32], rows: usize, w: &Q8Matrix, y: &mut [f32]) {
    assert_eq!(x.len(), rows * w.k, "x must be [rows, k]");
    assert_eq!(y.len(), rows * w.n, "y must be [rows, n]");
    if rows == 0 || w.n == 0 {
        return;
    }
    if w.k == 0 {
        y.fill(0.0);
        return;
    }
    // Taken out for the call and put back, so a GEMM nested in another on this thread (a rayon
    // worker stealing work while it waits) finds an empty buffer rather than a borrowed one.
    let mut xq = ACTIVATIONS.take();
    xq.fill(x, rows, w.k);
    matmul_quantized(Kernel::detect(), &xq, rows, w, y);
    ACTIVATIONS.set(xq);
}

/// [`matmul`] on rows already quantized, spread over rayon's threads in (row block × panel range)
/// pieces, each computed by `kernel`.
fn matmul_quantized(kernel: Kernel, xq: &QuantizedRows, rows: usize, w: &Q8Matrix, y: &mut [f32]) {
    let panels = w.n.div_ceil(QN);
    let max_block = (MC_BYTES / w.k.next_multiple_of(QK) / MR).max(1) * MR;
    let out = OutPtr(y.as_mut_ptr());
    for_each_piece(rows, panels, max_block, MR, |row_range, panel_range| {
        // SAFETY: pieces own disjoint (row range × panel range) blocks of `y`, and `y`
        // outlives the parallel loop.
        unsafe { compute_block(kernel, xq, w, row_range, panel_range, out) };
    });
}

/// Fills rows `row_range` × the columns of panels `panel_range` of `y`: panel by panel, each
/// passed over by the row tiles while its blocks stay in L1.
///
/// # Safety
/// `out` points to a `[rows, w.n]` buffer with `rows ≥ row_range.end`, `xq` holds those rows,
/// and no other thread touches this block.
unsafe fn compute_block(
    kernel: Kernel,
    xq: &QuantizedRows,
    w: &Q8Matrix,
    row_range: std::ops::Range<usize>,
    panel_range: std::ops::Range<usize>,
    out: OutPtr,
) {
    let blocks = w.blocks();
    for panel in panel_range {
        let col = panel * QN;
        let mut row = row_range.start;
        while row < row_range.end {
            let m = MR.min(row_range.end - row);
            let slot = row * blocks;
            let tile = Tile {
                x: xq.quants[slot..].as_ptr(),
                dx: xq.scales[slot..].as_ptr(),
                blocks,
                w: w.quants[panel * blocks * QN..].as_ptr(),
                dw: w.scales[panel * blocks * QN..].as_ptr(),
                // SAFETY: `row < rows` and `col < n`, so the pointer is inside `y`.
                y: unsafe { out.0.add(row * w.n + col) },
                y_stride: w.n,
                cols: (w.n - col).min(QN),
            };
            // SAFETY: `tile` covers `m` rows of `xq` and `y` and one panel of `w`.
            unsafe { kernel.run(m, &tile) };
            row += m;
        }
    }
}

/// One micro-tile: `m` rows of quantized `x` (row `r`'s blocks and scales at `r·blocks` from `x`
/// and `dx`), one panel of `W` (`blocks` × [`QN`] blocks and scales from `w` and `dw`), and the
/// `m × QN` block of `y` (stride `y_stride`) at `y`, of which the first `cols` columns exist.
struct Tile {
    x: *const Block,
    dx: *const f32,
    blocks: usize,
    w: *const Block,
    dw: *const f16,
    y: *mut f32,
    y_stride: usize,
    cols: usize,
}

impl Tile {
    /// Writes the first `cols` of `acc` to row `r` of the tile's `y`.
    ///
    /// # Safety
    /// Row `r` of the tile exists.
    unsafe fn store(&self, r: usize, acc: &[f32; QN]) {
        // SAFETY: the first `cols` columns of row r exist (the caller vouches for the row).
        let y = unsafe { std::slice::from_raw_parts_mut(self.y.add(r * self.y_stride), self.cols) };
        y.copy_from_slice(&acc[..self.cols]);
    }
}

/// A micro-kernel instance for a fixed number of rows.
type TileFn = unsafe fn(&Tile);

/// The kernel chosen for this CPU; both give identical bits (the module doc's chain).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            return Self::Avx2;
        }
        Self::Portable
    }

    /// Runs the `m`-row micro-kernel on `tile`.
    ///
    /// # Safety
    /// `tile`'s pointers cover `m` rows and one panel as [`Tile`] describes.
    unsafe fn run(self, m: usize, tile: &Tile) {
        let table: &[TileFn; MR] = match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => &[
                avx2::tile::<1>,
                avx2::tile::<2>,
                avx2::tile::<3>,
                avx2::tile::<4>,
            ],
            Self::Portable => &[
                portable_tile::<1>,
                portable_tile::<2>,
                portable_tile::<3>,
                portable_tile::<4>,
            ],
        };
        // SAFETY: AVX2 and F16C were detected at run time when `self` is `Avx2`; the caller
        // vouches for the pointers.
        unsafe { table[m - 1](tile) }
    }
}

/// Portable micro-kernel: the module doc's chain, one output at a time.
///
/// # Safety
/// As [`Kernel::run`].
unsafe fn portable_tile<const M: usize>(t: &Tile) {
    for r in 0..M {
        let mut acc = [0.0f32; QN];
        for b in 0..t.blocks {
            // SAFETY: r < M rows and b < blocks are inside the tile.
            let (x, dx) = unsafe { (&*t.x.add(r * t.blocks + b), *t.dx.add(r * t.blocks + b)) };
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: b < blocks and j < QN are inside the panel.
                let (w, dw) = unsafe { (&*t.w.add(b * QN + j), *t.dw.add(b * QN + j)) };
                let isum: i32 =
                    x.0.iter()
                        .zip(&w.0)
                        .map(|(&a, &b)| i32::from(a) * i32::from(b))
                        .sum();
                *a += isum as f32 * (dx * dw.to_f32());
            }
        }
        // SAFETY: r < M rows of the tile.
        unsafe { t.store(r, &acc) };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{QK, QN, Tile};

    /// The exact int32 dot of the 32 int8 values at `w` and `x` (`ax` = `|x|`), as 8 partial sums.
    ///
    /// # Safety
    /// The CPU supports AVX2; `w` is a 32-byte-aligned block.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot(w: *const __m256i, x: __m256i, ax: __m256i) -> __m256i {
        // SAFETY: the caller vouches for the aligned block.
        let w = unsafe { _mm256_load_si256(w) };
        // |x|·(w·sign x) = x·w; |x|, |w| ≤ 127, so the pair sums of vpmaddubsw (≤ 2·127²) never
        // saturate.
        let products = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w, x));
        _mm256_madd_epi16(products, _mm256_set1_epi16(1))
    }

    /// Per lane `j`, the sum of the 8 lanes of `d[j]`: the block dots of the panel's 8 outputs.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn reduce(d: [__m256i; QN]) -> __m256i {
        let h01 = _mm256_hadd_epi32(d[0], d[1]);
        let h23 = _mm256_hadd_epi32(d[2], d[3]);
        let h45 = _mm256_hadd_epi32(d[4], d[5]);
        let h67 = _mm256_hadd_epi32(d[6], d[7]);
        // Low halves hold outputs 0..3's sums of lanes 0..3, high halves of lanes 4..7.
        let h0123 = _mm256_hadd_epi32(h01, h23);
        let h4567 = _mm256_hadd_epi32(h45, h67);
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(h0123, h4567),
            _mm256_permute2x128_si256::<0x31>(h0123, h4567),
        )
    }

    /// Blocks ahead of the one being multiplied whose weights are prefetched (2 KiB): at batch 1
    /// the hardware prefetcher alone leaves decode waiting on the weight stream (measured: decode
    /// b1 139 → 157 tok/s with it, the same with 16 blocks).
    const PREFETCH_BLOCKS: usize = 8;

    /// AVX2 micro-kernel: per block, each of the `M` rows' block dots with the panel's 8 outputs,
    /// reduced exactly in int32, then the chain's scale and add on the 8 outputs at once. The
    /// weights [`PREFETCH_BLOCKS`] ahead are prefetched, past the panel's end too: the next panel
    /// follows in memory and is the one the caller computes next.
    ///
    /// # Safety
    /// The CPU supports AVX2 and F16C; otherwise as [`super::Kernel::run`].
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn tile<const M: usize>(t: &Tile) {
        let mut acc = [_mm256_setzero_ps(); M];
        for b in 0..t.blocks {
            // SAFETY: b < blocks: the panel's 8 blocks and scales at b exist and the blocks are
            // aligned; rows r < M exist in `x`. A prefetch never faults, and its address is only
            // computed (wrapping), never dereferenced.
            unsafe {
                let w = t.w.add(b * QN).cast::<__m256i>();
                let ahead = w.wrapping_add(PREFETCH_BLOCKS * QN).cast::<i8>();
                for line in (0..QN * QK).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(t.dw.add(b * QN).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let slot = r * t.blocks + b;
                    let x = _mm256_load_si256(t.x.add(slot).cast());
                    let ax = _mm256_sign_epi8(x, x);
                    let isum = reduce(std::array::from_fn(|j| dot(w.add(j), x, ax)));
                    let scale = _mm256_mul_ps(_mm256_set1_ps(*t.dx.add(slot)), dw);
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), scale));
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let mut lane = [0.0f32; QN];
            // SAFETY: `lane` holds 8 floats.
            unsafe { _mm256_storeu_ps(lane.as_mut_ptr(), *acc) };
            // SAFETY: r < M rows of the tile.
            unsafe { t.store(r, &lane) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::pseudo_random;

    /// `w` quantized and dequantized: the matrix the GEMM computes on.
    fn round_trip(w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let q = quantized(w, n, k);
        let mut out = vec![f32::NAN; n * k];
        for (j, row) in out.chunks_exact_mut(k).enumerate() {
            q.copy_row(j, row);
        }
        out
    }

    #[test]
    fn quantization_round_trips_within_half_a_step_of_each_block() {
        for &(n, k) in &[(9, 64), (3, 45), (1, 1)] {
            let w = pseudo_random(n * k, 1);
            let back = round_trip(&w, n, k);
            for (j, (row, got)) in w.chunks(k).zip(back.chunks(k)).enumerate() {
                for (b, (want, got)) in row.chunks(QK).zip(got.chunks(QK)).enumerate() {
                    let amax = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    // Half a step of d = amax/127, plus |q| ≤ 127 times the f16 rounding of d
                    // (2^-11 relative).
                    let bound = amax / 254.0 + amax * 2f32.powi(-11) + 1e-7;
                    for (w, g) in want.iter().zip(got) {
                        assert!((w - g).abs() <= bound, "row {j}, block {b}: {w} → {g}");
                    }
                }
            }
        }
        // A block of zeros has scale 0 and stays zero.
        let zeros = round_trip(&[0.0; 2 * QK], 2, QK);
        assert!(zeros.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_block_takes_34_bytes_as_in_llama_cpp() {
        assert_eq!(Q8Matrix::zeros(QN, 4 * QK).size_bytes(), QN * 4 * 34);
    }

    /// `x·Wᵀ` by `kernel` as one block on this thread.
    fn run_kernel(kernel: Kernel, x: &[f32], rows: usize, w: &Q8Matrix) -> Vec<f32> {
        let mut xq = QuantizedRows::default();
        xq.fill(x, rows, w.k);
        let mut y = vec![f32::NAN; rows * w.n];
        // SAFETY: one block covering all of `y`, on this thread only.
        unsafe {
            compute_block(
                kernel,
                &xq,
                w,
                0..rows,
                0..w.n.div_ceil(QN),
                OutPtr(y.as_mut_ptr()),
            )
        };
        y
    }

    fn quantized(w: &[f32], n: usize, k: usize) -> Q8Matrix {
        let mut q = Q8Matrix::zeros(n, k);
        for (j, row) in w.chunks_exact(k).enumerate() {
            q.set_row(j, row);
        }
        q
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn the_avx2_and_portable_kernels_give_identical_bits_and_batching_is_invisible() {
        // Partial last panels (n not a multiple of 8), k padded to whole blocks, 1..=9 rows
        // reaching every tile height, and a k of many blocks.
        for &(k, n) in &[(64, 13), (45, 8), (32 * 23, 37), (1, 3)] {
            let w = quantized(&pseudo_random(n * k, 2), n, k);
            let x = pseudo_random(9 * k, 3);
            let alone: Vec<Vec<f32>> = (0..9)
                .map(|r| run_kernel(Kernel::Portable, &x[r * k..][..k], 1, &w))
                .collect();
            let mut kernels = vec![Kernel::Portable, Kernel::detect()];
            kernels.dedup();
            for kernel in kernels {
                for rows in 1..=9 {
                    let got = run_kernel(kernel, &x[..rows * k], rows, &w);
                    for r in 0..rows {
                        assert_eq!(
                            bits(&got[r * n..][..n]),
                            bits(&alone[r]),
                            "{kernel:?}, k {k}, n {n}: row {r} of {rows}"
                        );
                    }
                }
            }
            // The threaded GEMM too.
            let mut y = vec![f32::NAN; 9 * n];
            matmul(&x, 9, &w, &mut y);
            assert_eq!(bits(&y), bits(&alone.concat()), "matmul, k {k}, n {n}");
        }
    }

    #[test]
    fn a_large_batch_spans_row_blocks_and_threads_with_the_same_bits() {
        let (k, n) = (32 * 23, 37);
        // Past the row count quantized in parallel and two row blocks' worth.
        let rows = 2 * (MC_BYTES / k / MR * MR) + 5;
        let w = quantized(&pseudo_random(n * k, 6), n, k);
        let x = pseudo_random(rows * k, 7);
        let mut all = vec![f32::NAN; rows * n];
        matmul(&x, rows, &w, &mut all);
        for r in 0..rows {
            let mut alone = vec![f32::NAN; n];
            matmul(&x[r * k..][..k], 1, &w, &mut alone);
            assert_eq!(bits(&alone), bits(&all[r * n..][..n]), "row {r}");
        }
    }

    #[test]
    fn the_avx2_kernel_is_checked_where_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            assert_eq!(Kernel::detect(), Kernel::Avx2);
        }
    }

    #[test]
    fn each_output_is_the_block_chain_and_close_to_the_float_product() {
        let (rows, k, n) = (3, 96, 5);
        let (x, w) = (pseudo_random(rows * k, 4), pseudo_random(n * k, 5));
        let mut y = vec![f32::NAN; rows * n];
        matmul(&x, rows, &quantized(&w, n, k), &mut y);
        // Each row quantized on its own, block by block, outside any panel layout.
        let blocks = |v: &[f32], f16_scale: bool| -> Vec<(Block, f32)> {
            v.chunks(QK)
                .map(|values| {
                    let mut q = ZERO_BLOCK;
                    let d = quantize_block(values, &mut q);
                    (
                        q,
                        if f16_scale {
                            f16::from_f32(d).to_f32()
                        } else {
                            d
                        },
                    )
                })
                .collect()
        };
        for r in 0..rows {
            let xb = blocks(&x[r * k..][..k], false);
            for j in 0..n {
                let wb = blocks(&w[j * k..][..k], true);
                let chain = xb
                    .iter()
                    .zip(&wb)
                    .fold(0.0f32, |acc, ((xq, dx), (wq, dw))| {
                        let isum: i32 =
                            xq.0.iter()
                                .zip(&wq.0)
                                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                                .sum();
                        acc + isum as f32 * (dx * dw)
                    });
                let got = y[r * n + j];
                assert_eq!(
                    got.to_bits(),
                    chain.to_bits(),
                    "({r}, {j}): {got} vs chain {chain}"
                );
                // Each factor is within half a step (1/254 of its block's max, under 0.002 here)
                // of itself: over 96 products of values under 0.5, under 0.2 in all.
                let exact: f64 = x[r * k..][..k]
                    .iter()
                    .zip(&w[j * k..][..k])
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                assert!(
                    (f64::from(got) - exact).abs() < 0.2,
                    "({r}, {j}): {got} vs {exact}"
                );
            }
        }
    }
}

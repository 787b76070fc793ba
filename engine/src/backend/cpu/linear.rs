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
//! Panels hold f32 or bf16 (`--dtype`, [`WeightsDtype`]). A bf16 panel is the f32 one with every
//! value rounded to nearest even once, at packing; each micro-kernel has a bf16 instance that
//! widens a lane in registers — zero-extend to 32 bits, shift left by 16, which is exact — and then
//! runs the f32 instance's arithmetic unchanged, so bf16 weights give the bits the f32 GEMM gives on
//! the widened matrix, in every kernel, at half the bytes streamed. `x` and `y` stay f32: the
//! activations are never rounded to bf16. (AVX-512 BF16's `vdpbf16ps` would also round `x` to
//! bf16 and sum products in pairs, a different chain, so it is not used.)
//!
//! With `--quantize int8` a matrix is held in Q8_0 blocks instead and multiplied by [`super::q8`]'s
//! int8 GEMM, which keeps the same guarantee with a chain of its own.
//!
//! Model weights are packed at load ([`crate::model::Linear`]); [`matmul_nt`] packs on the fly for
//! small matrices that are not.

use std::ops::Range;

use half::bf16;
use rayon::prelude::*;

use super::q8::Q8Matrix;
use super::stored::Stored;
use crate::config::WeightsDtype;

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

/// One 64-byte, cache-line-aligned f32 row of a panel.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct F32Lane([f32; NR]);

/// One 32-byte bf16 row of a panel: half a cache line, aligned so a line holds two whole lanes.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Bf16Lane([bf16; NR]);

/// What a panel stores: `f32`, or `bf16` widened in registers by the micro-kernels. Each
/// element type brings its lane and its micro-kernels; its rounding from f32 at packing and its
/// exact widening are [`Stored`]'s.
trait Element: Stored {
    type Lane: Copy + Send + Sync;
    const ZERO_LANE: Self::Lane;
    fn values(lane: &Self::Lane) -> &[Self; NR];
    fn values_mut(lane: &mut Self::Lane) -> &mut [Self; NR];
    /// This type's micro-kernel instances, for every [`Kernel`].
    fn tiles() -> &'static KernelTiles<Self>;
}

impl Element for f32 {
    type Lane = F32Lane;
    const ZERO_LANE: F32Lane = F32Lane([0.0; NR]);
    fn values(lane: &F32Lane) -> &[f32; NR] {
        &lane.0
    }
    fn values_mut(lane: &mut F32Lane) -> &mut [f32; NR] {
        &mut lane.0
    }
    fn tiles() -> &'static KernelTiles<f32> {
        &F32_TILES
    }
}

impl Element for bf16 {
    type Lane = Bf16Lane;
    const ZERO_LANE: Bf16Lane = Bf16Lane([bf16::ZERO; NR]);
    fn values(lane: &Bf16Lane) -> &[bf16; NR] {
        &lane.0
    }
    fn values_mut(lane: &mut Bf16Lane) -> &mut [bf16; NR] {
        &mut lane.0
    }
    fn tiles() -> &'static KernelTiles<bf16> {
        &BF16_TILES
    }
}

/// The lanes of one matrix, panel after panel: `n/16` panels (rounded up) of `k` lanes.
#[derive(Clone)]
struct Panels<E: Element>(Vec<E::Lane>);

impl<E: Element> Panels<E> {
    fn zeros(n: usize, k: usize) -> Self {
        Self(vec![E::ZERO_LANE; n.div_ceil(NR) * k])
    }

    /// Bytes of `W` one lane holds.
    const LANE_BYTES: usize = std::mem::size_of::<E::Lane>();

    /// Stores row `j` (output column `j`) of `W`, rounded to `E`.
    fn set_row(&mut self, j: usize, k: usize, row: &[f32]) {
        let (panel, lane) = (j / NR, j % NR);
        for (dst, &v) in self.0[panel * k..(panel + 1) * k].iter_mut().zip(row) {
            E::values_mut(dst)[lane] = E::round(v);
        }
    }

    fn copy_row(&self, j: usize, k: usize, out: &mut [f32]) {
        let (panel, lane) = (j / NR, j % NR);
        for (dst, src) in out[..k].iter_mut().zip(&self.0[panel * k..(panel + 1) * k]) {
            *dst = E::values(src)[lane].widen();
        }
    }
}

/// The panels of a [`PackedMatrix`] in the dtype the model runs its weights in.
#[derive(Clone)]
enum Store {
    F32(Panels<f32>),
    Bf16(Panels<bf16>),
    Q8(Q8Matrix),
}

/// A weight matrix `W [n, k]` in the GEMM's panel layout: for each group of 16 consecutive rows of
/// `W` (output columns of `y`), its `k` columns as `k` aligned lanes of 16 values — f32 (a 64-byte
/// cache line) or bf16 (half of one). The last panel is zero-padded, so the layout costs at most
/// `15·k` extra values: a packed copy replaces the row-major matrix rather than adding to it.
///
/// A bf16 matrix is the f32 one with each value rounded to nearest even once, at packing; the
/// GEMM widens the stored values exactly, in registers, so it gives the bits the f32 GEMM gives on
/// the widened matrix (and the bits of the f32 GEMM itself when the checkpoint was bf16). A Q8_0
/// matrix is held in [`Q8Matrix`]'s blocks instead of panels.
#[derive(Clone)]
pub struct PackedMatrix {
    store: Store,
    n: usize,
    k: usize,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix [{}, {}] {}", self.n, self.k, self.dtype())
    }
}

impl PackedMatrix {
    /// Packs row-major `w [n, k]` as f32.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        Self::pack_as(w, n, k, WeightsDtype::F32)
    }

    /// Packs row-major `w [n, k]` in `dtype` (bf16: each value rounded to nearest even).
    pub fn pack_as(w: &[f32], n: usize, k: usize, dtype: WeightsDtype) -> Self {
        assert_eq!(w.len(), n * k, "w must be [n, k]");
        let mut packed = Self::zeros(n, k, dtype);
        packed.set_rows(0, w);
        packed
    }

    /// An all-zero `[n, k]` matrix in `dtype`, to be filled with [`set_rows`](Self::set_rows) —
    /// so a matrix stacked from several checkpoint tensors is packed part by part, never whole in
    /// both layouts.
    pub fn zeros(n: usize, k: usize, dtype: WeightsDtype) -> Self {
        let store = match dtype {
            WeightsDtype::F32 => Store::F32(Panels::zeros(n, k)),
            WeightsDtype::Bf16 => Store::Bf16(Panels::zeros(n, k)),
            WeightsDtype::Q8_0 => Store::Q8(Q8Matrix::zeros(n, k)),
        };
        Self { store, n, k }
    }

    /// Overwrites rows `first..first + rows.len() / k` with the row-major `rows` (rounded to the
    /// matrix's dtype).
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
            match &mut self.store {
                Store::F32(panels) => panels.set_row(first + i, k, row),
                Store::Bf16(panels) => panels.set_row(first + i, k, row),
                Store::Q8(matrix) => matrix.set_row(first + i, row),
            }
        }
    }

    /// Copies row `j` of `W` (`k` values, widened to f32) into `out`: the embedding lookup, whose
    /// table is kept only packed because it doubles as the LM head of tied models. It reads one
    /// lane per element (a stride of 16 values), a few microseconds per token beside the GEMMs of
    /// its forward pass.
    pub fn copy_row(&self, j: usize, out: &mut [f32]) {
        assert!(j < self.n, "row {j} of a matrix with {} rows", self.n);
        match &self.store {
            Store::F32(panels) => panels.copy_row(j, self.k, out),
            Store::Bf16(panels) => panels.copy_row(j, self.k, out),
            Store::Q8(matrix) => matrix.copy_row(j, out),
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

    /// The dtype the values are stored in.
    pub fn dtype(&self) -> WeightsDtype {
        match self.store {
            Store::F32(_) => WeightsDtype::F32,
            Store::Bf16(_) => WeightsDtype::Bf16,
            Store::Q8(_) => WeightsDtype::Q8_0,
        }
    }

    /// Bytes the packed values occupy in memory, padding included.
    pub fn size_bytes(&self) -> usize {
        match &self.store {
            Store::F32(panels) => panels.0.len() * Panels::<f32>::LANE_BYTES,
            Store::Bf16(panels) => panels.0.len() * Panels::<bf16>::LANE_BYTES,
            Store::Q8(matrix) => matrix.size_bytes(),
        }
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
/// `x` and `y` are f32 whatever `w`'s dtype.
pub fn matmul_packed(x: &[f32], rows: usize, w: &PackedMatrix, y: &mut [f32]) {
    match &w.store {
        Store::F32(panels) => matmul_panels(x, rows, panels, w.n, w.k, y),
        Store::Bf16(panels) => matmul_panels(x, rows, panels, w.n, w.k, y),
        Store::Q8(matrix) => super::q8::matmul(x, rows, matrix, y),
    }
}

/// [`matmul_packed`] on the panels of `W [n, k]`.
fn matmul_panels<E: Element>(
    x: &[f32],
    rows: usize,
    w: &Panels<E>,
    n: usize,
    k: usize,
    y: &mut [f32],
) {
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
    let max_block = (MC_BYTES / (4 * k) / MR).max(1) * MR;
    let out = OutPtr(y.as_mut_ptr());
    let w = PanelsRef { w, n, k };
    for_each_piece(rows, strips, max_block, MR, |row_range, strip_range| {
        // SAFETY: pieces own disjoint (row range × column range) blocks of `y`, no element is
        // written by two pieces, and `y` outlives the parallel loop.
        unsafe { compute_block(kernel, x, w, row_range, strip_range, out) };
    });
}

/// Spreads `y [rows, ·]`, whose columns come in `units` groups (strips of panels, say), over
/// rayon's threads: row blocks of at most `max_block` rows, evened out and rounded up to whole
/// micro-tiles of `mr` rows, each cut into column chunks of whole units, enough pieces to keep
/// every thread busy (and balance the load when another process takes a core for a while).
/// Calls `f(row_range, unit_range)` once per piece, in parallel; the pieces are disjoint.
pub(super) fn for_each_piece(
    rows: usize,
    units: usize,
    max_block: usize,
    mr: usize,
    f: impl Fn(Range<usize>, Range<usize>) + Sync + Send,
) {
    let row_blocks = rows.div_ceil(max_block);
    let mc = rows.div_ceil(row_blocks).next_multiple_of(mr);
    let row_blocks = rows.div_ceil(mc);
    let threads = rayon::current_num_threads().max(1);
    let col_chunks = (8 * threads).div_ceil(row_blocks).clamp(1, units);
    let units_per_chunk = units.div_ceil(col_chunks);
    let col_chunks = units.div_ceil(units_per_chunk);
    (0..row_blocks * col_chunks)
        .into_par_iter()
        .for_each(|piece| {
            let (block, chunk) = (piece / col_chunks, piece % col_chunks);
            let first = chunk * units_per_chunk;
            f(
                block * mc..((block + 1) * mc).min(rows),
                first..(first + units_per_chunk).min(units),
            );
        });
}

/// `y`'s first element, handed to the threads that write disjoint blocks of it.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: writers through this pointer touch disjoint elements (see `for_each_piece`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Panels with the shape of the matrix they hold.
struct PanelsRef<'a, E: Element> {
    w: &'a Panels<E>,
    n: usize,
    k: usize,
}

impl<E: Element> Clone for PanelsRef<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E: Element> Copy for PanelsRef<'_, E> {}

/// Fills rows `row_range` × the columns of strips `strip_range` (each [`PR`] panels) of `y`.
///
/// # Safety
/// `out` points to a `[rows, w.n]` buffer with `rows ≥ row_range.end`, and no other thread touches
/// this block.
unsafe fn compute_block<E: Element>(
    kernel: Kernel,
    x: &[f32],
    w: PanelsRef<'_, E>,
    row_range: std::ops::Range<usize>,
    strip_range: std::ops::Range<usize>,
    out: OutPtr,
) {
    let (n, k) = (w.n, w.k);
    let panels = n.div_ceil(NR);
    let w_base: *const E = w.w.0.as_ptr().cast();
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
struct Tile<E> {
    x: *const f32,
    x_stride: usize,
    w: *const E,
    w_stride: usize,
    kc: usize,
    y: *mut f32,
    y_stride: usize,
    cols: usize,
    accumulate: bool,
    /// `prefetch_lines` lanes of each of the tile's panels from `prefetch` (stride `w_stride`
    /// between panels) are wanted soon: a hint for the SIMD kernels (at most `kc` lanes are
    /// prefetched), never dereferenced; the portable kernel ignores it.
    prefetch: *const E,
    prefetch_lines: usize,
}

/// A micro-kernel instance for a fixed (rows, panels) shape and element type.
type TileFn<E> = unsafe fn(&Tile<E>);

/// The micro-kernel implementation chosen for this CPU. All give batch-invariant results.
/// `Avx512` and `Avx2` give the same bits (one fused multiply-add per step, which rounds once);
/// `Portable` differs from them (a multiply then an add, which round twice). Each has an f32 and
/// a bf16 instance; the bf16 one widens a lane exactly before the same arithmetic, so it gives the
/// f32 instance's bits on the widened matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

/// `[$f::<E, 1, P>, …, $f::<E, MR, P>]` for each `P` in `1..=PR`, with `E` = `$e`.
macro_rules! tile_table {
    ($f:ident, $e:ty) => {
        [
            tile_table!(@row $f, $e, 1),
            tile_table!(@row $f, $e, 2),
        ]
    };
    (@row $f:ident, $e:ty, $p:literal) => {
        [
            $f::<$e, 1, $p> as TileFn<$e>,
            $f::<$e, 2, $p>,
            $f::<$e, 3, $p>,
            $f::<$e, 4, $p>,
            $f::<$e, 5, $p>,
            $f::<$e, 6, $p>,
            $f::<$e, 7, $p>,
            $f::<$e, 8, $p>,
            $f::<$e, 9, $p>,
            $f::<$e, 10, $p>,
            $f::<$e, 11, $p>,
            $f::<$e, 12, $p>,
        ]
    };
}

/// The micro-kernel instances of element type `E`: for each [`Kernel`], one per (panels, rows).
struct KernelTiles<E: 'static> {
    #[cfg(target_arch = "x86_64")]
    avx512: [[TileFn<E>; MR]; PR],
    #[cfg(target_arch = "x86_64")]
    avx2: [[TileFn<E>; MR]; PR],
    portable: [[TileFn<E>; MR]; PR],
}

/// The [`KernelTiles`] of element type `$e`.
macro_rules! kernel_tiles {
    ($e:ty) => {
        KernelTiles {
            #[cfg(target_arch = "x86_64")]
            avx512: tile_table!(avx512_tile, $e),
            #[cfg(target_arch = "x86_64")]
            avx2: tile_table!(avx2_tile, $e),
            portable: tile_table!(portable_tile, $e),
        }
    };
}

static F32_TILES: KernelTiles<f32> = kernel_tiles!(f32);
static BF16_TILES: KernelTiles<bf16> = kernel_tiles!(bf16);

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
    unsafe fn run<E: Element>(self, m: usize, p: usize, tile: &Tile<E>) {
        let tiles = E::tiles();
        let table = match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => &tiles.avx512,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => &tiles.avx2,
            Self::Portable => &tiles.portable,
        };
        // SAFETY: AVX-512F was detected at run time when `self` is `Avx512`, AVX2 and FMA when it
        // is `Avx2`; the caller vouches for the pointers.
        unsafe { table[p - 1][m - 1](tile) }
    }
}

/// Portable micro-kernel: the same loop as the AVX-512 one with a multiply and an add per step.
/// Rust never contracts them into a fused multiply-add, so the order and rounding are fixed.
///
/// # Safety
/// As [`Kernel::run`].
unsafe fn portable_tile<E: Element, const M: usize, const P: usize>(t: &Tile<E>) {
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
        let lanes: [[f32; NR]; P] = std::array::from_fn(|j| {
            let lane: &[E; NR] = unsafe { &*t.w.add(j * t.w_stride + i * NR).cast() };
            lane.map(E::widen)
        });
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let xv = unsafe { *t.x.add(r * t.x_stride + i) };
            for (acc, lane) in acc_row.iter_mut().zip(&lanes) {
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

    use half::bf16;

    use super::{Element, NR, Tile};

    /// A lane of `W` as one vector of 16 f32s.
    pub trait Load: Element {
        /// # Safety
        /// The CPU supports AVX-512F; `lane` is a whole, aligned lane.
        unsafe fn load(lane: *const Self) -> __m512;
    }

    impl Load for f32 {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(lane: *const f32) -> __m512 {
            // SAFETY: the caller vouches for a 64-byte-aligned lane of 16 f32s.
            unsafe { _mm512_load_ps(lane) }
        }
    }

    impl Load for bf16 {
        /// Zero-extends the 16 bf16s to 32 bits and shifts them into the upper half: the exact
        /// f32 values, as [`super::Stored::widen`] computes them.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(lane: *const bf16) -> __m512 {
            // SAFETY: the caller vouches for a 32-byte-aligned lane of 16 bf16s.
            let bits = unsafe { _mm256_load_si256(lane.cast()) };
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
        }
    }

    /// The AVX-512 micro-kernel: `M × P` accumulator vectors, one broadcast of `x` per row and one
    /// FMA per (row, panel) for each step of `k`.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `t` is as [`super::Kernel::run`] requires.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<E: Load, const M: usize, const P: usize>(t: &Tile<E>) {
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
            // SAFETY: fewer than kc steps taken, so each lane (aligned) and `x` element is inside
            // the tile.
            unsafe {
                let lanes: [__m512; P] = std::array::from_fn(|j| E::load(w.add(j * t.w_stride)));
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

    use half::bf16;

    use super::{Element, NR, Tile};

    /// Rows per sub-tile: 6 rows × 2 vectors of accumulators, the 2 vectors of a lane of `W` and
    /// the broadcast take 15 of the 16 AVX2 registers.
    const SUB_ROWS: usize = 6;
    /// `f32`s per AVX2 vector: a lane of [`NR`] is two of them.
    const HALF: usize = NR / 2;

    /// A lane of `W` as two vectors of 8 f32s (columns 0–7 and 8–15).
    pub trait Load: Element {
        /// # Safety
        /// The CPU supports AVX2; `lane` is a whole, aligned lane.
        unsafe fn load(lane: *const Self) -> [__m256; 2];
    }

    impl Load for f32 {
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn load(lane: *const f32) -> [__m256; 2] {
            // SAFETY: the caller vouches for a 64-byte-aligned lane of 16 f32s.
            unsafe { [_mm256_load_ps(lane), _mm256_load_ps(lane.add(HALF))] }
        }
    }

    impl Load for bf16 {
        /// Zero-extends each half of the 16 bf16s to 32 bits and shifts it into the upper half:
        /// the exact f32 values, as [`super::Stored::widen`] computes them.
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn load(lane: *const bf16) -> [__m256; 2] {
            // SAFETY: the caller vouches for a 32-byte-aligned lane of 16 bf16s.
            let (low, high) = unsafe {
                (
                    _mm_load_si128(lane.cast()),
                    _mm_load_si128(lane.add(HALF).cast()),
                )
            };
            let widen =
                |bits| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)));
            [widen(low), widen(high)]
        }
    }

    /// The AVX2 micro-kernel: the `M × P` tile as register-sized sub-tiles, each running the
    /// whole slice of `k` (which stays in L1) for its rows and panels. Every element of `y` gets
    /// the same chain of fused multiply-adds as in the AVX-512 kernel — starting from 0 or the
    /// parked partial sum, one correctly rounded FMA per step of `k` in order — so both kernels
    /// give the same bits; how elements are grouped into vectors and sub-tiles touches no chain.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; `t` is as [`super::Kernel::run`] requires.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<E: Load, const M: usize, const P: usize>(t: &Tile<E>) {
        // SAFETY (every call below): its rows and panels are inside the tile.
        if P == 2 && M <= 2 {
            // Few rows: both panels in one pass, for 4·M independent FMA chains per step.
            match M {
                1 => unsafe { sub_tile::<E, 1, 2>(t, 0, 0, t.prefetch_lines) },
                _ => unsafe { sub_tile::<E, 2, 2>(t, 0, 0, t.prefetch_lines) },
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
                        1 => sub_tile::<E, 1, 1>(t, row, panel, prefetch_lines),
                        2 => sub_tile::<E, 2, 1>(t, row, panel, prefetch_lines),
                        3 => sub_tile::<E, 3, 1>(t, row, panel, prefetch_lines),
                        4 => sub_tile::<E, 4, 1>(t, row, panel, prefetch_lines),
                        5 => sub_tile::<E, 5, 1>(t, row, panel, prefetch_lines),
                        _ => sub_tile::<E, SUB_ROWS, 1>(t, row, panel, prefetch_lines),
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
    unsafe fn sub_tile<E: Load, const R: usize, const Q: usize>(
        t: &Tile<E>,
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
            // SAFETY: fewer than kc steps taken, so each lane (aligned) and `x` element is inside
            // the tile.
            unsafe {
                let lanes: [[__m256; 2]; Q] =
                    std::array::from_fn(|j| E::load(w.add(j * t.w_stride)));
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
        for (&(k, n), dtype) in [(100, 37), (KC + 77, 3 * NR * PR + 5)]
            .iter()
            .flat_map(|shape| [WeightsDtype::F32, WeightsDtype::Bf16].map(|d| (shape, d)))
        {
            let w = PackedMatrix::pack_as(&pseudo_random(n * k, 3), n, k, dtype);
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
                        "{dtype}, k {k}, n {n}: row {i} of a batch of {rows}"
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
        let (n, k) = (w.n, w.k);
        let mut y = vec![f32::NAN; rows * n];
        let strips = n.div_ceil(NR).div_ceil(PR);
        let out = OutPtr(y.as_mut_ptr());
        // SAFETY: one block covering all of `y`, on this thread only.
        unsafe {
            match &w.store {
                Store::F32(w) => {
                    compute_block(kernel, x, PanelsRef { w, n, k }, 0..rows, 0..strips, out)
                }
                Store::Bf16(w) => {
                    compute_block(kernel, x, PanelsRef { w, n, k }, 0..rows, 0..strips, out)
                }
                Store::Q8(_) => panic!("Q8_0 matrices have their own kernels, tested in q8.rs"),
            }
        };
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
        for dtype in [WeightsDtype::F32, WeightsDtype::Bf16, WeightsDtype::Q8_0] {
            let want = w_rows(&PackedMatrix::pack_as(&w, n, k, dtype));
            match dtype {
                WeightsDtype::F32 => assert_eq!(want, w),
                WeightsDtype::Bf16 => assert_eq!(want, to_bf16_and_back(&w)),
                // q8.rs bounds the Q8_0 round trip; here only the stacking is checked.
                WeightsDtype::Q8_0 => {}
            }
            let mut stacked = PackedMatrix::zeros(n, k, dtype);
            stacked.set_rows(20, &w[20 * k..]);
            stacked.set_rows(0, &w[..20 * k]);
            assert_eq!(w_rows(&stacked), want, "{dtype}");
        }
    }

    /// `w` rounded to bf16 (nearest even) and widened back: the matrix a bf16 packing computes on.
    fn to_bf16_and_back(w: &[f32]) -> Vec<f32> {
        w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
    }

    #[test]
    fn bf16_panels_take_half_the_bytes_of_f32_ones() {
        let (n, k) = (3 * NR + 1, 33);
        let w = pseudo_random(n * k, 12);
        let f32_bytes = PackedMatrix::pack(&w, n, k).size_bytes();
        assert_eq!(f32_bytes, n.div_ceil(NR) * NR * k * 4);
        let bf16 = PackedMatrix::pack_as(&w, n, k, WeightsDtype::Bf16);
        assert_eq!(bf16.size_bytes() * 2, f32_bytes);
    }

    #[test]
    fn every_kernel_here_gives_bf16_weights_the_f32_bits_of_the_widened_matrix() {
        // Odd shapes: k past KC (and not a multiple of it), partial last panels, every
        // micro-tile shape (1..=13 rows), and one k, n, rows all below a tile.
        for &(k, n) in &[
            (KC + 77, 3 * NR * PR + 5),
            (2 * KC + 3, 2 * NR + 13),
            (7, 3),
        ] {
            let w = pseudo_random(n * k, 13);
            let bf16 = PackedMatrix::pack_as(&w, n, k, WeightsDtype::Bf16);
            let widened = PackedMatrix::pack(&to_bf16_and_back(&w), n, k);
            let x = pseudo_random(13 * k, 14);
            for &kernel in &kernels_here() {
                for rows in 1..=13 {
                    let x = &x[..rows * k];
                    let got = run_kernel(kernel, x, rows, &bf16);
                    let want = run_kernel(kernel, x, rows, &widened);
                    assert_eq!(
                        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{kernel:?}, k {k}, n {n}, {rows} rows"
                    );
                }
            }
            // The threaded GEMM too, over a batch that spans several row micro-blocks.
            let rows = 3 * MR + 5;
            let x = pseudo_random(rows * k, 15);
            let (mut got, mut want) = (vec![0.0; rows * n], vec![0.0; rows * n]);
            matmul_packed(&x, rows, &bf16, &mut got);
            matmul_packed(&x, rows, &widened, &mut want);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "matmul_packed, k {k}, n {n}"
            );
        }
    }

    #[test]
    fn the_portable_bf16_kernel_is_batch_invariant_too() {
        let (k, n) = (KC + 9, 2 * NR + 3);
        let w = PackedMatrix::pack_as(&pseudo_random(n * k, 16), n, k, WeightsDtype::Bf16);
        let x = pseudo_random(MR * 3 * k, 17);
        let rows = x.len() / k;
        let all = run_kernel(Kernel::Portable, &x, rows, &w);
        for r in 0..rows {
            assert_eq!(
                run_kernel(Kernel::Portable, &x[r * k..(r + 1) * k], 1, &w),
                all[r * n..(r + 1) * n],
                "row {r}"
            );
        }
    }
}

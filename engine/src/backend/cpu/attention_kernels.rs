//! The two inner loops of CPU attention, over one run of at most [`LANES`] keys of one KV head and
//! a block of query heads that attend to it:
//!
//! - [`Kernels::scores`]: `s[h][lane] = (Σ_i q[h][i]·k[i][lane])·scale`. Keys are stored
//!   transposed (`[head_dim][slot]`, see [`super::kv_cache`]), so one vector load holds dimension
//!   `i` of 16 keys and each query head adds one broadcast multiply-add per dimension: no
//!   horizontal sums, and the load is shared by every query head of the block.
//! - [`Kernels::fold_run`]: one query head's online-softmax step over the run's scores (running
//!   max and denominator, scores turned into probabilities), vectorised over the lanes.
//! - [`Kernels::accumulate`]: `acc[h][..] += Σ_lane p[h][lane]·v[lane][..]`, values row-major, one
//!   vector load of a value row shared by every query head of the block.
//!
//! Why the arithmetic is pinned: docs/design.md §3 "batching is invisible" must hold to the bit, and a
//! query row is computed in a tile of many rows in one step and alone (or in a different tile) in
//! another, e.g. when a preempted sequence is recomputed. So each output is one chain over `i`
//! (scores) or over ascending lanes (values), whatever the number of query heads in the block or
//! which lanes other heads use. The AVX-512 and AVX2 kernels fuse each step (one FMA, which rounds
//! once) and give the same bits; the portable kernels, used on CPUs without either, multiply then
//! add. A process uses one of them for every row.
//! The softmax step reduces its lanes in a fixed tree, padding the lanes a head does not attend
//! with the operation's identity, so its result does not depend on the vector width either.
//!
//! Keys and values are read in the pool's element type ([`KvElement`]: f32, or bf16 or FP8 E4M3
//! widened exactly in registers), so a compact pool gives the bits an f32 pool holding the widened
//! values gives, in every kernel. (An fp8 pool's per-head scales are not the kernels' business:
//! attention folds them into `scale` and the probabilities, see [`super::kv_cache::LayerView`].)

use half::bf16;

use super::stored::{E4m3, Stored};
use crate::math::exp_nonpositive;

/// Keys per run: one AVX-512 vector of `f32`.
pub const LANES: usize = 16;

/// Query heads per register block: 8 score vectors, or 8 × one value vector of accumulators, with
/// room left for the loads and broadcasts.
const HEADS_PER_BLOCK: usize = 8;

/// An element type the kernels read keys and values in: each brings its exact widening to f32
/// for the portable kernels and its widening vector loads for the SIMD ones.
#[cfg(target_arch = "x86_64")]
pub trait KvElement: Stored + avx2::Load + avx512::Load {}
/// An element type the kernels read keys and values in: each brings its exact widening to f32.
#[cfg(not(target_arch = "x86_64"))]
pub trait KvElement: Stored {}

impl KvElement for f32 {}
impl KvElement for bf16 {}
impl KvElement for E4m3 {}

/// At most [`LANES`] consecutive entries of one KV head, stored as `E`.
#[derive(Clone, Copy)]
pub struct KeyRun<'a, E = f32> {
    /// Keys transposed: dimension `i` of lane `l` at `keys_t[i * stride + l]`, so the slice holds
    /// at least `(head_dim - 1) * stride + lanes` elements.
    pub keys_t: &'a [E],
    pub stride: usize,
    /// Values row-major, `[lanes][head_dim]`.
    pub values: &'a [E],
    pub lanes: usize,
}

/// The kernels this CPU runs, chosen once per process.
#[derive(Debug, Clone, Copy)]
pub enum Kernels {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 with FMA: two 8-lane halves per run, the AVX-512 kernels' bits.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

/// Calls `$kernel::<E, R>($args)` for a runtime `$rows` in `1..=HEADS_PER_BLOCK`, so the register
/// block's size is a compile-time constant and its accumulators stay in registers.
macro_rules! with_rows {
    ($rows:expr, $kernel:ident::<$e:ty>($($arg:expr),*)) => {
        match $rows {
            1 => $kernel::<$e, 1>($($arg),*),
            2 => $kernel::<$e, 2>($($arg),*),
            3 => $kernel::<$e, 3>($($arg),*),
            4 => $kernel::<$e, 4>($($arg),*),
            5 => $kernel::<$e, 5>($($arg),*),
            6 => $kernel::<$e, 6>($($arg),*),
            7 => $kernel::<$e, 7>($($arg),*),
            8 => $kernel::<$e, 8>($($arg),*),
            other => unreachable!("register blocks hold 1 to {HEADS_PER_BLOCK} heads, not {other}"),
        }
    };
}

impl Kernels {
    pub fn detect() -> Self {
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

    /// Scores of `q` (`[heads][head_dim]`) against the run's keys, into `scores[h][..run.lanes]`
    /// (lanes past `run.lanes` are left as they were).
    pub fn scores<E: KvElement>(
        self,
        q: &[f32],
        head_dim: usize,
        run: &KeyRun<'_, E>,
        scale: f32,
        scores: &mut [[f32; LANES]],
    ) {
        check_run(run, head_dim);
        assert!(q.len() >= scores.len() * head_dim, "a query per score row");
        for (block, out) in scores.chunks_mut(HEADS_PER_BLOCK).enumerate() {
            let q = &q[block * HEADS_PER_BLOCK * head_dim..][..out.len() * head_dim];
            match self {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F was detected; `check_run` and the slicing above bound every
                // read, and the masked loads touch lanes below `run.lanes` only.
                Self::Avx512 => unsafe {
                    with_rows!(out.len(), avx512_scores::<E>(q, head_dim, run, scale, out))
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX2 and FMA were detected; as above, and the masked loads of each
                // 8-lane half touch lanes below `run.lanes` only.
                Self::Avx2 => unsafe {
                    with_rows!(out.len(), avx2_scores::<E>(q, head_dim, run, scale, out))
                },
                Self::Portable => portable_scores(q, head_dim, run, scale, out),
            }
        }
    }

    /// Folds `scores[..count]` (`count ≥ 1`) of one query head into its running `max` and softmax
    /// denominator `sum`, turns them into `exp(score − max)` in place and returns the factor by
    /// which the head's accumulated values must be rescaled.
    pub fn fold_run(
        self,
        scores: &mut [f32; LANES],
        count: usize,
        max: &mut f32,
        sum: &mut f32,
    ) -> f32 {
        assert!(count > 0 && count <= LANES, "1 to {LANES} lanes");
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F was detected.
            Self::Avx512 => unsafe { avx512::fold_run(scores, count, max, sum) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA were detected.
            Self::Avx2 => unsafe { avx2::fold_run(scores, count, max, sum) },
            Self::Portable => fold_run(scores, count, max, sum),
        }
    }

    /// Adds `p[h][lane]·values[lane]` over `lane < lanes`, ascending, to `acc[h]` (`[heads][head_dim]`).
    pub fn accumulate<E: KvElement>(
        self,
        p: &[[f32; LANES]],
        values: &[E],
        lanes: usize,
        head_dim: usize,
        acc: &mut [f32],
    ) {
        assert!(
            lanes <= LANES && values.len() >= lanes * head_dim,
            "value rows per lane"
        );
        assert!(
            acc.len() >= p.len() * head_dim,
            "an accumulator row per head"
        );
        for (block, p) in p.chunks(HEADS_PER_BLOCK).enumerate() {
            let acc = &mut acc[block * HEADS_PER_BLOCK * head_dim..][..p.len() * head_dim];
            match self {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F was detected; the asserts and slicing above bound every access.
                Self::Avx512 => unsafe {
                    with_rows!(
                        p.len(),
                        avx512_accumulate::<E>(p, values, lanes, head_dim, acc)
                    )
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX2 and FMA were detected; the asserts and slicing above bound every
                // access.
                Self::Avx2 => unsafe {
                    with_rows!(
                        p.len(),
                        avx2_accumulate::<E>(p, values, lanes, head_dim, acc)
                    )
                },
                Self::Portable => portable_accumulate(p, values, lanes, head_dim, acc),
            }
        }
    }
}

/// [`Kernels::fold_run`], written as element-wise loops over the lanes and fixed reduction trees
/// so that the compiler vectorises it at any width with the same result.
#[inline(always)]
fn fold_run(scores: &mut [f32; LANES], count: usize, max: &mut f32, sum: &mut f32) -> f32 {
    let mut attended = [f32::NEG_INFINITY; LANES];
    attended[..count].copy_from_slice(&scores[..count]);
    let new_max = max.max(reduce(attended, f32::max));
    let rescale = rescale(*max, new_max);
    for (p, &s) in scores.iter_mut().zip(&attended) {
        // Unattended lanes give exp(−∞) = 0.
        *p = exp_nonpositive(s - new_max);
    }
    *sum = *sum * rescale + reduce(*scores, |a, b| a + b);
    *max = new_max;
    rescale
}

/// `exp(old_max − new_max)`, exactly 1 when the max did not move.
#[inline(always)]
fn rescale(old_max: f32, new_max: f32) -> f32 {
    if old_max == new_max {
        1.0
    } else {
        exp_nonpositive(old_max - new_max)
    }
}

/// Reduces the lanes pairwise: lane `i` with lane `i + 8`, then `i + 4`, `i + 2`, `i + 1`.
#[inline(always)]
fn reduce(mut lanes: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] = op(lanes[i], lanes[i + width]);
        }
        width /= 2;
    }
    lanes[0]
}

fn check_run<E>(run: &KeyRun<'_, E>, head_dim: usize) {
    assert!(run.lanes > 0 && run.lanes <= LANES, "1 to {LANES} lanes");
    assert!(
        run.keys_t.len() >= (head_dim - 1) * run.stride + run.lanes,
        "transposed keys cover every dimension of every lane"
    );
    assert!(
        run.values.len() >= run.lanes * head_dim,
        "a value row per lane"
    );
}

fn portable_scores<E: Stored>(
    q: &[f32],
    head_dim: usize,
    run: &KeyRun<'_, E>,
    scale: f32,
    out: &mut [[f32; LANES]],
) {
    for (q, out) in q.chunks_exact(head_dim).zip(out.iter_mut()) {
        let mut acc = [0.0f32; LANES];
        for (i, &qi) in q.iter().enumerate() {
            let keys = &run.keys_t[i * run.stride..][..run.lanes];
            for (a, &k) in acc.iter_mut().zip(keys) {
                *a += qi * k.widen();
            }
        }
        for (o, a) in out.iter_mut().zip(&acc).take(run.lanes) {
            *o = a * scale;
        }
    }
}

fn portable_accumulate<E: Stored>(
    p: &[[f32; LANES]],
    values: &[E],
    lanes: usize,
    head_dim: usize,
    acc: &mut [f32],
) {
    for (p, acc) in p.iter().zip(acc.chunks_exact_mut(head_dim)) {
        for (&weight, value) in p[..lanes].iter().zip(values.chunks_exact(head_dim)) {
            for (a, &v) in acc.iter_mut().zip(value) {
                *a += weight * v.widen();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
use {
    avx2::{accumulate as avx2_accumulate, scores as avx2_scores},
    avx512::{accumulate as avx512_accumulate, scores as avx512_scores},
};

/// The AVX-512 kernels on 256-bit vectors: each 16-lane vector of theirs is two 8-lane halves here,
/// and every lane runs the same chain of fused multiply-adds, so the results are theirs to the bit.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::{KeyRun, KvElement, LANES};
    use crate::backend::cpu::stored::{E4m3, Stored};

    /// Lanes per 256-bit vector of `f32`.
    const HALF: usize = LANES / 2;

    /// Up to 8 keys or value elements as one vector of f32s.
    pub trait Load: Stored {
        /// Lanes `0..live` (`live ≤ 8`) from `src`, the others 0; `mask` is [`mask_below`]'s
        /// mask of those lanes.
        ///
        /// # Safety
        /// The CPU supports AVX2; `src` points to `live` readable elements.
        unsafe fn load(src: *const Self, live: usize, mask: __m256i) -> __m256;
    }

    impl Load for f32 {
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn load(src: *const f32, live: usize, mask: __m256i) -> __m256 {
            // SAFETY: the caller vouches for the `live` lanes.
            unsafe { load_f32(src, live, mask) }
        }
    }

    /// Lanes `0..live` of the 8 f32s at `src`, the others 0: a plain load when all 8 are live,
    /// masked only for a partial vector: on the AMD EPYC measured here, masked moves of whole
    /// vectors held attention back (prefill 4096 244 → 284 tok/s without them, docs/benchmarks.md).
    ///
    /// # Safety
    /// The CPU supports AVX2; `src` points to `live` readable f32s; `mask` is [`mask_below`]'s.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load_f32(src: *const f32, live: usize, mask: __m256i) -> __m256 {
        // SAFETY: the caller vouches for the `live` lanes; a whole vector is 8 of them.
        unsafe {
            match live {
                HALF => _mm256_loadu_ps(src),
                _ => _mm256_maskload_ps(src, mask),
            }
        }
    }

    /// Writes lanes `0..live` of `v` to `dst`, as [`load_f32`] reads them.
    ///
    /// # Safety
    /// The CPU supports AVX2; `dst` points to `live` writable f32s; `mask` is [`mask_below`]'s.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store_f32(dst: *mut f32, live: usize, mask: __m256i, v: __m256) {
        // SAFETY: the caller vouches for the `live` lanes; a whole vector is 8 of them.
        unsafe {
            match live {
                HALF => _mm256_storeu_ps(dst, v),
                _ => _mm256_maskstore_ps(dst, mask, v),
            }
        }
    }

    impl Load for bf16 {
        /// Zero-extends the bf16s to 32 bits and shifts them into the upper half: the exact f32
        /// values, as [`Stored::widen`] computes them. A partial vector goes through a zeroed
        /// copy (AVX2 has no masked 16-bit load).
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn load(src: *const bf16, live: usize, _mask: __m256i) -> __m256 {
            let mut part = [0u16; HALF];
            // SAFETY: the caller vouches for `live ≤ 8` readable elements at `src`.
            let bits = unsafe {
                if live == HALF {
                    _mm_loadu_si128(src.cast())
                } else {
                    std::ptr::copy_nonoverlapping(src.cast::<u16>(), part.as_mut_ptr(), live);
                    _mm_loadu_si128(part.as_ptr().cast())
                }
            };
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
        }
    }

    impl Load for E4m3 {
        /// Zero-extends the codes to 32 bits and widens them as [`widen_e4m3`] does. A partial
        /// vector goes through a zeroed copy (code 0 is +0.0).
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn load(src: *const E4m3, live: usize, _mask: __m256i) -> __m256 {
            let mut part = [0u8; HALF];
            // SAFETY: the caller vouches for `live ≤ 8` readable elements at `src`.
            let bytes = unsafe {
                if live == HALF {
                    _mm_loadl_epi64(src.cast())
                } else {
                    std::ptr::copy_nonoverlapping(src.cast::<u8>(), part.as_mut_ptr(), live);
                    _mm_loadl_epi64(part.as_ptr().cast())
                }
            };
            widen_e4m3(_mm256_cvtepu8_epi32(bytes))
        }
    }

    /// E4M3 codes (one per 32-bit lane) as f32, the bits of [`Stored::widen`]'s table: the 7
    /// magnitude bits shifted into an f32's exponent and mantissa (a normal code's `e` then sits
    /// 120 below its f32 exponent, a subnormal one is an f32 subnormal 2^120 too small), times
    /// 2^120 (exact: a power of two, no overflow), the sign bit moved to bit 31, and the NaN codes
    /// replaced by NaN.
    #[target_feature(enable = "avx2")]
    fn widen_e4m3(codes: __m256i) -> __m256 {
        let magnitude = _mm256_and_si256(codes, _mm256_set1_epi32(0x7F));
        let unsigned = _mm256_mul_ps(
            _mm256_castsi256_ps(_mm256_slli_epi32::<20>(magnitude)),
            _mm256_set1_ps(f32::from_bits(247 << 23)),
        );
        let sign = _mm256_slli_epi32::<24>(_mm256_and_si256(codes, _mm256_set1_epi32(0x80)));
        let signed = _mm256_or_si256(_mm256_castps_si256(unsigned), sign);
        let nan = _mm256_cmpeq_epi32(magnitude, _mm256_set1_epi32(0x7F));
        _mm256_castsi256_ps(_mm256_blendv_epi8(
            signed,
            _mm256_set1_epi32(f32::NAN.to_bits() as i32),
            nan,
        ))
    }

    /// The mask of the lanes `start + l < end` of the 8-lane vector starting at `start < end`.
    #[target_feature(enable = "avx2")]
    fn mask_below(end: usize, start: usize) -> __m256i {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let live = (end - start).min(HALF) as i32;
        _mm256_cmpgt_epi32(_mm256_set1_epi32(live), lane)
    }

    /// [`super::fold_run`], compiled for AVX2. It multiplies and adds separately, as the AVX-512
    /// step does, so the three kernels agree.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn fold_run(
        scores: &mut [f32; LANES],
        count: usize,
        max: &mut f32,
        sum: &mut f32,
    ) -> f32 {
        super::fold_run(scores, count, max, sum)
    }

    /// `R` query heads against one run, one 8-lane half at a time: `R` accumulators, one masked
    /// key load and `R` FMAs per dimension.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; `q` holds `R` rows of `head_dim`, `run` passed `check_run`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores<E: KvElement, const R: usize>(
        q: &[f32],
        head_dim: usize,
        run: &KeyRun<'_, E>,
        scale: f32,
        out: &mut [[f32; LANES]],
    ) {
        let scale = _mm256_set1_ps(scale);
        for start in (0..run.lanes).step_by(HALF) {
            let (mask, live) = (mask_below(run.lanes, start), (run.lanes - start).min(HALF));
            let mut acc = [_mm256_setzero_ps(); R];
            for i in 0..head_dim {
                // SAFETY: `check_run` bounds lanes below `run.lanes` of every dimension, so the
                // half's first lane is in the slice; the masked load reads no lane past them.
                let keys = unsafe {
                    <E as Load>::load(run.keys_t.as_ptr().add(i * run.stride + start), live, mask)
                };
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_set1_ps(q[r * head_dim + i]), keys, *a);
                }
            }
            for (a, o) in acc.iter().zip(out.iter_mut()) {
                // SAFETY: `o` is 16 floats; only lanes below `run.lanes` are written.
                unsafe {
                    store_f32(
                        o.as_mut_ptr().add(start),
                        live,
                        mask,
                        _mm256_mul_ps(*a, scale),
                    )
                };
            }
        }
    }

    /// `R` query heads' weighted value sums, 8 dimensions at a time: `R` accumulators, one masked
    /// value load and `R` FMAs per lane.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; `values` holds `lanes` rows and `acc` `R` rows of `head_dim`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn accumulate<E: KvElement, const R: usize>(
        p: &[[f32; LANES]],
        values: &[E],
        lanes: usize,
        head_dim: usize,
        acc: &mut [f32],
    ) {
        for j in (0..head_dim).step_by(HALF) {
            let (mask, live) = (mask_below(head_dim, j), (head_dim - j).min(HALF));
            // SAFETY: the masked loads and stores touch dimensions below `head_dim` of rows the
            // caller vouches for.
            unsafe {
                let mut a: [__m256; R] = std::array::from_fn(|r| {
                    load_f32(acc.as_ptr().add(r * head_dim + j), live, mask)
                });
                for (lane, row) in values.chunks_exact(head_dim).take(lanes).enumerate() {
                    let v = <E as Load>::load(row.as_ptr().add(j), live, mask);
                    for (r, a) in a.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_set1_ps(p[r][lane]), v, *a);
                    }
                }
                for (r, a) in a.iter().enumerate() {
                    store_f32(acc.as_mut_ptr().add(r * head_dim + j), live, mask, *a);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::{KeyRun, KvElement, LANES};
    use crate::backend::cpu::stored::{E4m3, Stored};
    use crate::math::{EXP_POLY, EXP_UNDERFLOW, LN2_HI, LN2_LO, ROUNDING_MAGIC};

    fn lane_mask(lanes: usize) -> __mmask16 {
        ((1u32 << lanes) - 1) as __mmask16
    }

    /// Up to 16 keys or value elements as one vector of f32s.
    pub trait Load: Stored {
        /// Lanes `0..live` (`live ≤ 16`) from `src`, the others 0.
        ///
        /// # Safety
        /// The CPU supports AVX-512F; `src` points to `live` readable elements.
        unsafe fn load(src: *const Self, live: usize) -> __m512;
    }

    impl Load for f32 {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(src: *const f32, live: usize) -> __m512 {
            // SAFETY: the masked load reads the `live` lanes the caller vouches for.
            unsafe { _mm512_maskz_loadu_ps(lane_mask(live), src) }
        }
    }

    impl Load for bf16 {
        /// Zero-extends the bf16s to 32 bits and shifts them into the upper half: the exact f32
        /// values, as [`Stored::widen`] computes them. A partial vector goes through a zeroed
        /// copy (a masked 16-bit load needs AVX-512BW).
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(src: *const bf16, live: usize) -> __m512 {
            let mut part = [0u16; LANES];
            // SAFETY: the caller vouches for `live ≤ 16` readable elements at `src`.
            let bits = unsafe {
                if live == LANES {
                    _mm256_loadu_si256(src.cast())
                } else {
                    std::ptr::copy_nonoverlapping(src.cast::<u16>(), part.as_mut_ptr(), live);
                    _mm256_loadu_si256(part.as_ptr().cast())
                }
            };
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
        }
    }

    impl Load for E4m3 {
        /// Zero-extends the codes to 32 bits and widens them as [`widen_e4m3`] does. A partial
        /// vector goes through a zeroed copy (code 0 is +0.0; a masked byte load needs
        /// AVX-512BW).
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(src: *const E4m3, live: usize) -> __m512 {
            let mut part = [0u8; LANES];
            // SAFETY: the caller vouches for `live ≤ 16` readable elements at `src`.
            let bytes = unsafe {
                if live == LANES {
                    _mm_loadu_si128(src.cast())
                } else {
                    std::ptr::copy_nonoverlapping(src.cast::<u8>(), part.as_mut_ptr(), live);
                    _mm_loadu_si128(part.as_ptr().cast())
                }
            };
            widen_e4m3(_mm512_cvtepu8_epi32(bytes))
        }
    }

    /// E4M3 codes (one per 32-bit lane) as f32, step for step as the AVX2 kernels' `widen_e4m3`.
    #[target_feature(enable = "avx512f")]
    fn widen_e4m3(codes: __m512i) -> __m512 {
        let magnitude = _mm512_and_si512(codes, _mm512_set1_epi32(0x7F));
        let unsigned = _mm512_mul_ps(
            _mm512_castsi512_ps(_mm512_slli_epi32::<20>(magnitude)),
            _mm512_set1_ps(f32::from_bits(247 << 23)),
        );
        let sign = _mm512_slli_epi32::<24>(_mm512_and_si512(codes, _mm512_set1_epi32(0x80)));
        let signed = _mm512_or_si512(_mm512_castps_si512(unsigned), sign);
        let nan = _mm512_cmpeq_epi32_mask(magnitude, _mm512_set1_epi32(0x7F));
        _mm512_castsi512_ps(_mm512_mask_mov_epi32(
            signed,
            nan,
            _mm512_set1_epi32(f32::NAN.to_bits() as i32),
        ))
    }

    /// [`super::fold_run`] with AVX-512 intrinsics: the same steps, lane by lane, and the same
    /// reduction tree.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fold_run(
        scores: &mut [f32; LANES],
        count: usize,
        max: &mut f32,
        sum: &mut f32,
    ) -> f32 {
        let padding = _mm512_set1_ps(f32::NEG_INFINITY);
        // SAFETY: `scores` is 16 floats.
        let attended = unsafe { _mm512_mask_loadu_ps(padding, lane_mask(count), scores.as_ptr()) };
        let new_max = max.max(_mm512_reduce_max_ps(attended));
        let rescale = super::rescale(*max, new_max);
        let p = exp_nonpositive(_mm512_sub_ps(attended, _mm512_set1_ps(new_max)));
        // SAFETY: `scores` is 16 floats.
        unsafe { _mm512_storeu_ps(scores.as_mut_ptr(), p) };
        *sum = *sum * rescale + reduce_add(p);
        *max = new_max;
        rescale
    }

    /// [`crate::math::exp_nonpositive`] on 16 lanes, step for step.
    #[target_feature(enable = "avx512f")]
    fn exp_nonpositive(x: __m512) -> __m512 {
        let splat = _mm512_set1_ps;
        let clamped = _mm512_max_ps(x, splat(EXP_UNDERFLOW));
        let shifted = _mm512_add_ps(
            _mm512_mul_ps(clamped, splat(std::f32::consts::LOG2_E)),
            splat(ROUNDING_MAGIC),
        );
        let magic_bits = _mm512_set1_epi32(ROUNDING_MAGIC.to_bits() as i32);
        let n = _mm512_sub_epi32(_mm512_castps_si512(shifted), magic_bits);
        let nf = _mm512_sub_ps(shifted, splat(ROUNDING_MAGIC));
        let r = _mm512_sub_ps(
            _mm512_sub_ps(clamped, _mm512_mul_ps(nf, splat(LN2_HI))),
            _mm512_mul_ps(nf, splat(LN2_LO)),
        );
        let poly = EXP_POLY[1..].iter().fold(splat(EXP_POLY[0]), |acc, &c| {
            _mm512_add_ps(_mm512_mul_ps(acc, r), splat(c))
        });
        let exp_r = _mm512_add_ps(
            _mm512_add_ps(_mm512_mul_ps(poly, _mm512_mul_ps(r, r)), r),
            splat(1.0),
        );
        let biased = _mm512_add_epi32(n, _mm512_set1_epi32(127));
        let two_to_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased));
        let kept = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, splat(EXP_UNDERFLOW));
        _mm512_maskz_mul_ps(kept, exp_r, two_to_n)
    }

    /// Sum of the 16 lanes in [`super::reduce`]'s order: lane `i` plus lane `i + 8`, then `i + 4`,
    /// `i + 2`, `i + 1`.
    #[target_feature(enable = "avx512f")]
    fn reduce_add(v: __m512) -> f32 {
        let high = upper_half(v);
        let x8 = _mm256_add_ps(_mm512_castps512_ps256(v), high);
        let x4 = _mm_add_ps(_mm256_castps256_ps128(x8), _mm256_extractf128_ps::<1>(x8));
        let x2 = _mm_add_ps(x4, _mm_movehl_ps(x4, x4));
        _mm_cvtss_f32(_mm_add_ss(x2, _mm_movehdup_ps(x2)))
    }

    /// Lanes 8..16 of `v`.
    #[target_feature(enable = "avx512f")]
    fn upper_half(v: __m512) -> __m256 {
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
    }

    /// `R` query heads against one run: `R` accumulator vectors, one masked key load and `R`
    /// FMAs per dimension.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `q` holds `R` rows of `head_dim`, `run` passed `check_run`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores<E: KvElement, const R: usize>(
        q: &[f32],
        head_dim: usize,
        run: &KeyRun<'_, E>,
        scale: f32,
        out: &mut [[f32; LANES]],
    ) {
        let mask = lane_mask(run.lanes);
        let mut acc = [_mm512_setzero_ps(); R];
        for i in 0..head_dim {
            // SAFETY: `check_run` bounds lanes below `run.lanes` of every dimension; the masked
            // load reads no other lane.
            let keys =
                unsafe { <E as Load>::load(run.keys_t.as_ptr().add(i * run.stride), run.lanes) };
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(q[r * head_dim + i]), keys, *a);
            }
        }
        let scale = _mm512_set1_ps(scale);
        for (a, o) in acc.iter().zip(out.iter_mut()) {
            // SAFETY: `o` is 16 floats; only lanes below `run.lanes` are written.
            unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr(), mask, _mm512_mul_ps(*a, scale)) };
        }
    }

    /// `R` query heads' weighted value sums, 16 dimensions at a time: `R` accumulator vectors,
    /// one masked value load and `R` FMAs per lane.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `values` holds `lanes` rows and `acc` `R` rows of `head_dim`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn accumulate<E: KvElement, const R: usize>(
        p: &[[f32; LANES]],
        values: &[E],
        lanes: usize,
        head_dim: usize,
        acc: &mut [f32],
    ) {
        for j in (0..head_dim).step_by(LANES) {
            let live = (head_dim - j).min(LANES);
            let mask = lane_mask(live);
            // SAFETY: the masked loads and stores touch dimensions below `head_dim` of rows the
            // caller vouches for.
            unsafe {
                let mut a: [__m512; R] = std::array::from_fn(|r| {
                    _mm512_maskz_loadu_ps(mask, acc.as_ptr().add(r * head_dim + j))
                });
                for (lane, row) in values.chunks_exact(head_dim).take(lanes).enumerate() {
                    let v = <E as Load>::load(row.as_ptr().add(j), live);
                    for (r, a) in a.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(p[r][lane]), v, *a);
                    }
                }
                for (r, a) in a.iter().enumerate() {
                    _mm512_mask_storeu_ps(acc.as_mut_ptr().add(r * head_dim + j), mask, *a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::pseudo_random;

    /// The softmax step of every kernel this CPU has matches the formula (running max, rescale,
    /// probabilities, denominator) for every lane count, from a fresh head and from one whose max
    /// moves or stays; the SIMD steps repeat the portable one to the bit.
    #[test]
    fn the_softmax_step_matches_its_formula_on_every_kernel() {
        let detected = Kernels::detect();
        let values = pseudo_random(LANES, 9);
        for count in 1..=LANES {
            for (max, sum) in [(f32::NEG_INFINITY, 0.0), (0.1, 2.5), (-0.2, 1.5)] {
                let start: [f32; LANES] = std::array::from_fn(|l| values[l] * 4.0);
                let want_max = start[..count].iter().copied().fold(max, f32::max);
                let want_rescale = (max as f64 - want_max as f64).exp();
                let probs: Vec<f64> = start[..count]
                    .iter()
                    .map(|&s| (s as f64 - want_max as f64).exp())
                    .collect();
                let want_sum = sum as f64 * want_rescale + probs.iter().sum::<f64>();
                let mut results = Vec::new();
                for kernels in [Kernels::Portable, detected] {
                    let mut scores = start;
                    let (mut got_max, mut got_sum) = (max, sum);
                    let rescale = kernels.fold_run(&mut scores, count, &mut got_max, &mut got_sum);
                    assert_eq!(got_max, want_max, "{kernels:?} {count} {max}");
                    assert!(
                        (rescale as f64 - want_rescale).abs() < 1e-6,
                        "{kernels:?} {count}"
                    );
                    assert!(
                        (got_sum as f64 - want_sum).abs() < 1e-5,
                        "{kernels:?} {count}"
                    );
                    for (p, want) in scores[..count].iter().zip(&probs) {
                        assert!((*p as f64 - want).abs() < 1e-6, "{kernels:?} {count} {max}");
                    }
                    results.push((
                        rescale.to_bits(),
                        got_sum.to_bits(),
                        scores[..count].to_vec(),
                    ));
                }
                assert_eq!(
                    results[0], results[1],
                    "{detected:?} vs portable: {count} {max}"
                );
            }
        }
    }

    /// The portable kernels and the SIMD ones this CPU has. The AVX-512 and AVX2 kernels are
    /// pinned to the same fused chain, so a CPU with either checks the bits both give.
    fn kernels_of_this_cpu() -> Vec<Kernels> {
        let detected = Kernels::detect();
        if matches!(detected, Kernels::Portable) {
            eprintln!("no AVX-512 or AVX2+FMA on this CPU: only the portable kernels are tested");
            vec![Kernels::Portable]
        } else {
            vec![Kernels::Portable, detected]
        }
    }

    /// One step of a kernel's chain: `acc + a·b`, rounded once when fused and twice when not.
    fn step(fused: bool, a: f32, b: f32, acc: f32) -> f32 {
        if fused {
            a.mul_add(b, acc)
        } else {
            acc + a * b
        }
    }

    /// Every kernel, every block size of query heads, f32, bf16 and E4M3 keys and values: each head's
    /// numbers are the ones it gets alone (to the bit), equal to the scalar chain the kernel is
    /// pinned to (fused or not) over the widened keys and values, and close to a float64
    /// reference.
    #[test]
    fn each_head_gets_the_same_bits_in_any_block_and_matches_a_reference() {
        for lanes in [11, LANES] {
            each_head_gets_the_same_bits_in_any_block_and_matches_a_reference_in::<f32>(lanes);
            each_head_gets_the_same_bits_in_any_block_and_matches_a_reference_in::<bf16>(lanes);
            each_head_gets_the_same_bits_in_any_block_and_matches_a_reference_in::<E4m3>(lanes);
        }
    }

    fn each_head_gets_the_same_bits_in_any_block_and_matches_a_reference_in<E: KvElement>(
        lanes: usize,
    ) {
        let d = 43; // a partial last vector at both widths (16 and 8 lanes)
        let stride = 16;
        let stored = |v: Vec<f32>| -> Vec<E> { v.into_iter().map(E::round).collect() };
        let keys_t = stored(pseudo_random(d * stride, 1));
        let values = stored(pseudo_random(lanes * d, 2));
        let run = KeyRun {
            keys_t: &keys_t,
            stride,
            values: &values,
            lanes,
        };
        let heads = 11; // one full register block and a partial one
        let q = pseudo_random(heads * d, 3);
        for kernels in kernels_of_this_cpu() {
            let fused = !matches!(kernels, Kernels::Portable);
            let mut all = vec![[0.0f32; LANES]; heads];
            kernels.scores(&q, d, &run, 0.5, &mut all);
            let mut acc_all = vec![0.25f32; heads * d];
            kernels.accumulate(&all, &values, lanes, d, &mut acc_all);
            for h in 0..heads {
                let mut alone = vec![[0.0f32; LANES]; 1];
                kernels.scores(&q[h * d..(h + 1) * d], d, &run, 0.5, &mut alone);
                assert_eq!(alone[0][..lanes], all[h][..lanes], "{kernels:?} head {h}");
                let mut acc_alone = vec![0.25f32; d];
                kernels.accumulate(&alone, &values, lanes, d, &mut acc_alone);
                assert_eq!(
                    acc_alone,
                    acc_all[h * d..(h + 1) * d],
                    "{kernels:?} head {h}"
                );
                for l in 0..lanes {
                    let chain = (0..d).fold(0.0f32, |a, i| {
                        step(fused, q[h * d + i], keys_t[i * stride + l].widen(), a)
                    });
                    assert_eq!(all[h][l], chain * 0.5, "{kernels:?} {h} {l}: chain");
                    let want: f64 = (0..d)
                        .map(|i| q[h * d + i] as f64 * keys_t[i * stride + l].widen() as f64)
                        .sum::<f64>()
                        * 0.5;
                    assert!(
                        (all[h][l] as f64 - want).abs() < 1e-5,
                        "{kernels:?} {h} {l}"
                    );
                }
                for i in 0..d {
                    let chain = (0..lanes).fold(0.25f32, |a, l| {
                        step(fused, all[h][l], values[l * d + i].widen(), a)
                    });
                    assert_eq!(acc_all[h * d + i], chain, "{kernels:?} {h} {i}: chain");
                    let want: f64 = 0.25
                        + (0..lanes)
                            .map(|l| all[h][l] as f64 * values[l * d + i].widen() as f64)
                            .sum::<f64>();
                    assert!((acc_all[h * d + i] as f64 - want).abs() < 1e-5);
                }
            }
        }
    }

    /// The SIMD kernels widen every E4M3 code, in every lane of a full or partial vector, to the
    /// bits of [`Stored::widen`]'s table (NaN codes included).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_simd_loads_widen_every_e4m3_code_like_the_table() {
        let codes: Vec<E4m3> = (0..=255u8).map(E4m3).collect();
        let want = |code: &E4m3| code.widen().to_bits();
        if std::arch::is_x86_feature_detected!("avx512f") {
            for (chunk, live) in codes.chunks(LANES).zip([LANES, 11].into_iter().cycle()) {
                let mut got = [0.0f32; LANES];
                // SAFETY: AVX-512F was detected; `chunk` holds 16 readable codes.
                unsafe {
                    let v = <E4m3 as avx512::Load>::load(chunk.as_ptr(), live);
                    std::arch::x86_64::_mm512_storeu_ps(got.as_mut_ptr(), v);
                }
                for (lane, code) in chunk.iter().enumerate() {
                    let want = if lane < live { want(code) } else { 0 };
                    assert_eq!(
                        got[lane].to_bits(),
                        want,
                        "AVX-512: {code:?} in lane {lane}"
                    );
                }
            }
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            for (chunk, live) in codes
                .chunks(LANES / 2)
                .zip([LANES / 2, 5].into_iter().cycle())
            {
                let mut got = [0.0f32; LANES / 2];
                // SAFETY: AVX2 was detected; `chunk` holds 8 readable codes; the mask is unused
                // by this element type.
                unsafe {
                    use std::arch::x86_64::*;
                    let v = <E4m3 as avx2::Load>::load(chunk.as_ptr(), live, _mm256_set1_epi32(-1));
                    _mm256_storeu_ps(got.as_mut_ptr(), v);
                }
                for (lane, code) in chunk.iter().enumerate() {
                    let want = if lane < live { want(code) } else { 0 };
                    assert_eq!(got[lane].to_bits(), want, "AVX2: {code:?} in lane {lane}");
                }
            }
        }
    }
}

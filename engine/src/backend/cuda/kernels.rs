//! Typed launches of the kernel files in `kernels/`: one method per kernel (or pair of
//! launches), taking device addresses and host sizes in named structs, and sizing each launch by
//! the rules of [`super::launch`]. [`Kernels`] holds the stream and the model's head shape, so a
//! call names only what changes from call to call.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, CudaStream};

use super::gpu::{DevPtr, Gpu, driver_error};
use super::launch::{
    Arg, DecodeSplit, PrefillTiling, SCORING_THREADS, TOP_K_THREADS, config, grid_stride_blocks,
    launch, pow2_threads, score_reduce_shared_bytes,
};
use crate::error::{EngineError, Result};

/// Every kernel the forward pass launches, with the kernel file that defines it.
const FUNCTIONS: &[(&str, &str)] = &[
    ("embedding.cu", "glimpse_embedding_gather"),
    ("rms_norm.cu", "glimpse_rms_norm"),
    ("rope.cu", "glimpse_rope"),
    ("silu_mul.cu", "glimpse_silu_mul"),
    ("cache_write.cu", "glimpse_cache_write"),
    ("prefill_attention.cu", "glimpse_prefill_attention"),
    ("decode_attention.cu", "glimpse_decode_attention"),
    ("decode_attention.cu", "glimpse_decode_attention_reduce"),
    ("eviction_scoring.cu", "glimpse_score_softmax_stats"),
    ("eviction_scoring.cu", "glimpse_score_reduce"),
    ("eviction_scoring.cu", "glimpse_score_pool"),
    ("top_k.cu", "glimpse_top_k"),
    ("compact.cu", "glimpse_compact_gather"),
    ("compact.cu", "glimpse_compact_scatter"),
    ("round_to_bf16.cu", "glimpse_round_to_bf16"),
];

/// The model's attention shape and the pool's block size, fixed for a backend.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

impl HeadShape {
    /// Width of the query part of a fused qkv row, where its keys start.
    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the key (and of the value) part of a fused qkv row.
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// The fused `[q | k | v]` rows of a pass.
#[derive(Debug, Clone, Copy)]
pub struct QkvRows {
    pub qkv: DevPtr<f32>,
    pub rows: usize,
    pub row_stride: usize,
}

/// One layer of the pool.
#[derive(Debug, Clone, Copy)]
pub struct KvLayer {
    pub keys: DevPtr<u16>,
    pub values: DevPtr<u16>,
}

/// An RMSNorm launch: `rows × pieces` pieces of `width` floats, rows `row_stride` apart (in
/// place when `x` and `out` are the same).
#[derive(Debug, Clone, Copy)]
pub struct RmsNorm {
    pub x: DevPtr<f32>,
    pub weight: DevPtr<f32>,
    pub out: DevPtr<f32>,
    pub rows: usize,
    pub pieces: usize,
    pub row_stride: usize,
    pub width: usize,
    pub eps: f32,
}

/// The RoPE angle tables on the device and each row's position.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub positions: DevPtr<i32>,
    pub cos: DevPtr<f32>,
    pub sin: DevPtr<f32>,
}

/// `glimpse_prefill_attention`'s per-sequence index arrays (`glimpse_decode_attention` reads
/// the block tables, context lengths and skipped ranges).
#[derive(Debug, Clone, Copy)]
pub struct PrefillIndex {
    pub block_tables: DevPtr<i32>,
    pub max_blocks_per_seq: usize,
    pub cu_seqlens: DevPtr<i32>,
    pub context_lens: DevPtr<i32>,
    pub num_lookahead: DevPtr<i32>,
    pub skip_starts: DevPtr<i32>,
    pub skip_ends: DevPtr<i32>,
    pub num_seqs: usize,
    /// The most rows any sequence has.
    pub max_rows: usize,
}

/// One eviction scoring launch's inputs (see `eviction_scoring.cu`).
pub struct ScoringLaunch {
    pub queries: DevPtr<f32>,
    pub extra_keys: Option<DevPtr<f32>>,
    pub row_stride: usize,
    pub num_queries: usize,
    pub key_cache: DevPtr<u16>,
    pub block_table: DevPtr<i32>,
    pub prompt_len: usize,
    pub scored: usize,
    pub suffix: bool,
    pub mean: bool,
    /// 0 none, 1 max, 2 average (the kernel file's `GLIMPSE_POOL_*`), and the kernel size.
    pub pool: (i32, usize),
}

/// Eviction scoring's intermediate arrays: `row_max` and `row_inv_sum` (`[num_heads, n_q]`
/// each) and `reduced` (`[num_heads, scored]`).
#[derive(Debug, Clone, Copy)]
pub struct ScoringStats {
    pub row_max: DevPtr<f32>,
    pub row_inv_sum: DevPtr<f32>,
    pub reduced: DevPtr<f32>,
}

/// One layer's compaction on the device: the kept entries `[num_kv_heads, count]`, the tables
/// the gather reads through and the scatter writes through, and the key and value scratch.
#[derive(Debug, Clone, Copy)]
pub struct Compaction {
    pub kept: DevPtr<i32>,
    pub count: usize,
    pub gather_table: DevPtr<i32>,
    pub scatter_table: DevPtr<i32>,
    pub key_scratch: DevPtr<u16>,
    pub value_scratch: DevPtr<u16>,
}

/// The loaded kernels, the stream they run on and the shape they run for.
pub struct Kernels {
    stream: Arc<CudaStream>,
    ordinal: usize,
    pub shape: HeadShape,
    functions: HashMap<&'static str, CudaFunction>,
}

/// Launches kernel `$name` of `$kernels` with `$config`, each argument converted to an [`Arg`].
macro_rules! run {
    ($kernels:expr, $name:expr, $config:expr, $($arg:expr),+ $(,)?) => {
        launch(
            &$kernels.stream,
            $kernels.ordinal,
            $kernels.get($name),
            $config,
            &[$(Arg::from($arg)),+],
        )
    };
}

fn int(value: usize) -> i32 {
    i32::try_from(value).expect("shapes were checked against the kernels' i32 limit")
}

impl Kernels {
    /// Finds every function of [`FUNCTIONS`] in `modules` (kernel file name → its module), to
    /// launch on `gpu`'s stream for a model of `shape`.
    pub fn load(
        gpu: &Gpu,
        modules: &HashMap<&'static str, Arc<CudaModule>>,
        shape: HeadShape,
    ) -> Result<Self> {
        let functions = FUNCTIONS
            .iter()
            .map(|&(file, name)| {
                let module = modules.get(file).ok_or_else(|| EngineError::CudaDriver {
                    ordinal: gpu.ordinal,
                    call: "cuModuleLoadData",
                    message: format!("kernel file {file} was not loaded"),
                })?;
                let function = module
                    .load_function(name)
                    .map_err(driver_error(gpu.ordinal, "cuModuleGetFunction"))?;
                Ok((name, function))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            stream: Arc::clone(&gpu.stream),
            ordinal: gpu.ordinal,
            shape,
            functions,
        })
    }

    fn get(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }

    fn scale(&self) -> f32 {
        1.0 / (self.shape.head_dim as f32).sqrt()
    }

    /// `out[r] = f32(table[ids[r]])`, `rows` rows of `hidden`.
    pub fn embedding(
        &self,
        table: DevPtr<u16>,
        ids: DevPtr<i32>,
        out: DevPtr<f32>,
        rows: usize,
        hidden: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let cfg = config((rows, 1, 1), pow2_threads(hidden, 256), 0);
        run!(
            self,
            "glimpse_embedding_gather",
            cfg,
            table.address(),
            ids.address(),
            out.address(),
            int(hidden)
        )
    }

    /// RMSNorm of every piece of `n`.
    pub fn rms_norm(&self, n: RmsNorm) -> Result<()> {
        if n.rows == 0 {
            return Ok(());
        }
        let threads = pow2_threads(n.width, 1024);
        let cfg = config((n.rows, n.pieces, 1), threads, 4 * threads);
        run!(
            self,
            "glimpse_rms_norm",
            cfg,
            n.x.address(),
            n.weight.address(),
            n.out.address(),
            int(n.row_stride),
            int(n.width),
            n.eps
        )
    }

    /// Qwen3's per-head RMSNorm of the queries and keys of `qkv`, in place.
    pub fn qk_norm(
        &self,
        qkv: QkvRows,
        (q_norm, k_norm): (DevPtr<f32>, DevPtr<f32>),
        eps: f32,
    ) -> Result<()> {
        let s = self.shape;
        let per_head = |x: DevPtr<f32>, weight, pieces| RmsNorm {
            x,
            weight,
            out: x,
            rows: qkv.rows,
            pieces,
            row_stride: qkv.row_stride,
            width: s.head_dim,
            eps,
        };
        self.rms_norm(per_head(qkv.qkv, q_norm, s.num_heads))?;
        self.rms_norm(per_head(qkv.qkv.at(s.q_width()), k_norm, s.num_kv_heads))
    }

    /// RoPE in place on the queries and keys of `qkv`, each row at its position.
    pub fn rope(&self, qkv: QkvRows, r: Rotation) -> Result<()> {
        if qkv.rows == 0 {
            return Ok(());
        }
        let s = self.shape;
        for (x, heads) in [
            (qkv.qkv, s.num_heads),
            (qkv.qkv.at(s.q_width()), s.num_kv_heads),
        ] {
            let cfg = config(
                (qkv.rows, 1, 1),
                pow2_threads(heads * s.head_dim / 2, 256),
                0,
            );
            run!(
                self,
                "glimpse_rope",
                cfg,
                x.address(),
                r.positions.address(),
                r.cos.address(),
                r.sin.address(),
                int(qkv.row_stride),
                int(heads),
                int(s.head_dim),
            )?;
        }
        Ok(())
    }

    /// `out[r] = silu(gate) · up` for `rows` rows of `[gate | up]`.
    pub fn silu_mul(
        &self,
        gate_up: DevPtr<f32>,
        out: DevPtr<f32>,
        rows: usize,
        intermediate: usize,
    ) -> Result<()> {
        let total = rows * intermediate;
        if total == 0 {
            return Ok(());
        }
        let cfg = config((grid_stride_blocks(total, 256), 1, 1), 256, 0);
        run!(
            self,
            "glimpse_silu_mul",
            cfg,
            gate_up.address(),
            out.address(),
            int(rows),
            int(intermediate)
        )
    }

    /// Rounds `count` floats to bf16 bits.
    pub fn round_to_bf16(&self, x: DevPtr<f32>, out: DevPtr<u16>, count: usize) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        assert!(
            x.len() >= count && out.len() >= count,
            "rounding past a buffer"
        );
        let cfg = config((grid_stride_blocks(count, 256), 1, 1), 256, 0);
        run!(
            self,
            "glimpse_round_to_bf16",
            cfg,
            x.address(),
            out.address(),
            count as i64
        )
    }

    /// Each row's K and V into `cache` at the row's slot (`-1`: no slot).
    pub fn cache_write(&self, qkv: QkvRows, slots: DevPtr<i32>, cache: KvLayer) -> Result<()> {
        if qkv.rows == 0 {
            return Ok(());
        }
        let s = self.shape;
        let cfg = config((qkv.rows, 1, 1), pow2_threads(s.kv_width(), 256), 0);
        run!(
            self,
            "glimpse_cache_write",
            cfg,
            qkv.qkv.address(),
            slots.address(),
            cache.keys.address(),
            cache.values.address(),
            int(qkv.row_stride),
            int(s.q_width()),
            int(s.q_width() + s.kv_width()),
            int(s.num_kv_heads),
            int(s.head_dim),
            int(s.block_size),
        )
    }

    /// Paged varlen attention of every row of `qkv` (queries, and the lookahead rows' side K/V)
    /// over `cache` into `out` (`[rows, num_heads · head_dim]`).
    pub fn prefill_attention(
        &self,
        qkv: QkvRows,
        cache: KvLayer,
        index: &PrefillIndex,
        tiling: PrefillTiling,
        out: DevPtr<f32>,
    ) -> Result<()> {
        if index.num_seqs == 0 {
            return Ok(());
        }
        let s = self.shape;
        let (side_keys, side_values) = (
            qkv.qkv.at(s.q_width()),
            qkv.qkv.at(s.q_width() + s.kv_width()),
        );
        let tiles = index.max_rows.div_ceil(tiling.rows_per_block);
        let cfg = config(
            (tiles, index.num_seqs, s.num_kv_heads),
            tiling.tile,
            tiling.shared_bytes,
        );
        run!(
            self,
            "glimpse_prefill_attention",
            cfg,
            qkv.qkv.address(),
            side_keys.address(),
            side_values.address(),
            int(qkv.row_stride),
            cache.keys.address(),
            cache.values.address(),
            index.block_tables.address(),
            int(index.max_blocks_per_seq),
            index.cu_seqlens.address(),
            index.context_lens.address(),
            index.num_lookahead.address(),
            index.skip_starts.address(),
            index.skip_ends.address(),
            out.address(),
            int(s.num_heads),
            int(s.head_dim),
            int(s.block_size),
            int(tiling.rows_per_block),
            self.scale(),
        )
    }

    /// Paged decode attention of one contiguous query row per sequence (`q`, `[num_seqs,
    /// num_heads · head_dim]`) over `cache` into `out` (same shape), through the partial
    /// results `partials` (max, sum, output), in two launches. `out` may be `q`: the second
    /// launch writes it only after the first has read every query.
    pub fn decode_attention(
        &self,
        q: DevPtr<f32>,
        cache: KvLayer,
        index: &PrefillIndex,
        (split, partials): (DecodeSplit, DevPtr<f32>),
        out: DevPtr<f32>,
    ) -> Result<()> {
        if index.num_seqs == 0 {
            return Ok(());
        }
        let s = self.shape;
        let len = split.partials_len(index.num_seqs, s.num_heads);
        let (partial_max, partial_sum, partial_out) =
            (partials, partials.at(len), partials.at(2 * len));
        let cfg = config(
            (index.num_seqs, s.num_kv_heads, split.partitions),
            split.tile,
            split.shared_bytes,
        );
        run!(
            self,
            "glimpse_decode_attention",
            cfg,
            q.address(),
            cache.keys.address(),
            cache.values.address(),
            index.block_tables.address(),
            int(index.max_blocks_per_seq),
            index.context_lens.address(),
            index.skip_starts.address(),
            index.skip_ends.address(),
            int(split.partition_size),
            partial_max.address(),
            partial_sum.address(),
            partial_out.address(),
            int(s.num_heads),
            int(s.head_dim),
            int(s.block_size),
            self.scale(),
        )?;
        let cfg = config(
            (index.num_seqs, s.num_heads, 1),
            pow2_threads(s.head_dim, 256),
            0,
        );
        run!(
            self,
            "glimpse_decode_attention_reduce",
            cfg,
            partial_max.address(),
            partial_sum.address(),
            partial_out.address(),
            out.address(),
            int(split.partitions),
            int(s.head_dim),
        )
    }

    /// One layer's eviction scores `[num_kv_heads, scored]` into `scores`, through `stats`.
    pub fn eviction_scores(
        &self,
        l: &ScoringLaunch,
        stats: ScoringStats,
        scores: DevPtr<f32>,
    ) -> Result<()> {
        let s = self.shape;
        let (h, kv, d) = (s.num_heads, s.num_kv_heads, s.head_dim);
        let extra = l.extra_keys.map_or(0, |p| p.address());
        let cfg = config(
            (l.num_queries, h, 1),
            SCORING_THREADS,
            4 * (d + 2 * SCORING_THREADS),
        );
        run!(
            self,
            "glimpse_score_softmax_stats",
            cfg,
            l.queries.address(),
            extra,
            int(l.row_stride),
            l.key_cache.address(),
            l.block_table.address(),
            int(l.prompt_len),
            i32::from(l.suffix),
            i32::from(l.extra_keys.is_some()),
            stats.row_max.address(),
            stats.row_inv_sum.address(),
            int(kv),
            int(d),
            int(s.block_size),
            self.scale(),
        )?;
        let blocks = l.scored.div_ceil(SCORING_THREADS).max(1);
        let cfg = config(
            (blocks, h, 1),
            SCORING_THREADS,
            score_reduce_shared_bytes(l.num_queries, d),
        );
        run!(
            self,
            "glimpse_score_reduce",
            cfg,
            l.queries.address(),
            int(l.row_stride),
            int(l.num_queries),
            l.key_cache.address(),
            l.block_table.address(),
            int(l.prompt_len),
            int(l.scored),
            i32::from(l.suffix),
            i32::from(l.mean),
            stats.row_max.address(),
            stats.row_inv_sum.address(),
            stats.reduced.address(),
            int(kv),
            int(d),
            int(s.block_size),
            self.scale(),
        )?;
        let cfg = config((blocks, kv, 1), SCORING_THREADS, 0);
        run!(
            self,
            "glimpse_score_pool",
            cfg,
            stats.reduced.address(),
            scores.address(),
            int(l.scored),
            int(h),
            l.pool.0,
            int(l.pool.1)
        )
    }

    /// The `k` best of `scored` scores per KV head plus the `window` entries after them, into
    /// `kept` (`[num_kv_heads, min(k, scored) + window]`).
    pub fn top_k(
        &self,
        scores: DevPtr<f32>,
        scored: usize,
        (k, window): (usize, usize),
        kept: DevPtr<i32>,
    ) -> Result<()> {
        let cfg = config(
            (self.shape.num_kv_heads, 1, 1),
            TOP_K_THREADS,
            4 * (256 + 2 * TOP_K_THREADS + 2),
        );
        run!(
            self,
            "glimpse_top_k",
            cfg,
            scores.address(),
            int(scored),
            int(k),
            int(window),
            kept.address()
        )
    }

    /// Moves the kept entries of `cache` through the scratch (gather, then scatter: out of
    /// place, see `compact.cu`).
    pub fn compact(&self, cache: KvLayer, c: Compaction) -> Result<()> {
        if c.count == 0 {
            return Ok(());
        }
        let s = self.shape;
        let cfg = config(
            (c.count, s.num_kv_heads, 1),
            pow2_threads(s.head_dim, 128),
            0,
        );
        let (d, bs) = (int(s.head_dim), int(s.block_size));
        run!(
            self,
            "glimpse_compact_gather",
            cfg,
            cache.keys.address(),
            cache.values.address(),
            c.gather_table.address(),
            c.kept.address(),
            c.key_scratch.address(),
            c.value_scratch.address(),
            d,
            bs,
        )?;
        run!(
            self,
            "glimpse_compact_scatter",
            cfg,
            cache.keys.address(),
            cache.values.address(),
            c.scatter_table.address(),
            c.key_scratch.address(),
            c.value_scratch.address(),
            d,
            bs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_the_pass_launches_is_defined_in_its_file() {
        for (file, name) in FUNCTIONS {
            let source = super::super::nvrtc::KERNEL_FILES
                .iter()
                .find(|k| k.name == *file)
                .unwrap_or_else(|| panic!("no kernel file {file}"));
            assert!(
                source
                    .source
                    .contains(&format!("GLIMPSE_KERNEL void {name}(")),
                "{name} not in {file}"
            );
        }
    }
}

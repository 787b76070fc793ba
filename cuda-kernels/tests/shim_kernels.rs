//! Every CUDA kernel, run through the host shim, against the CPU backend's own functions: bit for
//! bit where the kernel can follow the CPU's order of operations (gather, RoPE, SwiGLU, bf16
//! rounding, RMSNorm with one thread), within a stated tolerance where a parallel reduction
//! reorders a sum (RMSNorm with many threads). Shapes cover the edges: one thread, a width that
//! is not a multiple of the block, block sizes 1/16/32, GQA groups, head_dim 64/128.

use glimpse_cuda_kernels::{
    KvLayer, KvLayout, QkvRows, RmsNormBuild, RopeShape, cache_write, embedding_gather, rms_norm,
    rms_norm_heads_in_place, rope, round_to_bf16, silu_mul,
};
use glimpse_engine::backend::cpu::ops;
use glimpse_engine::config::{RopeConfig, RopeScaling};
use glimpse_engine::model::RopeTables;
use half::bf16;
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `got` is within `relative` of `want` (of 1 when `|want| < 1`); false for NaN.
fn within(got: f32, want: f32, relative: f32) -> bool {
    (got - want).abs() <= relative * want.abs().max(1.0)
}

fn uniform(rng: &mut ChaCha8Rng, len: usize, range: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-range..range)).collect()
}

#[test]
fn embedding_gather_widens_the_rows_of_the_token_ids_exactly() {
    let mut rng = rng(1);
    for (vocab, hidden, threads) in [(7, 64, 32), (50, 130, 128), (3, 1, 1)] {
        let table: Vec<u16> = uniform(&mut rng, vocab * hidden, 4.0)
            .into_iter()
            .map(|v| bf16::from_f32(v).to_bits())
            .collect();
        let ids: Vec<i32> = (0..9).map(|_| rng.random_range(0..vocab as i32)).collect();
        let mut out = vec![f32::NAN; ids.len() * hidden];
        embedding_gather(&table, hidden, &ids, &mut out, threads);
        for (row, &id) in out.chunks(hidden).zip(&ids) {
            let want = &table[id as usize * hidden..(id as usize + 1) * hidden];
            for (&got, &bits) in row.iter().zip(want) {
                assert_eq!(got.to_bits(), bf16::from_bits(bits).to_f32().to_bits());
            }
        }
    }
}

/// The CPU backend's RMSNorm of every row.
fn cpu_rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (xr, or) in x.chunks(weight.len()).zip(out.chunks_mut(weight.len())) {
        ops::rms_norm_row(xr, weight, eps, or);
    }
    out
}

#[test]
fn rms_norm_with_one_thread_equals_the_cpu_bit_for_bit() {
    let mut rng = rng(2);
    for width in [1, 64, 260] {
        let x = uniform(&mut rng, 5 * width, 3.0);
        let weight = uniform(&mut rng, width, 2.0);
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &weight, 1e-5, &mut out, 1, RmsNormBuild::Shipped);
        assert_eq!(out, cpu_rms_norm(&x, &weight, 1e-5));
    }
}

#[test]
fn rms_norm_with_a_tree_reduction_is_within_float_rounding_of_the_cpu() {
    let mut rng = rng(3);
    for (width, threads) in [(64, 32), (260, 64), (2048, 256), (5, 128)] {
        let x = uniform(&mut rng, 6 * width, 3.0);
        let weight = uniform(&mut rng, width, 2.0);
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &weight, 1e-6, &mut out, threads, RmsNormBuild::Shipped);
        let want = cpu_rms_norm(&x, &weight, 1e-6);
        // Both sums are within ~width·2⁻²⁴ of the exact one; the scale's error is half of that.
        let tolerance = width as f32 * 6e-8;
        for (&got, &want) in out.iter().zip(&want) {
            assert!(
                within(got, want, tolerance),
                "{got} vs {want} (width {width}, {threads} threads)"
            );
        }
    }
}

#[test]
fn the_per_head_q_k_norm_in_place_equals_the_cpu_and_leaves_the_rest_of_the_row() {
    let mut rng = rng(9);
    for (head_dim, heads, threads) in [(64, 4, 1), (128, 3, 1), (64, 2, 32)] {
        let row_stride = (heads + 2) * head_dim;
        let weight = uniform(&mut rng, head_dim, 2.0);
        let mut x = uniform(&mut rng, 5 * row_stride, 3.0);
        let mut want = x.clone();
        for row in want.chunks_mut(row_stride) {
            ops::rms_norm_heads_in_place(&mut row[..heads * head_dim], &weight, 1e-6);
        }
        rms_norm_heads_in_place(&mut x, row_stride, heads, &weight, 1e-6, threads);
        if threads == 1 {
            assert_eq!(x, want, "head_dim {head_dim}, {heads} heads");
        } else {
            let tolerance = head_dim as f32 * 6e-8;
            assert!(x.iter().zip(&want).all(|(&g, &w)| within(g, w, tolerance)));
        }
    }
}

#[test]
fn rms_norm_without_its_barriers_is_caught() {
    let mut rng = rng(4);
    let width = 512;
    let x = uniform(&mut rng, 4 * width, 3.0);
    let weight = uniform(&mut rng, width, 2.0);
    let mut out = vec![0.0; x.len()];
    rms_norm(&x, &weight, 1e-6, &mut out, 128, RmsNormBuild::WithoutSync);
    let want = cpu_rms_norm(&x, &weight, 1e-6);
    let wrong = out
        .iter()
        .zip(&want)
        .filter(|(g, w)| !within(**g, **w, 1e-3))
        .count();
    assert!(
        wrong > 0,
        "the broken kernel matched the CPU: the shim tests would not catch a missing __syncthreads"
    );
}

#[test]
fn rope_rotates_q_and_k_of_the_fused_rows_exactly_as_the_cpu_and_leaves_v() {
    let mut rng = rng(5);
    let scalings = [
        RopeScaling::None,
        RopeScaling::Linear { factor: 4.0 },
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        },
    ];
    for (scaling, (head_dim, heads, kv_heads, threads)) in
        scalings
            .into_iter()
            .zip([(64, 4, 1, 32), (128, 8, 2, 128), (8, 2, 2, 1)])
    {
        let tables = RopeTables::new(
            &RopeConfig {
                theta: 500_000.0,
                scaling,
            },
            head_dim,
            300,
        )
        .unwrap();
        let row_stride = (heads + 2 * kv_heads) * head_dim;
        let positions: Vec<i32> = (0..7)
            .map(|_| rng.random_range(0..300))
            .chain([0, 299])
            .collect();
        let mut x = uniform(&mut rng, positions.len() * row_stride, 2.0);
        let mut want = x.clone();
        for (row, &position) in want.chunks_mut(row_stride).zip(&positions) {
            for head in row[..(heads + kv_heads) * head_dim].chunks_mut(head_dim) {
                tables.rotate(head, position as usize);
            }
        }
        let shape = RopeShape {
            row_stride,
            num_heads: heads + kv_heads,
            head_dim,
        };
        rope(&mut x, &positions, &tables.cos, &tables.sin, shape, threads);
        assert_eq!(x, want, "head_dim {head_dim}, {heads} heads");
    }
}

#[test]
fn silu_mul_equals_the_cpu_bit_for_bit() {
    let mut rng = rng(6);
    for (rows, intermediate, blocks, threads) in [(5, 96, 3, 64), (1, 1, 1, 1), (9, 172, 7, 32)] {
        let gate_up = uniform(&mut rng, rows * 2 * intermediate, 20.0);
        let mut out = vec![0.0; rows * intermediate];
        silu_mul(&gate_up, intermediate, &mut out, blocks, threads);
        let mut want = vec![0.0; out.len()];
        ops::silu_mul(&gate_up, intermediate, &mut want);
        assert_eq!(out, want);
    }
}

/// Values whose bf16 rounding is an edge case: ties to even in both directions, overflow to
/// infinity, subnormals, signed zero, infinities and NaN.
fn rounding_edges() -> Vec<f32> {
    [
        0x3f80_8000u32,
        0x3f81_8000,
        0x3f80_8001,
        0x7f7f_ffff,
        0x0000_8000,
        0x8000_0000,
        0x0001_8000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0001,
        0x7f80_0001,
    ]
    .into_iter()
    .map(f32::from_bits)
    .collect()
}

/// The GEMM inputs' rounding is `half`'s, bit for bit, on the edge cases and on random values,
/// with a grid that covers the input in one pass and one that strides over it.
#[test]
fn round_to_bf16_rounds_like_half() {
    let mut rng = rng(7);
    let mut x = rounding_edges();
    x.extend(uniform(&mut rng, 301, 1e3));
    let want: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    for (blocks, threads) in [(1, 1), (3, 32), (16, 64)] {
        let mut out = vec![0x7fffu16; x.len()];
        round_to_bf16(&x, &mut out, blocks, threads);
        assert_eq!(out, want, "{blocks} blocks of {threads} threads");
    }
}

#[test]
fn cache_write_rounds_to_bf16_into_the_mapped_entries_only() {
    let mut rng = rng(7);
    for (block_size, kv_heads, head_dim) in [(1, 1, 64), (16, 2, 128), (32, 8, 64), (16, 4, 11)] {
        let num_blocks = 6;
        let kv_width = kv_heads * head_dim;
        let rows = QkvRows {
            row_stride: 3 * kv_width + 5,
            k_offset: kv_width,
            v_offset: 2 * kv_width + 5,
        };
        let mut entries: Vec<i32> = (0..(num_blocks * block_size) as i32).collect();
        entries.shuffle(&mut rng);
        let mut slot_mapping: Vec<i32> = entries
            .into_iter()
            .take(9.min(num_blocks * block_size - 1))
            .collect();
        slot_mapping.push(-1);
        let mut qkv = uniform(&mut rng, slot_mapping.len() * rows.row_stride, 100.0);
        for (at, edge) in qkv[rows.k_offset..].iter_mut().zip(rounding_edges()) {
            *at = edge;
        }
        const UNWRITTEN: u16 = 0xdead;
        let len = num_blocks * block_size * kv_width;
        let (mut keys, mut values) = (vec![UNWRITTEN; len], vec![UNWRITTEN; len]);
        let layout = KvLayout {
            num_kv_heads: kv_heads,
            head_dim,
            block_size,
        };
        let layer = KvLayer {
            keys: &mut keys,
            values: &mut values,
            layout,
        };
        cache_write(&qkv, rows, &slot_mapping, layer, 64);
        let mut want_keys = vec![UNWRITTEN; len];
        let mut want_values = vec![UNWRITTEN; len];
        for (row, &entry) in qkv.chunks(rows.row_stride).zip(&slot_mapping) {
            let Ok(entry) = usize::try_from(entry) else {
                continue;
            };
            for head in 0..kv_heads {
                for d in 0..head_dim {
                    let at = layout.index(entry, head, d);
                    want_keys[at] =
                        bf16::from_f32(row[rows.k_offset + head * head_dim + d]).to_bits();
                    want_values[at] =
                        bf16::from_f32(row[rows.v_offset + head * head_dim + d]).to_bits();
                }
            }
        }
        assert_eq!(
            keys, want_keys,
            "block size {block_size}, {kv_heads} KV heads, head_dim {head_dim}"
        );
        assert_eq!(values, want_values);
    }
}

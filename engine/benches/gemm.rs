//! Throughput of the CPU backend's GEMM (`y = x·Wᵀ`) on the shapes of a SmolLM-135M-sized layer,
//! with f32 and bf16 weights: GFLOP/s for prefill-sized row counts and GB/s of weight streamed for
//! decode-sized ones, from the fastest of repeated calls (the median is printed beside it).
//!
//! `cargo bench -p glimpse-engine --bench gemm`

use std::time::Instant;

use glimpse_engine::backend::cpu::linear::{PackedMatrix, matmul_packed};
use glimpse_engine::config::WeightsDtype;

fn main() {
    let shapes = [
        ("qkv", 960, 576),
        ("o", 576, 576),
        ("gate_up", 3072, 576),
        ("down", 576, 1536),
        ("lm_head", 49152, 576),
    ];
    let cases = [1usize, 16, 128, 512]
        .into_iter()
        .flat_map(|rows| shapes.map(|shape| (rows, shape)))
        .flat_map(|case| [WeightsDtype::F32, WeightsDtype::Bf16].map(|dtype| (case, dtype)));
    for ((rows, (name, n, k)), dtype) in cases {
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        // Packed once, as the model's weights are at load.
        let w = PackedMatrix::pack_as(&w, n, k, dtype);
        let mut y = vec![0.0; rows * n];
        matmul_packed(&x, rows, &w, &mut y);
        let reps = (2_000_000_000 / (2 * rows * n * k)).clamp(5, 2000);
        // Each call timed alone; the best is reported, as the machine may be shared with
        // other work that preempts some calls, and the median beside it.
        let mut times: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                matmul_packed(&x, rows, &w, &mut y);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let (secs, median) = (times[0], times[reps / 2]);
        let gflops = 2.0 * (rows * n * k) as f64 / secs / 1e9;
        let weight_gbs = w.size_bytes() as f64 / secs / 1e9;
        println!(
            "rows {rows:4} {name:8} {dtype:4} n={n:5} k={k:5}: {:8.1} us  {gflops:7.1} GFLOP/s  {weight_gbs:6.1} GB/s of W  (median {:8.1} us)",
            secs * 1e6,
            median * 1e6
        );
    }
}

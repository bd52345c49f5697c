//! GB/s of weights streamed by the LLM matrix × vector kernels (`walle_engine::llm::quant`)
//! on SmolLM2-135M's shapes, per kernel this CPU runs, on 1 and 2 threads, beside this
//! machine's memory read bandwidth measured in the same run (a plain sum over 512 MB).
//!
//! The matrices are random, and as many copies are cycled through as make ~200 MB, so the
//! weights come from memory as in a decode step, not from cache. Medians of several runs.
//!
//! `cargo bench --bench llm_matvec` (from the workspace root), or `cargo test --workspace --bench
//! llm_matvec` to run it on the dev profile's build (the engine is optimized there too).

use std::time::Instant;

use rand::{Rng, SeedableRng};
use walle_engine::llm::{Activation, GgmlType, Kernel, QuantMatrix};

fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

/// GB/s of a sum over a buffer far larger than the caches, on `threads` threads.
fn read_bandwidth(pool: &rayon::ThreadPool) -> f64 {
    use rayon::prelude::*;
    let data = vec![1u64; 64 << 20];
    let seconds = median_seconds(5, || {
        let sum: u64 = pool.install(|| {
            data.par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
                .sum()
        });
        std::hint::black_box(sum);
    });
    (data.len() * 8) as f64 / seconds / 1e9
}

fn random_blocks(rng: &mut impl Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let bytes = rows * cols / ty.block_elems() * ty.block_bytes();
    let mut out: Vec<u8> = (0..bytes).map(|_| rng.r#gen()).collect();
    // Sane f16 scales (small positive numbers) at the start of each block.
    for block in out.chunks_exact_mut(ty.block_bytes()) {
        block[0] = rng.r#gen();
        block[1] = 0x20;
        if ty == GgmlType::Q4_1 {
            block[2] = rng.r#gen();
            block[3] = 0x20;
        }
    }
    out
}

fn main() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let shapes = [
        ("Q4_1 ffn_up 1536×576", GgmlType::Q4_1, 1536, 576),
        ("Q4_1 ffn_down 576×1536", GgmlType::Q4_1, 576, 1536),
        ("Q4_0 1536×576", GgmlType::Q4_0, 1536, 576),
        ("Q8_0 embedding 49152×576", GgmlType::Q8_0, 49152, 576),
    ];
    let pools: Vec<(usize, rayon::ThreadPool)> = [1, 2]
        .into_iter()
        .map(|threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            (threads, pool)
        })
        .collect();
    for (threads, pool) in &pools {
        println!(
            "memory read bandwidth, {threads} thread(s): {:.1} GB/s",
            read_bandwidth(pool)
        );
    }
    for &(label, ty, rows, cols) in &shapes {
        let one = rows * cols / ty.block_elems() * ty.block_bytes();
        let copies = (200 << 20) / one + 1;
        let data: Vec<Vec<u8>> = (0..copies)
            .map(|_| random_blocks(&mut rng, ty, rows, cols))
            .collect();
        let matrices: Vec<QuantMatrix> = data
            .iter()
            .map(|d| QuantMatrix::new(ty, rows, cols, d).expect("sizes"))
            .collect();
        let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let x = Activation::quantize(&x).expect("whole blocks");
        let mut out = vec![0f32; rows];
        for (threads, pool) in &pools {
            let mut line = format!("{label:<26} {threads}t");
            for kernel in Kernel::available() {
                let seconds = median_seconds(5, || {
                    pool.install(|| {
                        for m in &matrices {
                            m.matvec_with(kernel, &x, &mut out).expect("shapes");
                        }
                    })
                });
                let gbs = (one * copies) as f64 / seconds / 1e9;
                line += &format!("  {kernel:?} {gbs:5.1} GB/s");
            }
            println!("{line}");
        }
    }
}

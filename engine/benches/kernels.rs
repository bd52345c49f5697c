//! GFLOP/s of the engine's GEMM paths on ResNet50's convolution shapes (as GEMMs: filters ×
//! patch length × output pixels): the `gemm` crate and our packed kernel on each instruction
//! set this CPU has, on the same operands, beside this CPU's fp32 peak, measured with
//! independent FMA chains. One thread; medians of several runs.

use std::mem::MaybeUninit;
use std::time::Instant;

use walle_engine::Tensor;
use walle_engine::ops::Epilogue;
use walle_engine::ops::conv::{Window, conv};
use walle_engine::ops::linalg::{MatRef, sgemm};
use walle_engine::ops::packed::{self, Isa, PackedFilters};
use walle_engine::ops::winograd::{Tile, Winograd};

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

/// Peak fp32 GFLOP/s of one core: 24 independent 16-lane FMA chains (AVX-512).
#[cfg(target_arch = "x86_64")]
fn fma_peak() -> Option<f64> {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f")]
    fn chains(iterations: usize) -> f32 {
        let mut acc = [_mm512_set1_ps(1.0); 24];
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        for _ in 0..iterations {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for v in acc {
            sum = _mm512_add_ps(sum, v);
        }
        _mm512_reduce_add_ps(sum)
    }
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return None;
    }
    let iterations = 20_000_000;
    // The best of several runs: a peak is what the core can do, not what it usually gets.
    let seconds = (0..5)
        .map(|_| {
            let start = Instant::now();
            // SAFETY: the feature was detected above.
            std::hint::black_box(unsafe { chains(std::hint::black_box(iterations)) });
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    Some((iterations * 24 * 16 * 2) as f64 / seconds / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak() -> Option<f64> {
    None
}

fn main() {
    let peak = fma_peak();
    match peak {
        Some(p) => println!("fp32 FMA peak (1 core, AVX-512): {p:.1} GFLOP/s"),
        None => println!("fp32 FMA peak: no AVX-512 on this CPU"),
    }
    // (filters, patch = channels × kernel area, pixels) of ResNet50's convolutions.
    let shapes = [
        (64, 147, 12544),
        (64, 64, 3136),
        (64, 576, 3136),
        (256, 64, 3136),
        (128, 1152, 784),
        (512, 128, 784),
        (256, 2304, 196),
        (1024, 256, 196),
        (512, 4608, 49),
        (2048, 512, 49),
    ];
    let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|isa| isa.supported())
        .collect();
    let packed_columns: String = isas
        .iter()
        .map(|isa| format!(" packed {isa:?} |"))
        .collect();
    println!("GFLOP/s (share of the AVX-512 peak):");
    println!("| m × k × n | gemm crate |{packed_columns}");
    println!("|---|---|{}", "---|".repeat(isas.len()));
    for (m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0.0; m * n];
        let flops = (2 * m * k * n) as f64;
        let cell = |seconds: f64| {
            let rate = flops / seconds / 1e9;
            match peak {
                Some(p) => format!(" {rate:.1} ({:.0} %) |", 100.0 * rate / p),
                None => format!(" {rate:.1} |"),
            }
        };
        let crate_cell = cell(median_seconds(9, || {
            sgemm(
                (m, k, n),
                MatRef::rows(&a, k),
                MatRef::rows(&b, n),
                &mut c,
                false,
                1,
            )
        }));
        let mut out = vec![MaybeUninit::new(0.0f32); m * n];
        let packed_cells: String = isas
            .iter()
            .map(|&isa| {
                let filters = PackedFilters::new(&a, m, k).with_isa(isa);
                cell(median_seconds(9, || {
                    packed::gemm(&filters, &b, n, &mut out, Epilogue::default(), 1)
                }))
            })
            .collect();
        println!("| {m} × {k} × {n} |{crate_cell}{packed_cells}");
    }
    winograd_versus_gemm();
}

/// ResNet50's 3×3 convolutions (channels in = out, padded 1): ms per run of im2col + GEMM and
/// of Winograd F(2×2) and F(4×4), one thread.
fn winograd_versus_gemm() {
    println!("| 3×3 conv c→c, h×w | im2col+GEMM ms | Winograd F2 ms | Winograd F4 ms |");
    println!("|---|---|---|---|");
    for (c, side) in [(64, 56), (128, 28), (256, 14), (512, 7)] {
        let x = Tensor::new(
            vec![1, c, side, side],
            (0..c * side * side)
                .map(|i| (i % 11) as f32 * 0.1)
                .collect(),
        )
        .unwrap();
        let wt = Tensor::new(
            vec![c, c, 3, 3],
            (0..c * c * 9).map(|i| (i % 13) as f32 * 0.01).collect(),
        )
        .unwrap();
        let window = Window {
            kernel: [3, 3],
            strides: [1, 1],
            dilations: [1, 1],
            pads: [1; 4],
            ceil: false,
        };
        let gemm_ms = 1e3
            * median_seconds(7, || {
                std::hint::black_box(conv(&x, &wt, None, &window, 1, 1).unwrap());
            });
        let mut out = vec![0.0; c * side * side];
        let mut wino = |tile| {
            let plan = Winograd::new(tile, wt.data(), c, c);
            1e3 * median_seconds(7, || {
                plan.run(
                    (x.data(), [side, side]),
                    (1, 1),
                    (&mut out, [side, side]),
                    Epilogue::default(),
                    1,
                )
            })
        };
        let (f2, f4) = (wino(Tile::F2), wino(Tile::F4));
        println!("| {c}→{c}, {side}×{side} | {gemm_ms:.2} | {f2:.2} | {f4:.2} |");
    }
}

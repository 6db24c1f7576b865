//! `cargo bench --bench conv`: CPU conv2d throughput on YOLOv8n-like layers, per thread count
//! and kernel (AVX2+FMA vs the baseline ISA), against a cache-resident GEMM measured in the same
//! run. Prints GFLOP/s; on shared machines read the ratios, not the absolute numbers.

use kestrel::ops::{self, numel, Activation, Conv2d};
use kestrel::rng::SplitMix64;

mod common;
use common::median_seconds;

fn main() {
    let mut r = SplitMix64::new(7);
    let layers: [(&str, [usize; 4], [usize; 4], Conv2d); 7] = [
        (
            "stem 3->16 3x3 s2 @320",
            [1, 3, 320, 320],
            [16, 3, 3, 3],
            Conv2d { strides: [2, 2], pads: [1; 4], activation: Activation::Silu, ..Conv2d::default() },
        ),
        (
            "16->32 3x3 s2 @160",
            [1, 16, 160, 160],
            [32, 16, 3, 3],
            Conv2d { strides: [2, 2], pads: [1; 4], activation: Activation::Silu, ..Conv2d::default() },
        ),
        (
            "C2f 16->16 3x3 s1 @80",
            [1, 16, 80, 80],
            [16, 16, 3, 3],
            Conv2d { pads: [1; 4], activation: Activation::Silu, ..Conv2d::default() },
        ),
        (
            "C2f 48->32 1x1 @80",
            [1, 48, 80, 80],
            [32, 48, 1, 1],
            Conv2d { activation: Activation::Silu, ..Conv2d::default() },
        ),
        (
            "64->128 3x3 s2 @40",
            [1, 64, 40, 40],
            [128, 64, 3, 3],
            Conv2d { strides: [2, 2], pads: [1; 4], activation: Activation::Silu, ..Conv2d::default() },
        ),
        (
            "256->192 1x1 @40",
            [1, 256, 40, 40],
            [192, 256, 1, 1],
            Conv2d { activation: Activation::Silu, ..Conv2d::default() },
        ),
        (
            "dw 128 3x3 s1 @40",
            [1, 128, 40, 40],
            [128, 1, 3, 3],
            Conv2d { pads: [1; 4], group: 128, activation: Activation::Silu, ..Conv2d::default() },
        ),
    ];
    println!("kernel {}, {} threads; median of 15 runs after a warm-up", ops::kernel_name(), ops::max_threads());
    // The ceiling measured in the same run: a cache-resident 96x128x96 matmul on one thread.
    let ceiling = |r: &mut SplitMix64| {
        let (a, b) = (r.normal_vec(96 * 128), r.normal_vec(128 * 96));
        let mut c = vec![0.0; 96 * 96];
        let t = median_seconds(51, || ops::matmul(&a, &[96, 128], &b, &[128, 96], &mut c).unwrap());
        2.0 * 96.0 * 128.0 * 96.0 / t / 1e9
    };
    ops::set_max_threads(1);
    println!("GEMM ceiling (1 thread, cache-resident): {:.1} GFLOP/s", ceiling(&mut r));
    ops::set_max_threads(0);
    for (name, xs, ws, p) in &layers {
        let x = r.normal_vec(numel(xs));
        let w = r.normal_vec(numel(ws));
        let b = r.normal_vec(ws[0]);
        let os = ops::conv2d_output_shape(xs, ws, p).unwrap();
        let mut out = vec![0.0; numel(&os)];
        let flops = 2.0 * (numel(&os) * ws[1] * ws[2] * ws[3]) as f64;
        let mut line = format!("{name:<26} {:>6.1} MFLOP", flops / 1e6);
        let best = *ops::CpuKernel::available().last().expect("portable is always available");
        let runs = std::iter::once(("all thr", 0, best))
            .chain(ops::CpuKernel::available().iter().rev().map(|&k| ("1 thr", 1, k)));
        for (label, threads, kernel) in runs {
            ops::set_max_threads(threads);
            ops::force_kernel(Some(kernel));
            let t = median_seconds(15, || ops::conv2d(&x, xs, &w, ws, Some(&b), p, &mut out).unwrap());
            line += &format!("  {label} {}: {:>6.3} ms {:>5.1} GFLOP/s", kernel.name(), t * 1e3, flops / t / 1e9);
        }
        ops::set_max_threads(0);
        ops::force_kernel(None);
        println!("{line}");
    }
}

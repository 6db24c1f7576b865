//! `cargo bench --bench delta`: one delta conv step against the dense conv of the same layer, on
//! layers shaped like the shipped fused detector's (192x192 input), for two kinds of change:
//! a moving object (a square patch of every channel redrawn: clustered, as a static camera sees
//! motion) and scattered entries (each entry redrawn with some probability: sensor noise). Prints
//! per case the fraction of positions moved, the delta step's time as a share of the dense
//! conv's, and its multiply-adds as a share of dense: where the two shares part is the step's
//! overhead. On shared machines read the shares, not the times.

use kestrel::ops::{self, numel, Activation, Conv2d, DeltaConv2d};
use kestrel::rng::SplitMix64;

mod common;
use common::median_seconds;

/// Two frames that differ where `change` says: (previous, next).
fn frames(xs: &[usize; 4], change: Change, r: &mut SplitMix64) -> (Vec<f32>, Vec<f32>) {
    let x = r.normal_vec(numel(xs));
    let mut y = x.clone();
    let (c, h, w) = (xs[1], xs[2], xs[3]);
    match change {
        Change::Patch(share) => {
            let side = ((share * (h * w) as f64).sqrt() as usize).min(h).min(w);
            for ci in 0..c {
                for i in h / 4..(h / 4 + side).min(h) {
                    for j in w / 4..(w / 4 + side).min(w) {
                        y[(ci * h + i) * w + j] += 2.0 * r.normal();
                    }
                }
            }
        }
        Change::Scattered(share) => {
            for v in &mut y {
                if r.unit() < share {
                    *v += 2.0 * r.normal();
                }
            }
        }
    }
    (x, y)
}

#[derive(Clone, Copy, Debug)]
enum Change {
    /// A square of this share of the positions, every channel.
    Patch(f64),
    /// This share of the entries.
    Scattered(f64),
}

fn main() {
    let mut r = SplitMix64::new(9);
    if let Ok(t) = std::env::var("KESTREL_BENCH_THREADS") {
        ops::set_max_threads(t.parse().expect("a thread count"));
    }
    let silu = Activation::Silu;
    let layers: [(&str, [usize; 4], [usize; 4], Conv2d); 5] = [
        (
            "stem 3->16 3x3 s2 @192",
            [1, 3, 192, 192],
            [16, 3, 3, 3],
            Conv2d { strides: [2, 2], pads: [1; 4], activation: silu.clone(), ..Conv2d::default() },
        ),
        (
            "16->32 3x3 s2 @96",
            [1, 16, 96, 96],
            [32, 16, 3, 3],
            Conv2d { strides: [2, 2], pads: [1; 4], activation: silu.clone(), ..Conv2d::default() },
        ),
        (
            "C2f 16->16 3x3 s1 @48",
            [1, 16, 48, 48],
            [16, 16, 3, 3],
            Conv2d { pads: [1; 4], activation: silu.clone(), ..Conv2d::default() },
        ),
        (
            "C2f 48->32 1x1 @48",
            [1, 48, 48, 48],
            [32, 48, 1, 1],
            Conv2d { activation: silu.clone(), ..Conv2d::default() },
        ),
        (
            "head 64->64 3x3 s1 @24",
            [1, 64, 24, 24],
            [64, 64, 3, 3],
            Conv2d { pads: [1; 4], activation: silu.clone(), ..Conv2d::default() },
        ),
    ];
    let changes = [Change::Patch(0.05), Change::Patch(0.2), Change::Scattered(0.01), Change::Scattered(0.05)];
    println!("kernel {}, {} threads; median of 21 steps after a warm-up", ops::kernel_name(), ops::max_threads());
    println!(
        "{:<24} {:<16} {:>8} {:>10} {:>10} {:>6} {:>9}",
        "layer", "change", "moved", "time/dense", "MACs/dense", "path", "dense ms"
    );
    // KESTREL_BENCH_ONLY=text: only the layers whose name holds it (for a profiler).
    let only = std::env::var("KESTREL_BENCH_ONLY").unwrap_or_default();
    for (name, xs, ws, p) in &layers {
        if !name.contains(only.as_str()) {
            continue;
        }
        let w = r.normal_vec(numel(ws));
        let b = r.normal_vec(ws[0]);
        let os = ops::conv2d_output_shape(xs, ws, p).unwrap();
        let mut out = vec![0.0; numel(&os)];
        for &change in &changes {
            let (x0, x1) = frames(xs, change, &mut r);
            let dense = median_seconds(21, || ops::conv2d(&x1, xs, &w, ws, Some(&b), p, &mut out).unwrap());
            let mut layer = DeltaConv2d::new(xs, &w, ws, Some(&b), p, 1e-3).unwrap();
            // Each timed step goes x0 -> x1 from a keyframe of x0 and a step on x0 itself (where
            // nothing fires, so it only readies the state: neither is timed). The reset first
            // clears the cost model's skipped probes, so every timed step scans and decides.
            let mut step = ops::DeltaStep::default();
            let mut times: Vec<f64> = (0..22)
                .map(|_| {
                    layer.reset();
                    layer.keyframe(&x0).unwrap();
                    layer.step(&x0).unwrap();
                    let s = std::time::Instant::now();
                    step = layer.step_bounded(&x1, usize::MAX).unwrap();
                    s.elapsed().as_secs_f64()
                })
                .skip(1)
                .collect();
            times.sort_by(f64::total_cmp);
            let delta = times[times.len() / 2];
            let moved = {
                let (c, hw) = (xs[1], xs[2] * xs[3]);
                (0..hw).filter(|&p| (0..c).any(|ci| x0[ci * hw + p] != x1[ci * hw + p])).count() as f64 / hw as f64
            };
            println!(
                "{name:<24} {:<16} {:>7.1}% {:>10.2} {:>10.2} {:>6} {:>9.3}",
                format!("{change:?}"),
                100.0 * moved,
                delta / dense,
                step.macs as f64 / layer.dense_macs() as f64,
                if step.keyed { "dense" } else { "delta" },
                dense * 1e3
            );
        }
    }
}

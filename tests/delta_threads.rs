//! The delta conv's step split over the worker pool (scan by position ranges, position GEMM by
//! bands of input rows, even bands then odd, activation by lane) gives the dense conv at
//! theta = 0 and the single-threaded step's result, for stride 1 and the stride-2 residue
//! classes. Its own binary: it lowers the global parallel threshold so that test-sized layers
//! split, which must not change how other tests' ops run.

use kestrel::ops::{self, Activation, Conv2d};
use kestrel::rng::SplitMix64;

/// Relative L2 error allowed against the float64 conv: the accumulated outputs differ from it by
/// float32 rounding of a few frames' sums.
const DELTA_F64_TOL: f64 = 1e-5;

fn ref_conv2d(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], bias: &[f32], p: &Conv2d) -> Vec<f64> {
    let [n, c, h, wd] = xs;
    let [m, _, kh, kw] = ws;
    let os = ops::conv2d_output_shape(&xs, &ws, p).unwrap();
    let (oh, ow) = (os[2], os[3]);
    let mut out = Vec::with_capacity(n * m * oh * ow);
    for b in 0..n {
        for o in 0..m {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut s = bias[o] as f64;
                    for ci in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let ih = (y * p.strides[0] + i) as isize - p.pads[0] as isize;
                                let iw = (xo * p.strides[1] + j) as isize - p.pads[1] as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                    continue;
                                }
                                let xv = x[((b * c + ci) * h + ih as usize) * wd + iw as usize] as f64;
                                s += xv * w[((o * c + ci) * kh + i) * kw + j] as f64;
                            }
                        }
                    }
                    out.push(if matches!(p.activation, Activation::Relu) { s.max(0.0) } else { s });
                }
            }
        }
    }
    out
}

fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn a_threaded_delta_step_matches_the_dense_conv_and_the_single_threaded_step() {
    let seed = SplitMix64::from_time().next_u64();
    eprintln!("seed {seed}");
    let mut r = SplitMix64::new(seed);
    // Test-sized layers split: every pass has enough work for two workers.
    ops::set_parallel_threshold(1 << 10);
    let conv = |stride: usize| Conv2d {
        strides: [stride, stride],
        pads: [1; 4],
        activation: Activation::Relu,
        ..Conv2d::default()
    };
    // Tall enough for four bands of one kernel extent (3 rows) or more.
    for (xs, ws, p) in [([1, 6, 26, 20], [8, 6, 3, 3], conv(1)), ([1, 5, 30, 22], [7, 5, 3, 3], conv(2))] {
        let n: usize = xs.iter().product();
        let w: Vec<f32> = (0..ws.iter().product::<usize>()).map(|_| r.normal()).collect();
        let bias: Vec<f32> = (0..ws[0]).map(|_| r.normal()).collect();
        let mut x: Vec<f32> = (0..n).map(|_| r.normal()).collect();
        let mut frames = vec![x.clone()];
        for _ in 0..3 {
            // A fifth of the positions move, in every channel: dense firing within positions,
            // so the position GEMM runs.
            let hw = xs[2] * xs[3];
            for pos in 0..hw {
                if r.unit() < 0.2 {
                    for ci in 0..xs[1] {
                        x[ci * hw + pos] += r.normal();
                    }
                }
            }
            frames.push(x.clone());
        }
        let mut results = Vec::new();
        for threads in [2, 1] {
            ops::set_max_threads(threads);
            let mut delta = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&bias), &p, 0.0).unwrap();
            // The threaded delta paths under test, not the cost model's dense fallback.
            delta.set_cost_model(false);
            let before = ops::parallel_runs();
            let mut outs = Vec::new();
            for (k, frame) in frames.iter().enumerate() {
                let step = delta.step_bounded(frame, usize::MAX).unwrap();
                assert_eq!(step.keyed, k == 0, "frame {k}: {step:?}");
                let reference = ref_conv2d(frame, xs, &w, ws, &bias, &p);
                let err = rel_l2(delta.output(), &reference);
                assert!(err <= DELTA_F64_TOL, "{threads} threads, x {xs:?} frame {k}: relative L2 {err:.2e}");
                outs.push(delta.output().to_vec());
            }
            let split = ops::parallel_runs() - before;
            if threads > 1 && ops::max_threads() > 1 {
                assert!(split > 0, "x {xs:?}: nothing split over the pool, the threaded path was not tested");
            } else {
                assert_eq!(split, 0);
            }
            results.push(outs);
        }
        // Threads change who adds into an output, and for a strided conv the order of its
        // classes' sums: agreement to float rounding.
        for (a, b) in results[0].iter().zip(&results[1]) {
            let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
            let err = rel_l2(a, &b64);
            assert!(err <= 1e-6, "threaded against single-threaded: relative L2 {err:.2e}");
        }
    }
}

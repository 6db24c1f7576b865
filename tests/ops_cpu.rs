//! The CPU operator library (`kestrel::ops`) against plain float64 twins, on fresh random inputs
//! and random shapes; wrong shapes give errors, never panics; steady-state ops do not allocate.
//!
//! Every test prints its seed; rerun one with `KESTREL_SEED=<seed>`.
//! Throughput (release build): `cargo test --release --test ops_cpu -- --ignored --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kestrel::ops::{
    self, Activation, BinaryOp, ClipThreshold, Conv2d, CoordTransform, NearestMode, Pool2d, Resize, ResizeMode,
};
use kestrel::rng::SplitMix64;
use kestrel::tol::{rel_l2, Tol};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Counts allocations made by the current thread (the ops' own thread, not the test harness).
struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to `System` unchanged; the counter is a const-initialised
// thread-local Cell, which neither allocates nor unwinds (`try_with` tolerates teardown).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

fn rng(test: &str) -> SplitMix64 {
    let seed = std::env::var("KESTREL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SplitMix64::from_time().next_u64());
    eprintln!("{test}: seed {seed}");
    SplitMix64::new(seed)
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Uniform integer in lo..=hi.
fn pick(r: &mut SplitMix64, lo: usize, hi: usize) -> usize {
    lo + r.below((hi - lo + 1) as u64) as usize
}

#[track_caller]
fn assert_close(what: &str, out: &[f32], reference: &[f64]) {
    assert_eq!(out.len(), reference.len(), "{what}: length");
    let err = rel_l2(out, reference);
    assert!(Tol::F32.accepts(err), "{what}: rel_l2 {err:.3e} above {} ({})", Tol::F32.rel_l2, Tol::F32.name);
}

/// As [`assert_close`], but the error is measured against the norm of `scale` rather than the
/// output's own: f32 rounding is proportional to the magnitudes summed, not to what is left
/// after a clip (a clipped ReLU zeroes most outputs) or a cancellation (a mean near 0).
#[track_caller]
fn assert_close_scaled(what: &str, out: &[f32], reference: &[f64], scale: &[f64]) {
    assert_eq!(out.len(), reference.len(), "{what}: length");
    let diff: f64 = out.iter().zip(reference).map(|(&a, &b)| (a as f64 - b).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = scale.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-30);
    let err = diff / norm;
    assert!(Tol::F32.accepts(err), "{what}: error {err:.3e} of the pre-activation norm above {}", Tol::F32.rel_l2);
}

/// Row-major multi-index of flat index `i`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
}

// ---------------------------------------------------------------------------------------------
// float64 twins
// ---------------------------------------------------------------------------------------------

/// erf in f64: Taylor series below 3, continued fraction for erfc above (|error| ~1e-14).
fn erf64(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 { erf_series(a) } else { 1.0 - erfc_cf(a) };
    r.copysign(x)
}

fn erf_series(a: f64) -> f64 {
    let (x2, mut term, mut sum) = (a * a, a, a);
    for n in 1..200 {
        term *= -x2 / n as f64;
        let t = term / (2 * n + 1) as f64;
        sum += t;
        if t.abs() < 1e-17 * sum.abs() {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// erfc(a) for a >= 3: e^-a^2 / sqrt(pi) / (a + (1/2) / (a + 1 / (a + (3/2) / (a + ...)))).
fn erfc_cf(a: f64) -> f64 {
    let mut f = a;
    for k in (1..=80).rev() {
        f = a + (k as f64 / 2.0) / f;
    }
    (-a * a).exp() / std::f64::consts::PI.sqrt() / f
}

/// Phi(x), accurate in both tails.
fn normal_cdf64(x: f64) -> f64 {
    let z = x / std::f64::consts::SQRT_2;
    if z < -3.0 {
        0.5 * erfc_cf(-z)
    } else {
        0.5 * (1.0 + erf64(z))
    }
}

fn act64(act: &Activation, x: f64, channel: usize) -> f64 {
    match act {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Elu { alpha } => {
            if x > 0.0 {
                x
            } else {
                *alpha as f64 * x.exp_m1()
            }
        }
        Activation::Gelu => x * normal_cdf64(x),
        Activation::ClippedRelu(t) => {
            let t = match t {
                ClipThreshold::PerLayer(t) => *t as f64,
                ClipThreshold::PerChannel(ts) => ts[channel] as f64,
            };
            if x > 0.0 && x <= t {
                x
            } else {
                0.0
            }
        }
        Activation::ClippedSilu(t) => {
            let t = match t {
                ClipThreshold::PerLayer(t) => *t as f64,
                ClipThreshold::PerChannel(ts) => ts[channel] as f64,
            };
            let y = x / (1.0 + (-x).exp());
            if y <= t {
                y
            } else {
                0.0
            }
        }
        Activation::LeakyRelu { alpha } => {
            if x >= 0.0 {
                x
            } else {
                *alpha as f64 * x
            }
        }
        Activation::HardSigmoid { alpha, beta } => (*alpha as f64 * x + *beta as f64).clamp(0.0, 1.0),
        Activation::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        Activation::Clip { min, max } => x.max(*min as f64).min(*max as f64),
    }
}

struct ConvCase {
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    p: Conv2d,
    bias: bool,
}

fn ref_conv2d(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], bias: Option<&[f32]>, p: &Conv2d) -> Vec<f64> {
    let [n, c, h, wd] = xs;
    let [m, cg, kh, kw] = ws;
    let mg = m / p.group;
    let oh = (h + p.pads[0] + p.pads[2] - (p.dilations[0] * (kh - 1) + 1)) / p.strides[0] + 1;
    let ow = (wd + p.pads[1] + p.pads[3] - (p.dilations[1] * (kw - 1) + 1)) / p.strides[1] + 1;
    let mut out = Vec::with_capacity(n * m * oh * ow);
    for b in 0..n {
        for o in 0..m {
            let g = o / mg;
            for y in 0..oh {
                for xo in 0..ow {
                    let mut s = bias.map_or(0.0, |bb| bb[o] as f64);
                    for ci in 0..cg {
                        let cin = g * cg + ci;
                        for i in 0..kh {
                            for j in 0..kw {
                                let ih = (y * p.strides[0] + i * p.dilations[0]) as isize - p.pads[0] as isize;
                                let iw = (xo * p.strides[1] + j * p.dilations[1]) as isize - p.pads[1] as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                    continue;
                                }
                                let xv = x[((b * c + cin) * h + ih as usize) * wd + iw as usize] as f64;
                                let wv = w[((o * cg + ci) * kh + i) * kw + j] as f64;
                                s += xv * wv;
                            }
                        }
                    }
                    out.push(act64(&p.activation, s, o));
                }
            }
        }
    }
    let _ = c;
    out
}

// ---------------------------------------------------------------------------------------------
// conv2d
// ---------------------------------------------------------------------------------------------

fn random_activation(r: &mut SplitMix64, m: usize) -> Activation {
    match r.below(9) {
        0 => Activation::None,
        1 => Activation::Relu,
        2 => Activation::Sigmoid,
        3 => Activation::Silu,
        4 => Activation::Elu { alpha: r.uniform(0.5, 1.5) },
        5 => Activation::Gelu,
        6 => Activation::ClippedRelu(ClipThreshold::PerLayer(r.uniform(0.5, 3.0))),
        7 => Activation::ClippedRelu(ClipThreshold::PerChannel((0..m).map(|_| r.uniform(0.5, 3.0)).collect())),
        _ => Activation::LeakyRelu { alpha: 0.1 },
    }
}

/// A random valid conv: `groups_kind` 0 = one group, 1 = two groups, 2 = depthwise.
fn random_conv(r: &mut SplitMix64, groups_kind: u64) -> ConvCase {
    loop {
        let (group, cg, mg) = match groups_kind {
            0 => (1, pick(r, 1, 6), pick(r, 1, 13)),
            1 => (2, pick(r, 1, 4), pick(r, 1, 9)),
            _ => {
                let c = pick(r, 1, 6);
                (c, 1, pick(r, 1, 2))
            }
        };
        let (kh, kw) = (pick(r, 1, 4), pick(r, 1, 4));
        let strides = [pick(r, 1, 3), pick(r, 1, 3)];
        let dilations = [pick(r, 1, 2), pick(r, 1, 2)];
        let pads = [pick(r, 0, 2), pick(r, 0, 2), pick(r, 0, 2), pick(r, 0, 2)];
        let (h, w) = (pick(r, 1, 11), pick(r, 1, 11));
        let span = |k: usize, d: usize| d * (k - 1) + 1;
        if h + pads[0] + pads[2] < span(kh, dilations[0]) || w + pads[1] + pads[3] < span(kw, dilations[1]) {
            continue;
        }
        let m = group * mg;
        let p = Conv2d { strides, pads, dilations, group, activation: random_activation(r, m) };
        return ConvCase {
            x_shape: [pick(r, 1, 2), group * cg, h, w],
            w_shape: [m, cg, kh, kw],
            p,
            bias: r.below(4) != 0,
        };
    }
}

fn run_conv_case(r: &mut SplitMix64, case: &ConvCase, what: &str) {
    let x = r.normal_vec(numel(&case.x_shape));
    let w = r.normal_vec(numel(&case.w_shape));
    let b = r.normal_vec(case.w_shape[0]);
    let bias = case.bias.then_some(&b[..]);
    let os = ops::conv2d_output_shape(&case.x_shape, &case.w_shape, &case.p).unwrap();
    let mut out = vec![f32::NAN; numel(&os)];
    ops::conv2d(&x, &case.x_shape, &w, &case.w_shape, bias, &case.p, &mut out).unwrap();
    let reference = ref_conv2d(&x, case.x_shape, &w, case.w_shape, bias, &case.p);
    let label = format!("{what} x {:?} w {:?} {:?}", case.x_shape, case.w_shape, case.p);
    if matches!(case.p.activation, Activation::ClippedRelu(_)) {
        let linear = Conv2d { activation: Activation::None, ..case.p.clone() };
        let pre = ref_conv2d(&x, case.x_shape, &w, case.w_shape, bias, &linear);
        assert_close_scaled(&label, &out, &reference, &pre);
    } else {
        assert_close(&label, &out, &reference);
    }
    // Weights packed ahead of time (as the executor does at load) give the same bits.
    let packed = ops::PackedConvWeights::new(&w, &case.w_shape, case.p.group).unwrap();
    let mut again = vec![f32::NAN; out.len()];
    ops::conv2d_packed(&x, &case.x_shape, &packed, bias, &case.p, &mut again).unwrap();
    assert!(
        out.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()),
        "{what}: pre-packed weights changed the result"
    );
}

#[test]
fn conv2d_random_shapes_groups_and_activations() {
    let mut r = rng("conv2d_random_shapes_groups_and_activations");
    for &kernel in ops::CpuKernel::available() {
        ops::force_kernel(Some(kernel));
        for i in 0..36 {
            let case = random_conv(&mut r, i % 3);
            run_conv_case(&mut r, &case, &format!("conv2d ({})", kernel.name()));
        }
    }
    ops::force_kernel(None);
}

#[test]
fn conv2d_named_layer_kinds() {
    let mut r = rng("conv2d_named_layer_kinds");
    let conv = |strides, pads, dilations, group, activation| Conv2d { strides, pads, dilations, group, activation };
    let cases = [
        // YOLO stem: 3x3 stride 2, pad 1, SiLU.
        ConvCase {
            x_shape: [1, 3, 17, 15],
            w_shape: [8, 3, 3, 3],
            p: conv([2, 2], [1; 4], [1, 1], 1, Activation::Silu),
            bias: true,
        },
        // Pointwise (the in-place GEMM path), odd plane size.
        ConvCase {
            x_shape: [2, 7, 5, 9],
            w_shape: [12, 7, 1, 1],
            p: conv([1, 1], [0; 4], [1, 1], 1, Activation::Silu),
            bias: true,
        },
        // 1x1 with end padding only (not the in-place path).
        ConvCase {
            x_shape: [1, 5, 4, 4],
            w_shape: [6, 5, 1, 1],
            p: conv([1, 1], [0, 0, 1, 2], [1, 1], 1, Activation::None),
            bias: false,
        },
        // 1x1 stride 2.
        ConvCase {
            x_shape: [1, 5, 7, 6],
            w_shape: [9, 5, 1, 1],
            p: conv([2, 2], [0; 4], [1, 1], 1, Activation::Relu),
            bias: true,
        },
        // Depthwise 3x3 stride 1 and 2 (YOLO11 DWConv).
        ConvCase {
            x_shape: [1, 6, 9, 10],
            w_shape: [6, 1, 3, 3],
            p: conv([1, 1], [1; 4], [1, 1], 6, Activation::Silu),
            bias: true,
        },
        ConvCase {
            x_shape: [1, 6, 9, 10],
            w_shape: [6, 1, 3, 3],
            p: conv([2, 2], [1; 4], [1, 1], 6, Activation::Gelu),
            bias: true,
        },
        // Depth multiplier 2 (M = 2C, group = C).
        ConvCase {
            x_shape: [1, 3, 6, 7],
            w_shape: [6, 1, 3, 3],
            p: conv([1, 1], [1; 4], [1, 1], 3, Activation::Relu),
            bias: true,
        },
        // Groups with many channels per group, non-square kernel, dilation 2, asymmetric pads.
        ConvCase {
            x_shape: [1, 8, 9, 11],
            w_shape: [8, 2, 2, 3],
            p: conv([1, 2], [1, 0, 2, 3], [2, 2], 4, Activation::Sigmoid),
            bias: true,
        },
        ConvCase {
            x_shape: [2, 6, 8, 8],
            w_shape: [10, 3, 3, 1],
            p: conv([2, 1], [0, 1, 1, 0], [1, 2], 2, Activation::Elu { alpha: 1.0 }),
            bias: false,
        },
        // Kernel as large as the padded input (one output pixel), and a 1x1 input.
        ConvCase {
            x_shape: [1, 4, 3, 3],
            w_shape: [5, 4, 5, 5],
            p: conv([1, 1], [1; 4], [1, 1], 1, Activation::None),
            bias: true,
        },
        ConvCase {
            x_shape: [1, 4, 1, 1],
            w_shape: [5, 4, 3, 3],
            p: conv([1, 1], [1; 4], [1, 1], 1, Activation::Relu),
            bias: true,
        },
        // Pads larger than the kernel (allowed by ONNX: outputs of bias alone).
        ConvCase {
            x_shape: [1, 2, 4, 4],
            w_shape: [4, 2, 2, 2],
            p: conv([1, 1], [3, 3, 3, 3], [1, 1], 1, Activation::None),
            bias: true,
        },
        // Per-channel clipped ReLU fused.
        ConvCase {
            x_shape: [1, 4, 6, 6],
            w_shape: [5, 4, 3, 3],
            p: conv(
                [1, 1],
                [1; 4],
                [1, 1],
                1,
                Activation::ClippedRelu(ClipThreshold::PerChannel(vec![0.5, 1.0, 1.5, 2.0, 2.5])),
            ),
            bias: true,
        },
        ConvCase {
            x_shape: [1, 4, 6, 6],
            w_shape: [5, 4, 3, 3],
            p: conv([1, 1], [1; 4], [1, 1], 1, Activation::HardSwish),
            bias: true,
        },
    ];
    for case in &cases {
        run_conv_case(&mut r, case, "conv2d");
    }
}

/// Large enough to take the threaded paths (spatial split for the GEMM, plane split for the
/// direct path) on a multi-core machine.
#[test]
fn conv2d_threaded_paths_match_reference() {
    let mut r = rng("conv2d_threaded_paths_match_reference");
    let cases = [
        ConvCase {
            x_shape: [1, 16, 26, 25],
            w_shape: [24, 16, 3, 3],
            p: Conv2d { pads: [1; 4], activation: Activation::Silu, ..Conv2d::default() },
            bias: true,
        },
        ConvCase {
            x_shape: [1, 16, 45, 47],
            w_shape: [32, 16, 3, 3],
            p: Conv2d { strides: [2, 2], pads: [1; 4], activation: Activation::Silu, ..Conv2d::default() },
            bias: true,
        },
        ConvCase {
            x_shape: [1, 64, 33, 31],
            w_shape: [64, 64, 1, 1],
            p: Conv2d { activation: Activation::Silu, ..Conv2d::default() },
            bias: true,
        },
        ConvCase {
            x_shape: [1, 128, 48, 47],
            w_shape: [128, 1, 3, 3],
            p: Conv2d { pads: [1; 4], group: 128, activation: Activation::Relu, ..Conv2d::default() },
            bias: true,
        },
        // A small map with many channels: split by output channels, not rows (a YOLO head at
        // stride 32), with a channel count that is no multiple of the register tile.
        ConvCase {
            x_shape: [1, 96, 10, 11],
            w_shape: [260, 96, 3, 3],
            p: Conv2d { pads: [1; 4], activation: Activation::Silu, ..Conv2d::default() },
            bias: true,
        },
        // Grouped, small map: channel ranges inside each group.
        ConvCase {
            x_shape: [2, 64, 9, 9],
            w_shape: [128, 32, 3, 3],
            p: Conv2d { pads: [1; 4], group: 2, strides: [2, 1], ..Conv2d::default() },
            bias: false,
        },
    ];
    for &kernel in ops::CpuKernel::available() {
        ops::force_kernel(Some(kernel));
        for case in &cases {
            run_conv_case(&mut r, case, &format!("conv2d threaded ({})", kernel.name()));
        }
    }
    ops::force_kernel(None);
}

/// Attributes drawn at random, valid or not, with slices that match the shapes: the op either
/// errs or agrees with the twin; it never panics.
#[test]
fn conv2d_random_attributes_error_or_agree() {
    let mut r = rng("conv2d_random_attributes_error_or_agree");
    for _ in 0..200 {
        let x_shape = [pick(&mut r, 0, 2), pick(&mut r, 0, 5), pick(&mut r, 0, 6), pick(&mut r, 0, 6)];
        let w_shape = [pick(&mut r, 0, 5), pick(&mut r, 0, 5), pick(&mut r, 0, 4), pick(&mut r, 0, 4)];
        let p = Conv2d {
            strides: [pick(&mut r, 0, 2), pick(&mut r, 0, 2)],
            pads: [pick(&mut r, 0, 2), pick(&mut r, 0, 2), pick(&mut r, 0, 2), pick(&mut r, 0, 2)],
            dilations: [pick(&mut r, 0, 2), pick(&mut r, 0, 2)],
            group: pick(&mut r, 0, 3),
            activation: Activation::Relu,
        };
        let x = r.normal_vec(numel(&x_shape));
        let w = r.normal_vec(numel(&w_shape));
        let valid = p.group > 0
            && p.strides.iter().chain(&p.dilations).all(|&v| v > 0)
            && w_shape[2] > 0
            && w_shape[3] > 0
            && x_shape[1].is_multiple_of(p.group)
            && w_shape[0].is_multiple_of(p.group)
            && w_shape[1] * p.group == x_shape[1]
            && x_shape[2] + p.pads[0] + p.pads[2] > p.dilations[0] * (w_shape[2] - 1)
            && x_shape[3] + p.pads[1] + p.pads[3] > p.dilations[1] * (w_shape[3] - 1);
        match ops::conv2d_output_shape(&x_shape, &w_shape, &p) {
            Err(_) => assert!(!valid, "valid conv refused: x {x_shape:?} w {w_shape:?} {p:?}"),
            Ok(os) => {
                assert!(valid, "invalid conv accepted: x {x_shape:?} w {w_shape:?} {p:?}");
                let mut out = vec![f32::NAN; numel(&os)];
                ops::conv2d(&x, &x_shape, &w, &w_shape, None, &p, &mut out).unwrap();
                let reference = ref_conv2d(&x, x_shape, &w, w_shape, None, &p);
                if reference.iter().any(|&v| v != 0.0) {
                    assert_close("conv2d (random attributes)", &out, &reference);
                } else {
                    assert!(out.iter().all(|&v| v == 0.0));
                }
            }
        }
    }
}

#[test]
fn conv2d_wrong_shapes_are_errors() {
    let p = Conv2d { pads: [1; 4], ..Conv2d::default() };
    let (x, w, b) = (vec![1.0; 2 * 3 * 5 * 5], vec![1.0; 4 * 3 * 3 * 3], vec![1.0; 4]);
    let mut out = vec![0.0; 2 * 4 * 5 * 5];
    let xs = [2, 3, 5, 5];
    let ws = [4, 3, 3, 3];
    assert!(ops::conv2d(&x, &xs, &w, &ws, Some(&b), &p, &mut out).is_ok());
    assert!(ops::conv2d(&x[1..], &xs, &w, &ws, Some(&b), &p, &mut out).is_err(), "short input");
    assert!(ops::conv2d(&x, &xs, &w[1..], &ws, Some(&b), &p, &mut out).is_err(), "short weights");
    assert!(ops::conv2d(&x, &xs, &w, &ws, Some(&b[1..]), &p, &mut out).is_err(), "short bias");
    assert!(ops::conv2d(&x, &xs, &w, &ws, Some(&b), &p, &mut out[1..]).is_err(), "short output");
    assert!(ops::conv2d(&x, &[2, 3, 25], &w, &ws, Some(&b), &p, &mut out).is_err(), "3-D input");
    assert!(ops::conv2d(&x, &[2, 3, 5, 5], &w, &[4, 3, 9], Some(&b), &p, &mut out).is_err(), "3-D weights");
    let bad_c = [4, 2, 3, 3];
    assert!(ops::conv2d(&x, &xs, &w[..72], &bad_c, None, &p, &mut out).is_err(), "C/group mismatch");
    let grouped = Conv2d { group: 2, ..p.clone() };
    assert!(ops::conv2d(&x, &xs, &w, &ws, None, &grouped, &mut out).is_err(), "group does not divide C");
    let clip = Conv2d { activation: Activation::ClippedRelu(ClipThreshold::PerChannel(vec![1.0; 3])), ..p.clone() };
    assert!(ops::conv2d(&x, &xs, &w, &ws, None, &clip, &mut out).is_err(), "threshold count");
    let big = Conv2d { pads: [0; 4], ..p.clone() };
    let tiny = [2, 3, 2, 2];
    assert!(ops::conv2d(&x[..24], &tiny, &w, &ws, None, &big, &mut out).is_err(), "kernel larger than input");
    let zero_stride = Conv2d { strides: [0, 1], ..p.clone() };
    assert!(ops::conv2d(&x, &xs, &w, &ws, None, &zero_stride, &mut out).is_err(), "stride 0");
}

#[test]
fn conv2d_does_not_allocate_when_warm() {
    let mut r = rng("conv2d_does_not_allocate_when_warm");
    let xs = [1, 8, 12, 12];
    let x = r.normal_vec(numel(&xs));
    for (ws, p) in [
        ([16, 8, 3, 3], Conv2d { pads: [1; 4], strides: [2, 2], activation: Activation::Silu, ..Conv2d::default() }),
        ([16, 8, 1, 1], Conv2d { activation: Activation::Silu, ..Conv2d::default() }),
        ([8, 1, 3, 3], Conv2d { pads: [1; 4], group: 8, activation: Activation::Relu, ..Conv2d::default() }),
    ] {
        let w = r.normal_vec(numel(&ws));
        let b = r.normal_vec(ws[0]);
        let mut out = vec![0.0; numel(&ops::conv2d_output_shape(&xs, &ws, &p).unwrap())];
        ops::conv2d(&x, &xs, &w, &ws, Some(&b), &p, &mut out).unwrap();
        let n = allocations_during(|| ops::conv2d(&x, &xs, &w, &ws, Some(&b), &p, &mut out).unwrap());
        assert_eq!(n, 0, "conv2d {ws:?} allocated {n} times when warm");
    }
}

// ---------------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------------

fn pool_out_len(input: usize, k: usize, s: usize, d: usize, pa: usize, pb: usize, ceil: bool) -> usize {
    let span = d * (k - 1) + 1;
    let steps = input + pa + pb - span;
    if !ceil {
        return steps / s + 1;
    }
    let mut out = steps.div_ceil(s) + 1;
    // A last window that would start in the end padding is dropped.
    if (out - 1) * s >= input + pa {
        out -= 1;
    }
    out
}

fn ref_pool(x: &[f32], xs: [usize; 4], p: &Pool2d, max: bool) -> Vec<f64> {
    let [n, c, h, w] = xs;
    let oh = pool_out_len(h, p.kernel[0], p.strides[0], p.dilations[0], p.pads[0], p.pads[2], p.ceil_mode);
    let ow = pool_out_len(w, p.kernel[1], p.strides[1], p.dilations[1], p.pads[1], p.pads[3], p.ceil_mode);
    let mut out = Vec::new();
    for plane in 0..n * c {
        for y in 0..oh {
            for xo in 0..ow {
                let (mut best, mut sum, mut count, mut padded_count) = (f64::NEG_INFINITY, 0.0, 0usize, 0usize);
                for i in 0..p.kernel[0] {
                    for j in 0..p.kernel[1] {
                        let ih = (y * p.strides[0] + i * p.dilations[0]) as isize - p.pads[0] as isize;
                        let iw = (xo * p.strides[1] + j * p.dilations[1]) as isize - p.pads[1] as isize;
                        let in_padded = ih < (h + p.pads[2]) as isize && iw < (w + p.pads[3]) as isize;
                        if in_padded {
                            padded_count += 1;
                        }
                        if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                            continue;
                        }
                        let v = x[(plane * h + ih as usize) * w + iw as usize] as f64;
                        best = best.max(v);
                        sum += v;
                        count += 1;
                    }
                }
                out.push(if max {
                    best
                } else if p.count_include_pad {
                    sum / padded_count as f64
                } else {
                    sum / count as f64
                });
            }
        }
    }
    out
}

#[test]
fn pooling_random_windows() {
    let mut r = rng("pooling_random_windows");
    let mut done = 0;
    while done < 60 {
        let kernel = [pick(&mut r, 1, 4), pick(&mut r, 1, 4)];
        let dilations = [pick(&mut r, 1, 2), pick(&mut r, 1, 2)];
        let span = |a: usize| dilations[a] * (kernel[a] - 1) + 1;
        let pads = [
            pick(&mut r, 0, span(0) - 1),
            pick(&mut r, 0, span(1) - 1),
            pick(&mut r, 0, span(0) - 1),
            pick(&mut r, 0, span(1) - 1),
        ];
        let p = Pool2d {
            kernel,
            strides: [pick(&mut r, 1, 3), pick(&mut r, 1, 3)],
            pads,
            dilations,
            ceil_mode: r.below(2) == 0,
            count_include_pad: r.below(2) == 0,
        };
        let xs = [pick(&mut r, 1, 2), pick(&mut r, 1, 3), pick(&mut r, 1, 10), pick(&mut r, 1, 10)];
        let x = r.normal_vec(numel(&xs));
        let Ok(os) = ops::pool2d_output_shape(&xs, &p) else {
            continue; // window larger than the padded input, or a window with no input value
        };
        let reference_shape = [
            xs[0],
            xs[1],
            pool_out_len(xs[2], kernel[0], p.strides[0], dilations[0], pads[0], pads[2], p.ceil_mode),
            pool_out_len(xs[3], kernel[1], p.strides[1], dilations[1], pads[1], pads[3], p.ceil_mode),
        ];
        assert_eq!(os, reference_shape, "{xs:?} {p:?}");
        let mut out = vec![f32::NAN; numel(&os)];
        ops::max_pool2d(&x, &xs, &p, &mut out).unwrap();
        assert_close(&format!("max_pool2d {xs:?} {p:?}"), &out, &ref_pool(&x, xs, &p, true));
        ops::avg_pool2d(&x, &xs, &p, &mut out).unwrap();
        assert_close(&format!("avg_pool2d {xs:?} {p:?}"), &out, &ref_pool(&x, xs, &p, false));
        done += 1;
    }
}

#[test]
fn pooling_onnx_examples() {
    // onnx/backend/test/case/node: averagepool_2d_ceil and maxpool_2d_ceil.
    let x: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    let p = Pool2d { kernel: [3, 3], strides: [2, 2], ceil_mode: true, ..Pool2d::square(3) };
    let mut out = vec![0.0; 4];
    ops::avg_pool2d(&x, &[1, 1, 4, 4], &p, &mut out).unwrap();
    assert_eq!(out, [6.0, 7.5, 12.0, 13.5]);
    ops::max_pool2d(&x, &[1, 1, 4, 4], &p, &mut out).unwrap();
    assert_eq!(out, [11.0, 12.0, 15.0, 16.0]);
    // averagepool_2d_precomputed_pads(_count_include_pad): 5x5 input 1..25, k5, pads 2.
    let x: Vec<f32> = (1..=25).map(|v| v as f32).collect();
    let mut p = Pool2d { kernel: [5, 5], strides: [1, 1], pads: [2; 4], ..Pool2d::square(5) };
    assert_eq!(ops::pool2d_output_shape(&[1, 1, 5, 5], &p).unwrap(), [1, 1, 5, 5]);
    let mut out = vec![0.0; 25];
    ops::avg_pool2d(&x, &[1, 1, 5, 5], &p, &mut out).unwrap();
    assert_eq!(out[..5], [7.0, 7.5, 8.0, 8.5, 9.0]);
    p.count_include_pad = true;
    ops::avg_pool2d(&x, &[1, 1, 5, 5], &p, &mut out).unwrap();
    for (o, e) in out[..5].iter().zip([2.52, 3.6, 4.8, 4.08, 3.24]) {
        assert!((o - e).abs() < 1e-5, "{:?}", &out[..5]);
    }
    assert_eq!(out[12], 13.0);
    // YOLO SPPF: k5 s1 p2 keeps the size.
    let p = Pool2d { kernel: [5, 5], strides: [1, 1], pads: [2; 4], ..Pool2d::square(5) };
    assert_eq!(ops::pool2d_output_shape(&[1, 8, 10, 10], &p).unwrap(), [1, 8, 10, 10]);
}

#[test]
fn global_pools() {
    let mut r = rng("global_pools");
    for _ in 0..10 {
        let xs = [pick(&mut r, 1, 2), pick(&mut r, 1, 5), pick(&mut r, 1, 9), pick(&mut r, 1, 9)];
        let x = r.normal_vec(numel(&xs));
        let len = xs[2] * xs[3];
        let mut out = vec![0.0; xs[0] * xs[1]];
        ops::global_avg_pool(&x, &xs, &mut out).unwrap();
        let mean: Vec<f64> = x.chunks(len).map(|c| c.iter().map(|&v| v as f64).sum::<f64>() / len as f64).collect();
        // The rounding of a sum scales with the magnitudes summed: a mean of normal draws can
        // cancel to almost nothing, so the error is measured against the mean of |x|.
        let scale: Vec<f64> =
            x.chunks(len).map(|c| c.iter().map(|&v| (v as f64).abs()).sum::<f64>() / len as f64).collect();
        assert_close_scaled("global_avg_pool", &out, &mean, &scale);
        ops::global_max_pool(&x, &xs, &mut out).unwrap();
        let max: Vec<f64> = x.chunks(len).map(|c| c.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64))).collect();
        assert_close("global_max_pool", &out, &max);
    }
}

#[test]
fn pooling_wrong_shapes_are_errors() {
    let x = vec![1.0; 2 * 3 * 6 * 6];
    let xs = [2, 3, 6, 6];
    let p = Pool2d::square(2);
    let mut out = vec![0.0; 2 * 3 * 3 * 3];
    assert!(ops::max_pool2d(&x, &xs, &p, &mut out).is_ok());
    assert!(ops::max_pool2d(&x[1..], &xs, &p, &mut out).is_err());
    assert!(ops::avg_pool2d(&x, &xs, &p, &mut out[1..]).is_err());
    assert!(ops::max_pool2d(&x, &[2, 3, 36], &p, &mut out).is_err());
    assert!(ops::max_pool2d(&x, &xs, &Pool2d { strides: [0, 1], ..p.clone() }, &mut out).is_err());
    assert!(ops::max_pool2d(&x, &xs, &Pool2d { pads: [2, 0, 0, 0], ..p.clone() }, &mut out).is_err(), "pad >= kernel");
    assert!(ops::max_pool2d(&x, &xs, &Pool2d::square(7), &mut out).is_err(), "window larger than input");
    assert!(ops::global_avg_pool(&x, &xs, &mut out).is_err());
    assert!(ops::global_avg_pool(&x, &[72, 6], &mut out[..6]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Resize
// ---------------------------------------------------------------------------------------------

fn ref_coord(coord: CoordTransform, o: usize, in_len: usize, out_len: usize, scale: f64) -> f64 {
    let o = o as f64;
    match coord {
        CoordTransform::HalfPixel => (o + 0.5) / scale - 0.5,
        CoordTransform::PytorchHalfPixel => {
            if out_len > 1 {
                (o + 0.5) / scale - 0.5
            } else {
                0.0
            }
        }
        CoordTransform::Asymmetric => o / scale,
        CoordTransform::AlignCorners => {
            if out_len > 1 {
                o * (in_len as f64 - 1.0) / (out_len as f64 - 1.0)
            } else {
                0.0
            }
        }
    }
}

fn ref_nearest(mode: NearestMode, x: f64, in_len: usize) -> usize {
    let r = match mode {
        NearestMode::Floor => x.floor(),
        NearestMode::Ceil => x.ceil(),
        NearestMode::RoundPreferFloor => {
            if x - x.floor() == 0.5 {
                x.floor()
            } else {
                x.round()
            }
        }
        NearestMode::RoundPreferCeil => {
            if x - x.floor() == 0.5 {
                x.ceil()
            } else {
                x.round()
            }
        }
    };
    r.max(0.0).min(in_len as f64 - 1.0) as usize
}

fn ref_resize(x: &[f32], xs: [usize; 4], oh: usize, ow: usize, p: &Resize) -> Vec<f64> {
    let [n, c, h, w] = xs;
    let (sh, sw) = match p.scales {
        Some([a, b]) => (a as f64, b as f64),
        None => (oh as f64 / h as f64, ow as f64 / w as f64),
    };
    let at = |plane: usize, y: usize, xx: usize| x[(plane * h + y) * w + xx] as f64;
    let mut out = Vec::new();
    for plane in 0..n * c {
        for y in 0..oh {
            for xo in 0..ow {
                let cy = ref_coord(p.coord, y, h, oh, sh);
                let cx = ref_coord(p.coord, xo, w, ow, sw);
                out.push(match p.mode {
                    ResizeMode::Nearest => at(plane, ref_nearest(p.nearest, cy, h), ref_nearest(p.nearest, cx, w)),
                    ResizeMode::Linear => {
                        let cy = cy.max(0.0).min(h as f64 - 1.0);
                        let cx = cx.max(0.0).min(w as f64 - 1.0);
                        let (y0, x0) = (cy.floor() as usize, cx.floor() as usize);
                        let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
                        let (fy, fx) = (cy - y0 as f64, cx - x0 as f64);
                        (1.0 - fy) * ((1.0 - fx) * at(plane, y0, x0) + fx * at(plane, y0, x1))
                            + fy * ((1.0 - fx) * at(plane, y1, x0) + fx * at(plane, y1, x1))
                    }
                });
            }
        }
    }
    out
}

#[test]
fn resize_every_mode_random_sizes() {
    let mut r = rng("resize_every_mode_random_sizes");
    let coords = [
        CoordTransform::HalfPixel,
        CoordTransform::Asymmetric,
        CoordTransform::AlignCorners,
        CoordTransform::PytorchHalfPixel,
    ];
    let nearest = [NearestMode::RoundPreferFloor, NearestMode::RoundPreferCeil, NearestMode::Floor, NearestMode::Ceil];
    for mode in [ResizeMode::Nearest, ResizeMode::Linear] {
        for coord in coords {
            for near in nearest {
                if mode == ResizeMode::Linear && near != NearestMode::RoundPreferFloor {
                    continue;
                }
                for t in 0..4 {
                    let xs = [pick(&mut r, 1, 2), pick(&mut r, 1, 3), pick(&mut r, 1, 7), pick(&mut r, 1, 7)];
                    let (oh, ow, scales) = match t {
                        // Integer 2x (the YOLO neck), given as scales.
                        0 => (xs[2] * 2, xs[3] * 2, Some([2.0, 2.0])),
                        // Sizes: up, down or odd ratios.
                        1 | 2 => (pick(&mut r, 1, 15), pick(&mut r, 1, 15), None),
                        // Non-integer scales where in * scale is not whole.
                        _ => {
                            let (a, b) = (r.uniform(0.5, 3.0), r.uniform(0.5, 3.0));
                            let oh = ((xs[2] as f64 * a as f64).floor() as usize).max(1);
                            let ow = ((xs[3] as f64 * b as f64).floor() as usize).max(1);
                            (oh, ow, Some([a, b]))
                        }
                    };
                    let p = Resize { mode, coord, nearest: near, scales };
                    let x = r.normal_vec(numel(&xs));
                    let os = [xs[0], xs[1], oh, ow];
                    let mut out = vec![f32::NAN; numel(&os)];
                    ops::resize(&x, &xs, &os, &p, &mut out).unwrap();
                    assert_close(&format!("resize {xs:?} -> {os:?} {p:?}"), &out, &ref_resize(&x, xs, oh, ow, &p));
                }
            }
        }
    }
}

#[test]
fn resize_onnx_examples() {
    let x = [1.0, 2.0, 3.0, 4.0];
    // resize_upsample_scales_nearest: scales [1, 1, 2, 3], half_pixel, round_prefer_floor.
    let mut out = vec![0.0; 24];
    let p = Resize { scales: Some([2.0, 3.0]), ..Resize::default() };
    ops::resize(&x, &[1, 1, 2, 2], &[1, 1, 4, 6], &p, &mut out).unwrap();
    let row1 = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0];
    let row3 = [3.0, 3.0, 3.0, 4.0, 4.0, 4.0];
    assert_eq!(out, [row1, row1, row3, row3].concat());
    // resize_upsample_scales_linear (half_pixel).
    let mut out = vec![0.0; 16];
    let p = Resize { mode: ResizeMode::Linear, ..Resize::default() };
    ops::resize(&x, &[1, 1, 2, 2], &[1, 1, 4, 4], &p, &mut out).unwrap();
    let expected = [1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0];
    assert_eq!(out, expected);
    // resize_upsample_scales_linear_align_corners.
    let p = Resize { mode: ResizeMode::Linear, coord: CoordTransform::AlignCorners, ..Resize::default() };
    ops::resize(&x, &[1, 1, 2, 2], &[1, 1, 4, 4], &p, &mut out).unwrap();
    let expected = [
        1.0,
        1.333_333_3,
        1.666_666_7,
        2.0,
        1.666_666_7,
        2.0,
        2.333_333_3,
        2.666_666_7,
        2.333_333_3,
        2.666_666_7,
        3.0,
        3.333_333_3,
        3.0,
        3.333_333_3,
        3.666_666_7,
        4.0,
    ];
    for (o, e) in out.iter().zip(expected) {
        assert!((o - e).abs() < 1e-6, "{out:?}");
    }
    // YOLOv8 neck: nearest, asymmetric, floor, 2x: every pixel copied into a 2x2 block.
    let p = Resize { coord: CoordTransform::Asymmetric, nearest: NearestMode::Floor, ..Resize::default() };
    ops::resize(&x, &[1, 1, 2, 2], &[1, 1, 4, 4], &p, &mut out).unwrap();
    assert_eq!(out, [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0]);
}

#[test]
fn resize_wrong_shapes_are_errors() {
    let x = vec![1.0; 12];
    let mut out = vec![0.0; 48];
    let p = Resize::default();
    assert!(ops::resize(&x, &[1, 3, 2, 2], &[1, 3, 4, 4], &p, &mut out).is_ok());
    assert!(ops::resize(&x, &[1, 3, 2, 2], &[1, 2, 4, 6], &p, &mut out).is_err(), "C changes");
    assert!(ops::resize(&x, &[1, 3, 2, 2], &[1, 3, 4, 4], &p, &mut out[1..]).is_err());
    assert!(ops::resize(&x[1..], &[1, 3, 2, 2], &[1, 3, 4, 4], &p, &mut out).is_err());
    assert!(ops::resize(&x, &[3, 2, 2], &[3, 4, 4], &p, &mut out).is_err(), "3-D");
    let bad = Resize { scales: Some([0.0, 2.0]), ..Resize::default() };
    assert!(ops::resize(&x, &[1, 3, 2, 2], &[1, 3, 4, 4], &bad, &mut out).is_err());
    assert!(ops::ResizeMode::from_onnx("cubic").is_err());
    assert!(ops::CoordTransform::from_onnx("tf_crop_and_resize").is_err());
    assert_eq!(ops::NearestMode::from_onnx("floor").unwrap(), NearestMode::Floor);
}

// ---------------------------------------------------------------------------------------------
// Concat, split, slice, transpose
// ---------------------------------------------------------------------------------------------

fn random_shape(r: &mut SplitMix64, rank: usize, max: usize) -> Vec<usize> {
    (0..rank).map(|_| pick(r, 1, max)).collect()
}

#[test]
fn concat_and_split_round_trip() {
    let mut r = rng("concat_and_split_round_trip");
    for _ in 0..30 {
        let rank = pick(&mut r, 1, 4);
        let base = random_shape(&mut r, rank, 5);
        let axis = pick(&mut r, 0, rank - 1);
        let parts = pick(&mut r, 1, 4);
        let sizes: Vec<usize> = (0..parts).map(|_| pick(&mut r, 0, 4)).collect();
        let shapes: Vec<Vec<usize>> = sizes
            .iter()
            .map(|&s| {
                let mut sh = base.clone();
                sh[axis] = s;
                sh
            })
            .collect();
        let data: Vec<Vec<f32>> = shapes.iter().map(|s| r.normal_vec(numel(s))).collect();
        let mut out_shape = base.clone();
        out_shape[axis] = sizes.iter().sum();
        // Reference: output element at index idx comes from the part whose axis range holds it.
        let reference: Vec<f64> = (0..numel(&out_shape))
            .map(|i| {
                let mut idx = unravel(i, &out_shape);
                let mut part = 0;
                while idx[axis] >= sizes[part] {
                    idx[axis] -= sizes[part];
                    part += 1;
                }
                data[part][ravel(&idx, &shapes[part])] as f64
            })
            .collect();
        // A negative axis half the time.
        let axis_arg = if r.below(2) == 0 { axis as i64 } else { axis as i64 - rank as i64 };
        let inputs: Vec<(&[f32], &[usize])> = data.iter().zip(&shapes).map(|(d, s)| (&d[..], &s[..])).collect();
        let mut out = vec![f32::NAN; numel(&out_shape)];
        ops::concat(&inputs, axis_arg, &mut out).unwrap();
        if reference.iter().any(|&v| v != 0.0) {
            assert_close("concat", &out, &reference);
        }
        let mut back: Vec<Vec<f32>> = shapes.iter().map(|s| vec![f32::NAN; numel(s)]).collect();
        let mut outs: Vec<&mut [f32]> = back.iter_mut().map(|v| &mut v[..]).collect();
        ops::split(&out, &out_shape, axis_arg, &sizes, &mut outs).unwrap();
        assert_eq!(back, data, "split undoes concat");
    }
}

#[test]
fn concat_split_wrong_shapes_are_errors() {
    let a = vec![1.0; 6];
    let b = vec![1.0; 4];
    let mut out = vec![0.0; 10];
    assert!(ops::concat(&[(&a, &[2, 3]), (&b, &[2, 2])], 1, &mut out).is_ok());
    assert!(ops::concat(&[(&a, &[2, 3]), (&b, &[2, 2])], 0, &mut out).is_err(), "off-axis mismatch");
    assert!(ops::concat(&[(&a, &[2, 3]), (&b, &[4])], 0, &mut out).is_err(), "rank mismatch");
    assert!(ops::concat(&[(&a, &[2, 3]), (&b, &[2, 2])], 2, &mut out).is_err(), "axis out of range");
    assert!(ops::concat(&[(&a, &[2, 3]), (&b, &[2, 2])], 1, &mut out[1..]).is_err(), "output length");
    assert!(ops::concat(&[], 0, &mut out).is_err(), "no inputs");
    let (mut p, mut q) = (vec![0.0; 6], vec![0.0; 4]);
    assert!(ops::split(&out, &[2, 5], 1, &[3, 2], &mut [&mut p, &mut q]).is_ok());
    assert!(ops::split(&out, &[2, 5], 1, &[3, 1], &mut [&mut p, &mut q]).is_err(), "sizes do not cover");
    assert!(ops::split(&out, &[2, 5], 1, &[3, 2], &mut [&mut p]).is_err(), "output count");
    assert!(ops::split(&out, &[2, 5], 1, &[2, 3], &mut [&mut p, &mut q]).is_err(), "output length");
}

/// ONNX Slice semantics stated plainly: per axis, the list of source indices.
fn ref_slice_indices(dim: usize, start: i64, end: i64, step: i64) -> Vec<usize> {
    let d = dim as i64;
    let mut s = if start < 0 { start.saturating_add(d) } else { start };
    let mut e = if end < 0 { end.saturating_add(d) } else { end };
    if step > 0 {
        s = s.clamp(0, d);
        e = e.clamp(0, d);
    } else {
        s = s.clamp(0, (d - 1).max(0));
        e = e.clamp(-1, d - 1);
    }
    let mut v = Vec::new();
    let mut i = s;
    while (step > 0 && i < e) || (step < 0 && i > e) {
        if i >= 0 && i < d {
            v.push(i as usize);
        }
        i += step;
    }
    v
}

#[test]
fn slice_random_with_clamping_and_negative_steps() {
    let mut r = rng("slice_random_with_clamping_and_negative_steps");
    for _ in 0..60 {
        let rank = pick(&mut r, 1, 4);
        let shape = random_shape(&mut r, rank, 6);
        let x = r.normal_vec(numel(&shape));
        let mut axes: Vec<usize> = (0..rank).filter(|_| r.below(3) != 0).collect();
        if axes.is_empty() {
            axes.push(0);
        }
        let endpoint = |r: &mut SplitMix64| match r.below(8) {
            0 => i64::MAX,
            1 => i64::MIN,
            _ => r.below(17) as i64 - 8,
        };
        let starts: Vec<i64> = axes.iter().map(|_| endpoint(&mut r)).collect();
        let ends: Vec<i64> = axes.iter().map(|_| endpoint(&mut r)).collect();
        let steps: Vec<i64> = axes.iter().map(|_| [1, 1, 2, 3, -1, -2][r.below(6) as usize]).collect();
        // Axes given as negative numbers half the time.
        let axes_arg: Vec<i64> =
            axes.iter().map(|&a| if r.below(2) == 0 { a as i64 } else { a as i64 - rank as i64 }).collect();
        let per_axis: Vec<Vec<usize>> = (0..rank)
            .map(|d| match axes.iter().position(|&a| a == d) {
                Some(i) => ref_slice_indices(shape[d], starts[i], ends[i], steps[i]),
                None => (0..shape[d]).collect(),
            })
            .collect();
        let out_shape: Vec<usize> = per_axis.iter().map(Vec::len).collect();
        let got_shape = ops::slice_output_shape(&shape, &starts, &ends, Some(&axes_arg), Some(&steps)).unwrap();
        assert_eq!(
            got_shape, out_shape,
            "shape {shape:?} starts {starts:?} ends {ends:?} axes {axes:?} steps {steps:?}"
        );
        let reference: Vec<f64> = (0..numel(&out_shape))
            .map(|i| {
                let idx = unravel(i, &out_shape);
                let src: Vec<usize> = idx.iter().enumerate().map(|(d, &j)| per_axis[d][j]).collect();
                x[ravel(&src, &shape)] as f64
            })
            .collect();
        let mut out = vec![f32::NAN; numel(&out_shape)];
        ops::slice(&x, &shape, &starts, &ends, Some(&axes_arg), Some(&steps), &mut out).unwrap();
        let exact: Vec<f32> = reference.iter().map(|&v| v as f32).collect();
        assert_eq!(out, exact, "slice {shape:?} starts {starts:?} ends {ends:?} axes {axes:?} steps {steps:?}");
    }
    // Defaults: axes 0..n, steps 1.
    let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let mut out = vec![0.0; 4];
    ops::slice(&x, &[3, 4], &[1, 1], &[3, -1], None, None, &mut out).unwrap();
    assert_eq!(out, [5.0, 6.0, 9.0, 10.0]);
    // Reverse a whole axis (the YOLO BGR -> RGB flip).
    let mut out = vec![0.0; 12];
    ops::slice(&x, &[3, 4], &[-1], &[i64::MIN], Some(&[0]), Some(&[-1]), &mut out).unwrap();
    assert_eq!(out, [8.0, 9.0, 10.0, 11.0, 4.0, 5.0, 6.0, 7.0, 0.0, 1.0, 2.0, 3.0]);
}

#[test]
fn slice_wrong_arguments_are_errors() {
    let x = vec![1.0; 12];
    let mut out = vec![0.0; 12];
    assert!(ops::slice(&x, &[3, 4], &[0], &[3], Some(&[0]), Some(&[0]), &mut out).is_err(), "step 0");
    assert!(ops::slice(&x, &[3, 4], &[0, 0], &[3, 4], Some(&[0, -2]), None, &mut out).is_err(), "repeated axis");
    assert!(ops::slice(&x, &[3, 4], &[0], &[3, 4], None, None, &mut out).is_err(), "ends length");
    assert!(ops::slice(&x, &[3, 4], &[0], &[3], Some(&[2]), None, &mut out).is_err(), "axis out of range");
    assert!(ops::slice(&x, &[3, 4], &[0], &[2], None, None, &mut out).is_err(), "output length");
    assert!(ops::slice(&x[1..], &[3, 4], &[0], &[3], None, None, &mut out).is_err(), "input length");
}

#[test]
fn transpose_random_permutations() {
    let mut r = rng("transpose_random_permutations");
    for _ in 0..40 {
        let rank = pick(&mut r, 1, 5);
        let shape = random_shape(&mut r, rank, 5);
        let mut perm: Vec<usize> = (0..rank).collect();
        for i in (1..rank).rev() {
            perm.swap(i, pick(&mut r, 0, i));
        }
        let x = r.normal_vec(numel(&shape));
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let reference: Vec<f64> = (0..numel(&out_shape))
            .map(|i| {
                let idx = unravel(i, &out_shape);
                let mut src = vec![0; rank];
                for (o, &p) in perm.iter().enumerate() {
                    src[p] = idx[o];
                }
                x[ravel(&src, &shape)] as f64
            })
            .collect();
        let mut out = vec![f32::NAN; x.len()];
        ops::transpose(&x, &shape, &perm, &mut out).unwrap();
        assert_close(&format!("transpose {shape:?} {perm:?}"), &out, &reference);
    }
    let x = vec![1.0; 6];
    let mut out = vec![0.0; 6];
    assert!(ops::transpose(&x, &[2, 3], &[0, 0], &mut out).is_err(), "not a permutation");
    assert!(ops::transpose(&x, &[2, 3], &[1], &mut out).is_err(), "short perm");
    assert!(ops::transpose(&x, &[2, 3], &[1, 2], &mut out).is_err(), "index out of range");
    assert!(ops::transpose(&x, &[2, 3], &[1, 0], &mut out[1..]).is_err(), "output length");
}

// ---------------------------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------------------------

fn ref_binary(
    op: BinaryOp,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out_shape: &[usize],
) -> Vec<f64> {
    let src = |idx: &[usize], shape: &[usize]| {
        let lead = idx.len() - shape.len();
        let own: Vec<usize> = shape.iter().enumerate().map(|(d, &n)| if n == 1 { 0 } else { idx[lead + d] }).collect();
        ravel(&own, shape)
    };
    (0..numel(out_shape))
        .map(|i| {
            let idx = unravel(i, out_shape);
            let (x, y) = (a[src(&idx, a_shape)] as f64, b[src(&idx, b_shape)] as f64);
            match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div => x / y,
            }
        })
        .collect()
}

/// Denominators kept away from zero so Div's relative error means something.
fn away_from_zero(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| if x.abs() < 0.25 { x.signum() * 0.25 + x } else { x }).collect()
}

#[test]
fn binary_broadcasting_random() {
    let mut r = rng("binary_broadcasting_random");
    let ops_all = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];
    for t in 0..80 {
        let rank = pick(&mut r, 0, 5);
        let out_shape = random_shape(&mut r, rank, 4);
        let derive = |r: &mut SplitMix64| -> Vec<usize> {
            let keep = pick(r, 0, rank);
            out_shape[rank - keep..].iter().map(|&d| if r.below(3) == 0 { 1 } else { d }).collect()
        };
        let (a_shape, b_shape) = match t % 4 {
            0 => (out_shape.clone(), out_shape.clone()),
            1 => (out_shape.clone(), vec![]),
            2 => (vec![1], out_shape.clone()),
            _ => (derive(&mut r), derive(&mut r)),
        };
        let full = ops::broadcast_shape(&a_shape, &b_shape).unwrap();
        let a = r.normal_vec(numel(&a_shape));
        let b = away_from_zero(r.normal_vec(numel(&b_shape)));
        let op = ops_all[r.below(4) as usize];
        let mut out = vec![f32::NAN; numel(&full)];
        ops::binary(op, &a, &a_shape, &b, &b_shape, &mut out).unwrap();
        let reference = ref_binary(op, &a, &a_shape, &b, &b_shape, &full);
        assert_close(&format!("{op:?} {a_shape:?} {b_shape:?}"), &out, &reference);
    }
}

#[test]
fn binary_per_channel_and_named_forms() {
    let mut r = rng("binary_per_channel_and_named_forms");
    let (xs, cs) = ([2usize, 5, 3, 7], [1usize, 5, 1, 1]);
    let x = r.normal_vec(numel(&xs));
    let c = away_from_zero(r.normal_vec(5));
    let mut out = vec![0.0; x.len()];
    type Named = fn(&[f32], &[usize], &[f32], &[usize], &mut [f32]) -> kestrel::Result<()>;
    let named: [(BinaryOp, Named); 4] =
        [(BinaryOp::Add, ops::add), (BinaryOp::Sub, ops::sub), (BinaryOp::Mul, ops::mul), (BinaryOp::Div, ops::div)];
    for (op, f) in named {
        f(&x, &xs, &c, &cs, &mut out).unwrap();
        assert_close(&format!("{op:?} per-channel"), &out, &ref_binary(op, &x, &xs, &c, &cs, &xs));
        // And the other way round: [1, C, 1, 1] op [N, C, H, W].
        let xd = away_from_zero(x.clone());
        f(&c, &cs, &xd, &xs, &mut out).unwrap();
        assert_close(&format!("{op:?} per-channel (left)"), &out, &ref_binary(op, &c, &cs, &xd, &xs, &xs));
    }
    // Per-row vector on the last axis and a [N, 1] column: [3, 4] + [4], [3, 4] * [3, 1].
    let a = r.normal_vec(12);
    let (row, col) = (r.normal_vec(4), r.normal_vec(3));
    let mut out = vec![0.0; 12];
    ops::add(&a, &[3, 4], &row, &[4], &mut out).unwrap();
    assert_close("row vector", &out, &ref_binary(BinaryOp::Add, &a, &[3, 4], &row, &[4], &[3, 4]));
    ops::mul(&a, &[3, 4], &col, &[3, 1], &mut out).unwrap();
    assert_close("column vector", &out, &ref_binary(BinaryOp::Mul, &a, &[3, 4], &col, &[3, 1], &[3, 4]));
    // Outer product by broadcasting: [3, 1] + [1, 4].
    ops::add(&col, &[3, 1], &row, &[1, 4], &mut out).unwrap();
    assert_close("outer", &out, &ref_binary(BinaryOp::Add, &col, &[3, 1], &row, &[1, 4], &[3, 4]));
}

#[test]
fn binary_wrong_shapes_are_errors() {
    let a = vec![1.0; 6];
    let mut out = vec![0.0; 6];
    assert!(ops::add(&a, &[2, 3], &a[..3], &[3], &mut out).is_ok());
    assert!(ops::add(&a, &[2, 3], &a[..2], &[2], &mut out).is_err(), "3 vs 2");
    assert!(ops::add(&a, &[2, 3], &a[..3], &[3], &mut out[1..]).is_err(), "output length");
    assert!(ops::add(&a[1..], &[2, 3], &a[..3], &[3], &mut out).is_err(), "input length");
    assert!(ops::add(&a, &[2, 3], &a[..3], &[1, 1, 1, 1, 1, 1, 1, 1, 3], &mut out).is_err(), "rank above MAX_RANK");
    assert!(ops::broadcast_shape(&[2, 3], &[4, 3]).is_err());
    assert_eq!(ops::broadcast_shape(&[5, 1, 3], &[4, 1]).unwrap(), [5, 4, 3]);
}

// ---------------------------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------------------------

#[test]
fn activations_match_twins() {
    let mut r = rng("activations_match_twins");
    let shape = [2usize, 3, 5, 7];
    let n = numel(&shape);
    let acts = [
        Activation::None,
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Silu,
        Activation::Elu { alpha: 0.7 },
        Activation::Gelu,
        Activation::ClippedRelu(ClipThreshold::PerLayer(1.5)),
        Activation::ClippedRelu(ClipThreshold::PerChannel(vec![0.5, 1.0, 2.0])),
        Activation::ClippedSilu(ClipThreshold::PerLayer(1.5)),
        Activation::ClippedSilu(ClipThreshold::PerChannel(vec![0.5, 1.0, 2.0])),
        Activation::LeakyRelu { alpha: 0.01 },
        Activation::HardSigmoid { alpha: 0.2, beta: 0.5 },
        Activation::HardSwish,
        Activation::Clip { min: 0.0, max: 6.0 },
    ];
    for act in &acts {
        // Wide inputs: 4 sigma covers the tails of sigmoid and GELU.
        let x: Vec<f32> = r.normal_vec(n).into_iter().map(|v| 4.0 * v).collect();
        let reference: Vec<f64> = (0..n).map(|i| act64(act, x[i] as f64, (i / (5 * 7)) % 3)).collect();
        let mut out = vec![f32::NAN; n];
        ops::activation(&x, &shape, act, &mut out).unwrap();
        assert_close(&format!("{act:?}"), &out, &reference);
        let mut inplace = x.clone();
        ops::activation_inplace(&mut inplace, &shape, act).unwrap();
        assert_eq!(inplace, out, "{act:?} in place");
    }
    // The named entry points agree with the enum.
    let x: Vec<f32> = r.normal_vec(n).into_iter().map(|v| 3.0 * v).collect();
    let mut out = vec![0.0; n];
    let mut via_enum = vec![0.0; n];
    type Unary = fn(&[f32], &mut [f32]) -> kestrel::Result<()>;
    type InPlace = fn(&mut [f32]);
    let named: [(Activation, Unary, InPlace); 4] = [
        (Activation::Relu, ops::relu, ops::relu_inplace),
        (Activation::Sigmoid, ops::sigmoid, ops::sigmoid_inplace),
        (Activation::Silu, ops::silu, ops::silu_inplace),
        (Activation::Gelu, ops::gelu, ops::gelu_inplace),
    ];
    for (act, f, g) in named {
        f(&x, &mut out).unwrap();
        ops::activation(&x, &shape, &act, &mut via_enum).unwrap();
        assert_eq!(out, via_enum, "{act:?}");
        let mut y = x.clone();
        g(&mut y);
        assert_eq!(y, out, "{act:?} in place");
    }
    ops::elu(&x, 0.5, &mut out).unwrap();
    let mut y = x.clone();
    ops::elu_inplace(&mut y, 0.5);
    assert_eq!(y, out);
    assert_close(
        "elu",
        &out,
        &x.iter().map(|&v| act64(&Activation::Elu { alpha: 0.5 }, v as f64, 0)).collect::<Vec<_>>(),
    );
    let t = ClipThreshold::PerChannel(vec![0.5, 1.0, 2.0]);
    ops::clipped_relu(&x, &shape, &t, &mut out).unwrap();
    let mut y = x.clone();
    ops::clipped_relu_inplace(&mut y, &shape, &t).unwrap();
    assert_eq!(y, out);
    ops::activation(&x, &shape, &Activation::ClippedRelu(t), &mut via_enum).unwrap();
    assert_eq!(out, via_enum);
}

/// The approximations behind sigmoid, SiLU and GELU hold elementwise, not just in L2.
#[test]
fn activation_approximations_hold_pointwise() {
    let check = |act: Activation, lo: f32, hi: f32, rel: f64| {
        let x: Vec<f32> = (0..=4000).map(|i| lo + (hi - lo) * i as f32 / 4000.0).collect();
        let mut out = vec![0.0; x.len()];
        ops::activation(&x, &[x.len()], &act, &mut out).unwrap();
        for (&v, &o) in x.iter().zip(&out) {
            let e = act64(&act, v as f64, 0);
            let err = (o as f64 - e).abs();
            assert!(
                err <= rel * e.abs() + 1e-30,
                "{act:?}({v}) = {o}, expected {e} (relative error {:.2e})",
                err / e.abs()
            );
        }
    };
    check(Activation::Sigmoid, -80.0, 80.0, 1e-6);
    check(Activation::Silu, -80.0, 80.0, 1e-6);
    check(Activation::Gelu, -5.0, 9.0, 2e-6);
    // Deep in the left tail exp(-x^2 / 2) loses a few f32 ulps to the rounding of x^2.
    check(Activation::Gelu, -9.0, -5.0, 1e-5);
    check(Activation::Elu { alpha: 1.0 }, -80.0, -0.5, 1e-6);
}

#[test]
fn activation_wrong_shapes_are_errors() {
    let x = vec![1.0; 12];
    let mut out = vec![0.0; 12];
    assert!(ops::relu(&x, &mut out[1..]).is_err());
    let t = ClipThreshold::PerChannel(vec![1.0; 4]);
    assert!(ops::clipped_relu(&x, &[2, 3, 2], &t, &mut out).is_err(), "4 thresholds, 3 channels");
    assert!(ops::clipped_relu(&x, &[12], &t, &mut out).is_err(), "no channel axis");
    assert!(ops::activation(&x, &[2, 5], &Activation::Relu, &mut out).is_err(), "shape vs length");
    assert!(ops::activation(&x, &[12], &Activation::Clip { min: 1.0, max: 0.0 }, &mut out).is_err());
}

// ---------------------------------------------------------------------------------------------
// Softmax, matmul, linear, layer norm
// ---------------------------------------------------------------------------------------------

fn ref_softmax(x: &[f32], shape: &[usize], axis: usize) -> Vec<f64> {
    let inner: usize = shape[axis + 1..].iter().product();
    let len = shape[axis];
    let mut out = vec![0.0; x.len()];
    for i in 0..x.len() {
        let idx = unravel(i, shape);
        let base = i - idx[axis] * inner;
        let max = (0..len).map(|a| x[base + a * inner] as f64).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = (0..len).map(|a| (x[base + a * inner] as f64 - max).exp()).sum();
        out[i] = (x[i] as f64 - max).exp() / sum;
    }
    out
}

#[test]
fn softmax_random_axes() {
    let mut r = rng("softmax_random_axes");
    for _ in 0..30 {
        let rank = pick(&mut r, 1, 4);
        let shape = random_shape(&mut r, rank, 7);
        let axis = pick(&mut r, 0, rank - 1);
        // Large logits: the max subtraction is what keeps these finite.
        let x: Vec<f32> = r.normal_vec(numel(&shape)).into_iter().map(|v| 30.0 * v + 50.0).collect();
        let axis_arg = if r.below(2) == 0 { axis as i64 } else { axis as i64 - rank as i64 };
        let mut out = vec![f32::NAN; x.len()];
        ops::softmax(&x, &shape, axis_arg, &mut out).unwrap();
        assert_close(&format!("softmax {shape:?} axis {axis_arg}"), &out, &ref_softmax(&x, &shape, axis));
    }
    // A strided axis wider than the lane block.
    let shape = [2, 5, 70];
    let x = r.normal_vec(numel(&shape));
    let mut out = vec![0.0; x.len()];
    ops::softmax(&x, &shape, 1, &mut out).unwrap();
    assert_close("softmax [2, 5, 70] axis 1", &out, &ref_softmax(&x, &shape, 1));
    assert!(ops::softmax(&x, &shape, 3, &mut out).is_err(), "axis out of range");
    assert!(ops::softmax(&x, &shape, -4, &mut out).is_err(), "axis out of range");
    assert!(ops::softmax(&x, &shape, 0, &mut out[1..]).is_err(), "output length");
}

fn ref_matmul(a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let a2: Vec<usize> = if a_shape.len() == 1 { vec![1, a_shape[0]] } else { a_shape.to_vec() };
    let b2: Vec<usize> = if b_shape.len() == 1 { vec![b_shape[0], 1] } else { b_shape.to_vec() };
    let (m, k, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
    let batch = ops::broadcast_shape(&a2[..a2.len() - 2], &b2[..b2.len() - 2]).unwrap();
    let pick_batch = |idx: &[usize], own: &[usize]| {
        let lead = idx.len() - own.len();
        let i: Vec<usize> = own.iter().enumerate().map(|(d, &s)| if s == 1 { 0 } else { idx[lead + d] }).collect();
        ravel(&i, own)
    };
    let mut out = Vec::new();
    for bi in 0..numel(&batch) {
        let idx = unravel(bi, &batch);
        let (ab, bb) = (pick_batch(&idx, &a2[..a2.len() - 2]), pick_batch(&idx, &b2[..b2.len() - 2]));
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|t| a[ab * m * k + i * k + t] as f64 * b[bb * k * n + t * n + j] as f64).sum();
                out.push(s);
            }
        }
    }
    let mut shape = batch;
    if a_shape.len() > 1 {
        shape.push(m);
    }
    if b_shape.len() > 1 {
        shape.push(n);
    }
    (out, shape)
}

#[test]
fn matmul_batched_and_broadcast() {
    let mut r = rng("matmul_batched_and_broadcast");
    for &kernel in ops::CpuKernel::available() {
        ops::force_kernel(Some(kernel));
        for t in 0..30 {
            let (m, k, n) = (pick(&mut r, 1, 13), pick(&mut r, 1, 19), pick(&mut r, 1, 30));
            let (a_shape, b_shape): (Vec<usize>, Vec<usize>) = match t % 6 {
                0 => (vec![m, k], vec![k, n]),
                1 => (vec![pick(&mut r, 1, 3), m, k], vec![k, n]),
                2 => (vec![2, 3, m, k], vec![3, k, n]),
                3 => (vec![2, 1, m, k], vec![1, 3, k, n]),
                4 => (vec![k], vec![2, k, n]),
                _ => (vec![3, m, k], vec![k]),
            };
            let a = r.normal_vec(numel(&a_shape));
            let b = r.normal_vec(numel(&b_shape));
            let (reference, shape) = ref_matmul(&a, &a_shape, &b, &b_shape);
            assert_eq!(ops::matmul_output_shape(&a_shape, &b_shape).unwrap(), shape);
            let mut out = vec![f32::NAN; numel(&shape)];
            ops::matmul(&a, &a_shape, &b, &b_shape, &mut out).unwrap();
            assert_close(&format!("matmul {a_shape:?} x {b_shape:?} ({})", kernel.name()), &out, &reference);
        }
    }
    ops::force_kernel(None);
    // Threaded: both the folded (shared B) and the per-batch split.
    for (a_shape, b_shape) in [(vec![4, 40, 96], vec![96, 160]), (vec![6, 40, 64], vec![6, 64, 150])] {
        let a = r.normal_vec(numel(&a_shape));
        let b = r.normal_vec(numel(&b_shape));
        let (reference, shape) = ref_matmul(&a, &a_shape, &b, &b_shape);
        let mut out = vec![f32::NAN; numel(&shape)];
        ops::matmul(&a, &a_shape, &b, &b_shape, &mut out).unwrap();
        assert_close(&format!("matmul {a_shape:?} x {b_shape:?}"), &out, &reference);
    }
}

#[test]
fn matmul_wrong_shapes_are_errors() {
    let a = vec![1.0; 12];
    let mut out = vec![0.0; 16];
    assert!(ops::matmul(&a, &[3, 4], &a, &[4, 3], &mut out[..9]).is_ok());
    assert!(ops::matmul(&a, &[3, 4], &a, &[3, 4], &mut out[..9]).is_err(), "K mismatch");
    assert!(ops::matmul(&a, &[3, 4], &a, &[4, 3], &mut out[..8]).is_err(), "output length");
    assert!(ops::matmul(&a, &[2, 3, 2], &a, &[3, 2, 2], &mut out[..12]).is_err(), "batch 2 vs 3");
    assert!(ops::matmul(&a, &[], &a, &[4, 3], &mut out).is_err(), "scalar");
    assert!(ops::matmul_output_shape(&[5, 2, 3], &[3, 4]).unwrap() == [5, 2, 4]);
}

#[test]
fn linear_matches_twin() {
    let mut r = rng("linear_matches_twin");
    let cases: [(Vec<usize>, usize); 8] = [
        (vec![1, 17], 9),
        (vec![2, 33], 40),
        (vec![5, 16], 24),
        (vec![2, 7, 20], 30),
        (vec![64, 48], 70),
        (vec![3], 4),
        // A classifier head at batch 1: long dot products, split over the workers.
        (vec![1, 1030], 2100),
        (vec![2, 100], 11),
    ];
    let kernels = ops::CpuKernel::available();
    for (case, (xs, nf)) in cases.into_iter().enumerate() {
        ops::force_kernel(Some(kernels[case % kernels.len()]));
        let k = *xs.last().unwrap();
        let m = numel(&xs) / k;
        let x = r.normal_vec(numel(&xs));
        let w = r.normal_vec(nf * k);
        let b = r.normal_vec(nf);
        for bias in [Some(&b[..]), None] {
            let reference: Vec<f64> = (0..m * nf)
                .map(|i| {
                    let (row, f) = (i / nf, i % nf);
                    (0..k).map(|t| x[row * k + t] as f64 * w[f * k + t] as f64).sum::<f64>()
                        + bias.map_or(0.0, |bb| bb[f] as f64)
                })
                .collect();
            let mut out = vec![f32::NAN; m * nf];
            ops::linear(&x, &xs, &w, &[nf, k], bias, &mut out).unwrap();
            assert_close(&format!("linear {xs:?} x [{nf}, {k}] ({})", ops::kernel_name()), &out, &reference);
        }
    }
    ops::force_kernel(None);
    let x = [1.0; 6];
    let mut out = [0.0; 8];
    assert!(ops::linear(&x, &[2, 3], &x[..3], &[1, 3], None, &mut out[..2]).is_ok());
    assert!(ops::linear(&x, &[2, 3], &x[..4], &[2, 2], None, &mut out[..4]).is_err(), "K mismatch");
    assert!(ops::linear(&x, &[2, 3], &x[..3], &[1, 3], Some(&x[..2]), &mut out[..2]).is_err(), "bias length");
    assert!(ops::linear(&x, &[2, 3], &x[..3], &[1, 3], None, &mut out[..3]).is_err(), "output length");
    assert!(ops::linear(&x, &[2, 3], &x[..3], &[3], None, &mut out[..2]).is_err(), "1-D weights");
}

#[test]
fn layer_norm_matches_twin() {
    let mut r = rng("layer_norm_matches_twin");
    for _ in 0..20 {
        let rank = pick(&mut r, 1, 4);
        let shape = random_shape(&mut r, rank, 9);
        let axis = pick(&mut r, 0, rank - 1);
        let len: usize = shape[axis..].iter().product();
        // An offset mean and a spread: the two-pass variance has to cope.
        let x: Vec<f32> = r.normal_vec(numel(&shape)).into_iter().map(|v| 3.0 * v + 10.0).collect();
        let scale = r.normal_vec(len);
        let bias = r.normal_vec(len);
        let eps = 1e-5f32;
        for with_bias in [true, false] {
            let reference: Vec<f64> = x
                .chunks(len)
                .flat_map(|row| {
                    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
                    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
                    let bias = &bias;
                    let scale = &scale;
                    row.iter().enumerate().map(move |(i, &v)| {
                        (v as f64 - mean) / (var + eps as f64).sqrt() * scale[i] as f64
                            + if with_bias { bias[i] as f64 } else { 0.0 }
                    })
                })
                .collect();
            let axis_arg = if r.below(2) == 0 { axis as i64 } else { axis as i64 - rank as i64 };
            let mut out = vec![f32::NAN; x.len()];
            ops::layer_norm(&x, &shape, axis_arg, &scale, with_bias.then_some(&bias[..]), eps, &mut out).unwrap();
            assert_close(&format!("layer_norm {shape:?} axis {axis_arg}"), &out, &reference);
        }
    }
    let x = vec![1.0; 12];
    let mut out = vec![0.0; 12];
    assert!(ops::layer_norm(&x, &[3, 4], -1, &x[..4], None, 1e-5, &mut out).is_ok());
    assert!(ops::layer_norm(&x, &[3, 4], -1, &x[..3], None, 1e-5, &mut out).is_err(), "scale length");
    assert!(ops::layer_norm(&x, &[3, 4], -1, &x[..4], Some(&x[..5]), 1e-5, &mut out).is_err(), "bias length");
    assert!(ops::layer_norm(&x, &[3, 4], 2, &x[..4], None, 1e-5, &mut out).is_err(), "axis");
    assert!(ops::layer_norm(&x, &[3, 4], -1, &x[..4], None, -1.0, &mut out).is_err(), "epsilon");
    assert!(ops::layer_norm(&x, &[3, 4], -1, &x[..4], None, 1e-5, &mut out[1..]).is_err(), "output length");
}

#[test]
fn small_ops_do_not_allocate() {
    let mut r = rng("small_ops_do_not_allocate");
    let xs = [1usize, 4, 6, 6];
    let x = r.normal_vec(numel(&xs));
    let c = r.normal_vec(4);
    let mut out = vec![0.0; x.len()];
    let mut small = vec![0.0; numel(&xs) * 4];
    let a = r.normal_vec(24);
    let b = r.normal_vec(24);
    let mut mm = vec![0.0; 36];
    let scale = r.normal_vec(6);
    let resize = Resize { coord: CoordTransform::Asymmetric, nearest: NearestMode::Floor, ..Resize::default() };
    let pool = Pool2d { kernel: [3, 3], strides: [1, 1], pads: [1; 4], ..Pool2d::square(3) };
    // Warm the per-thread scratch first (max pooling keeps its tap table in the index scratch).
    ops::matmul(&a, &[6, 4], &b, &[4, 6], &mut mm).unwrap();
    ops::linear(&a, &[6, 4], &b, &[6, 4], None, &mut mm).unwrap();
    ops::max_pool2d(&x, &xs, &pool, &mut out).unwrap();
    let n = allocations_during(|| {
        ops::add(&x, &xs, &c, &[1, 4, 1, 1], &mut out).unwrap();
        ops::activation(&x, &xs, &Activation::Silu, &mut out).unwrap();
        ops::softmax(&x, &xs, 1, &mut out).unwrap();
        ops::transpose(&x, &xs, &[0, 2, 3, 1], &mut out).unwrap();
        ops::max_pool2d(&x, &xs, &pool, &mut out).unwrap();
        ops::resize(&x, &xs, &[1, 4, 12, 12], &resize, &mut small).unwrap();
        ops::slice(&x, &xs, &[0], &[6], Some(&[2]), Some(&[1]), &mut out).unwrap();
        ops::layer_norm(&x, &xs, -1, &scale, None, 1e-5, &mut out).unwrap();
        ops::matmul(&a, &[6, 4], &b, &[4, 6], &mut mm).unwrap();
        ops::linear(&a, &[6, 4], &b, &[6, 4], None, &mut mm).unwrap();
    });
    assert_eq!(n, 0, "small ops allocated {n} times");
}

// ---------------------------------------------------------------------------------------------
// Throughput (release build, run by hand)
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

/// CARE linear attention in f64, straight from the paper's code: phi = ELU + 1,
/// KV = phi(K)^T V / N, z_i = 1 / (phi(q_i) . mean_j phi(k_j) + 1e-6), out_i = z_i phi(q_i) KV.
fn ref_linear_attention(q: &[f32], k: &[f32], v: &[f32], heads: usize, n: usize, d: usize, dv: usize) -> Vec<f64> {
    let phi = |x: f32| if x > 0.0 { x as f64 + 1.0 } else { (x as f64).exp() };
    let mut out = vec![0.0; heads * n * dv];
    for h in 0..heads {
        let (qh, kh, vh) = (&q[h * n * d..], &k[h * n * d..], &v[h * n * dv..]);
        let mut kv = vec![0.0; d * dv];
        let mut kmean = vec![0.0; d];
        for j in 0..n {
            for c in 0..d {
                let p = phi(kh[j * d + c]);
                kmean[c] += p / n as f64;
                for e in 0..dv {
                    kv[c * dv + e] += p * vh[j * dv + e] as f64 / n as f64;
                }
            }
        }
        for i in 0..n {
            let pq: Vec<f64> = (0..d).map(|c| phi(qh[i * d + c])).collect();
            let z = 1.0 / (pq.iter().zip(&kmean).map(|(a, b)| a * b).sum::<f64>() + 1e-6);
            for e in 0..dv {
                out[(h * n + i) * dv + e] = z * (0..d).map(|c| pq[c] * kv[c * dv + e]).sum::<f64>();
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)] // the three operands, their four sizes and the scale
fn ref_softmax_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    n: usize,
    d: usize,
    dv: usize,
    scale: f64,
) -> Vec<f64> {
    let mut out = vec![0.0; heads * n * dv];
    for h in 0..heads {
        for i in 0..n {
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    scale * (0..d).map(|c| q[(h * n + i) * d + c] as f64 * k[(h * n + j) * d + c] as f64).sum::<f64>()
                })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = s.iter().map(|x| (x - max).exp()).sum();
            for e in 0..dv {
                out[(h * n + i) * dv + e] =
                    (0..n).map(|j| (s[j] - max).exp() / total * v[(h * n + j) * dv + e] as f64).sum::<f64>();
            }
        }
    }
    out
}

#[test]
fn linear_and_softmax_attention_match_their_twins() {
    let mut r = rng("linear_and_softmax_attention_match_their_twins");
    // Small shapes, then one large enough to split over the workers.
    for &(b, h, n, d, dv) in &[(1, 1, 1, 1, 1), (1, 2, 7, 5, 3), (2, 3, 33, 16, 8), (1, 8, 300, 32, 32)] {
        let (qs, vs) = ([b, h, n, d], [b, h, n, dv]);
        let (q, k, v) = (r.normal_vec(b * h * n * d), r.normal_vec(b * h * n * d), r.normal_vec(b * h * n * dv));
        let mut out = vec![f32::NAN; b * h * n * dv];
        ops::linear_attention(&q, &qs, &k, &qs, &v, &vs, &mut out).unwrap();
        assert_close(
            &format!("linear attention {qs:?} {vs:?}"),
            &out,
            &ref_linear_attention(&q, &k, &v, b * h, n, d, dv),
        );
        let scale = 1.0 / (d as f32).sqrt();
        ops::softmax_attention(&q, &qs, &k, &qs, &v, &vs, scale, &mut out).unwrap();
        let reference = ref_softmax_attention(&q, &k, &v, b * h, n, d, dv, scale as f64);
        assert_close(&format!("softmax attention {qs:?} {vs:?}"), &out, &reference);
    }
    // Wrong shapes are errors.
    let x = vec![0.5; 24];
    let mut out = vec![0.0; 24];
    assert!(ops::linear_attention(&x, &[1, 1, 6, 4], &x, &[1, 1, 4, 6], &x, &[1, 1, 6, 4], &mut out).is_err());
    assert!(ops::linear_attention(&x, &[1, 6, 4], &x, &[1, 6, 4], &x, &[1, 6, 4], &mut out).is_err());
    assert!(
        ops::softmax_attention(&x, &[1, 1, 6, 4], &x, &[1, 1, 6, 4], &x, &[1, 1, 6, 4], f32::NAN, &mut out).is_err()
    );
    assert!(
        ops::softmax_attention(&x, &[1, 1, 6, 4], &x, &[1, 1, 6, 4], &x, &[1, 1, 6, 4], 1.0, &mut out[1..]).is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// Delta convolution
// ---------------------------------------------------------------------------------------------

#[test]
fn the_delta_cost_model_runs_dense_when_that_is_cheaper_and_stays_exact() {
    let mut r = rng("the_delta_cost_model_runs_dense_when_that_is_cheaper_and_stays_exact");
    let (xs, ws) = ([1, 16, 24, 24], [16, 16, 3, 3]);
    let p = Conv2d { pads: [1; 4], activation: Activation::Silu, ..Conv2d::default() };
    let w = r.normal_vec(numel(&ws));
    let b = r.normal_vec(ws[0]);
    let x0 = r.normal_vec(numel(&xs));
    // Every entry moves a little (sensor noise over a whole frame): with theta 0 all of it fires,
    // which the delta paths do slower than the dense conv.
    let noisy: Vec<f32> = x0.iter().map(|v| v + 0.1 * r.normal()).collect();
    // One small object moves: a 3x3 patch of every channel.
    let mut patch = noisy.clone();
    for c in 0..16 {
        for i in 10..13 {
            for j in 10..13 {
                patch[(c * 24 + i) * 24 + j] += r.normal();
            }
        }
    }
    let check = |delta: &ops::DeltaConv2d, x: &[f32], what: &str| {
        assert_close(what, delta.output(), &ref_conv2d(x, xs, &w, ws, Some(&b), &p));
    };
    let mut delta = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, 0.0).unwrap();
    delta.keyframe(&x0).unwrap();
    let step = delta.step_bounded(&noisy, usize::MAX).unwrap();
    assert!(step.keyed && !step.cut, "a noisy frame runs dense, and is no scene cut: {step:?}");
    check(&delta, &noisy, "dense fallback");
    // The next steps run the plain conv without scanning (still exact), then one scans again
    // against the state the fallback left and, for a small change, runs in delta.
    let probe = ops::DELTA_PROBE_EVERY as usize;
    let mut steps = Vec::new();
    for _ in 0..probe + 2 {
        steps.push(delta.step_bounded(&patch, usize::MAX).unwrap());
        check(&delta, &patch, "after the fallback");
    }
    assert!(steps[..probe - 1].iter().all(|s| s.keyed), "{steps:?}");
    assert!(!steps[probe - 1].keyed, "the {probe}th step scans again and runs in delta: {steps:?}");
    assert!(!steps.last().unwrap().keyed, "an unchanged frame runs in delta: {steps:?}");
    // In an executor the plain-conv steps write straight into the graph's buffer and leave the
    // state alone; the scan after them still starts from an exact state.
    let mut fast = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, 0.0).unwrap();
    let mut scratch = ops::DeltaScratch::new();
    scratch.fit(&fast);
    let mut out = vec![0.0; numel(&ops::conv2d_output_shape(&xs, &ws, &p).unwrap())];
    fast.keyframe(&x0).unwrap();
    // The fallback, plain convs on frames that differ a lot, then the scan on a small change.
    let mut frames: Vec<&[f32]> = vec![&noisy];
    frames.extend((1..probe).map(|k| if k % 2 == 1 { &x0[..] } else { &noisy[..] }));
    frames.extend([&patch[..], &patch[..], &noisy[..]]);
    let mut kinds = Vec::new();
    for x in &frames {
        let step = fast.step_into(x, usize::MAX, &mut scratch, &mut out).unwrap();
        kinds.push(step.keyed);
        assert_close("step_into", &out, &ref_conv2d(x, xs, &w, ws, Some(&b), &p));
    }
    assert!(kinds[..probe].iter().all(|&k| k), "the fallback, then plain convs: {kinds:?}");
    // The scan compares with the state of the fallback's frame (noisy): only the patch moved.
    assert!(!kinds[probe], "the scan after them runs a small change in delta: {kinds:?}");
    // A layer that reads a camera scans on every step, so a scene cut right after a fallback is
    // still seen; one that skips its scans would not see it.
    for scan_always in [true, false] {
        let mut watch = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, 0.0).unwrap();
        watch.set_scan_always(scan_always);
        watch.keyframe(&x0).unwrap();
        assert!(watch.step_bounded(&noisy, usize::MAX).unwrap().keyed);
        let after = watch.step_into(&patch, 10, &mut scratch, &mut out).unwrap();
        assert_eq!(after.cut, scan_always, "scan always: {scan_always}: {after:?}");
        assert_close("after a cut", &out, &ref_conv2d(&patch, xs, &w, ws, Some(&b), &p));
    }
    // Without the cost model the same noisy frame runs in delta.
    let mut always = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, 0.0).unwrap();
    always.set_cost_model(false);
    always.keyframe(&x0).unwrap();
    assert!(!always.step_bounded(&noisy, usize::MAX).unwrap().keyed);
    check(&always, &noisy, "always delta");
    // Past the bound it is a cut, whatever the cost model says.
    let cut = always.step_bounded(&x0, 10).unwrap();
    assert!(cut.keyed && cut.cut, "{cut:?}");
    check(&always, &x0, "cut");
}

#[test]
fn with_the_cost_model_only_a_camera_layer_treats_its_bound_as_a_cut_and_it_keeps_its_state_when_it_runs_dense() {
    let mut r = rng("with_the_cost_model_only_a_camera_layer_treats_its_bound_as_a_cut");
    let (xs, ws) = ([1, 16, 24, 24], [16, 16, 3, 3]);
    let p = Conv2d { pads: [1; 4], activation: Activation::Silu, ..Conv2d::default() };
    let w = r.normal_vec(numel(&ws));
    let b = r.normal_vec(ws[0]);
    let x0 = r.normal_vec(numel(&xs));
    // Every entry moves: past any small bound, and dearer in delta than dense.
    let moved: Vec<f32> = x0.iter().map(|v| v + 0.1 * r.normal()).collect();
    let mut scratch = ops::DeltaScratch::new();
    let mut out = vec![0.0; numel(&ops::conv2d_output_shape(&xs, &ws, &p).unwrap())];
    let exact = |out: &[f32], x: &[f32], what: &str| assert_close(what, out, &ref_conv2d(x, xs, &w, ws, Some(&b), &p));
    let bound = 100;
    // A layer further in: past its bound it runs dense like any cost fallback (no cut), then
    // runs the plain conv without scanning until its next probe.
    let mut inner = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, 0.0).unwrap();
    scratch.fit(&inner);
    inner.keyframe(&x0).unwrap();
    let probe = ops::DELTA_PROBE_EVERY as usize;
    let mut steps = Vec::new();
    for k in 0..probe {
        let x = if k % 2 == 0 { &moved } else { &x0 };
        steps.push(inner.step_into(x, bound, &mut scratch, &mut out).unwrap());
        exact(&out, x, "inner layer past its bound");
    }
    assert!(steps.iter().all(|s| s.keyed && !s.cut), "dense, never a cut: {steps:?}");
    // Its fallback refreshed its state (x_ref is the frame that went past the bound), so the
    // probe after the plain convs saw the change from that frame: none, for the same frame.
    assert!(inner.reference_input() == &moved[..], "the fallback refreshes an inner layer's state");
    let settled = inner.step_into(&moved, bound, &mut scratch, &mut out).unwrap();
    assert!(!settled.keyed && settled.fired == 0, "{steps:?} then {settled:?}");
    exact(&out, &moved, "settled");
    // Each fallback in a row doubles the steps to the next probe, up to the cap; a step in
    // delta brings the interval back. A fallback refreshes the state, so the steps where the
    // reference input becomes the frame are the probes (three frames in turn: each differs
    // from the last probe's).
    let other: Vec<f32> = x0.iter().map(|v| v - 0.1 * r.normal()).collect();
    let frames = [&moved, &other, &x0];
    let mut backoff = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, 0.0).unwrap();
    backoff.keyframe(&x0).unwrap();
    let (first, cap) = (probe, ops::DELTA_PROBE_EVERY_MAX as usize);
    let mut probes = Vec::new();
    let mut run = |k: usize, x: &[f32], backoff: &mut ops::DeltaConv2d, probes: &mut Vec<usize>| {
        let before = backoff.reference_input() == x;
        let step = backoff.step_into(x, bound, &mut scratch, &mut out).unwrap();
        exact(&out, x, "backing off");
        if !before && backoff.reference_input() == x {
            probes.push(k);
        }
        step
    };
    let mut expected = vec![0];
    while expected.len() < 6 {
        let last = *expected.last().unwrap();
        expected.push(last + (first << (expected.len() - 1)).min(cap));
    }
    for k in 0..=*expected.last().unwrap() {
        run(k, frames[k % 3], &mut backoff, &mut probes);
    }
    assert_eq!(probes, expected, "intervals {first}, doubling up to {cap}");
    // The same frame until the next probe: it runs in delta, and the interval starts over.
    let settle = expected[5] + cap;
    let still = frames[expected[5] % 3];
    for k in expected[5] + 1..=settle {
        let step = run(k, still, &mut backoff, &mut probes);
        assert_eq!(step.keyed, k < settle, "step {k}: {step:?}");
    }
    for k in settle + 1..=settle + 1 + first {
        run(k, if k == settle + 1 { &moved } else { &x0 }, &mut backoff, &mut probes);
    }
    assert_eq!(&probes[6..], &[settle + 1, settle + 1 + first], "after a step in delta");
    // A camera layer: past its bound is a scene cut, a keyframe of the new frame.
    let mut camera = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, 0.0).unwrap();
    camera.set_scan_always(true);
    camera.keyframe(&x0).unwrap();
    let cut = camera.step_into(&moved, bound, &mut scratch, &mut out).unwrap();
    assert!(cut.keyed && cut.cut, "{cut:?}");
    assert!(camera.reference_input() == &moved[..], "a cut is a keyframe of the new frame");
    exact(&out, &moved, "camera cut");
    // Under its bound but dearer in delta, it runs the plain conv into the caller's buffer and
    // leaves its state alone (still exact: its own output is still the conv of x_ref), rather
    // than pay for a keyframe on every noisy frame.
    camera.keyframe(&x0).unwrap();
    let dense = camera.step_into(&moved, usize::MAX, &mut scratch, &mut out).unwrap();
    assert!(dense.keyed && !dense.cut, "{dense:?}");
    exact(&out, &moved, "camera fallback");
    assert!(camera.reference_input() == &x0[..], "the camera layer's state is left alone");
    exact(camera.output(), &x0, "the camera layer's own output");
    // Without the cost model, past the bound is a cut for any layer.
    let mut always = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, 0.0).unwrap();
    always.set_cost_model(false);
    always.keyframe(&x0).unwrap();
    let cut = always.step_into(&moved, bound, &mut scratch, &mut out).unwrap();
    assert!(cut.keyed && cut.cut, "{cut:?}");
    exact(&out, &moved, "cut without the cost model");
}

#[test]
fn delta_conv_with_theta_zero_tracks_the_dense_conv_and_theta_bounds_the_error() {
    let mut r = rng("delta_conv_with_theta_zero_tracks_the_dense_conv_and_theta_bounds_the_error");
    let conv = |strides, pads, dilations, group| Conv2d { strides, pads, dilations, group, ..Conv2d::default() };
    let cases = [
        ([1, 4, 9, 11], [6, 4, 3, 3], conv([1, 1], [1; 4], [1, 1], 1)),
        ([2, 6, 10, 9], [6, 2, 3, 3], conv([2, 2], [1, 0, 2, 1], [1, 1], 3)),
        ([1, 3, 12, 12], [5, 3, 3, 2], conv([1, 2], [2; 4], [2, 1], 1)),
        ([1, 8, 7, 7], [8, 1, 3, 3], conv([1, 1], [1; 4], [1, 1], 8)),
        // The detector's downsampling conv (one group, 3x3, stride 2): its position GEMM runs
        // per stride residue class, each against its own taps.
        ([1, 5, 10, 9], [4, 5, 3, 3], conv([2, 2], [1; 4], [1, 1], 1)),
        // A stride wider than the kernel: three of the four residue classes reach no output.
        ([1, 3, 8, 8], [4, 3, 1, 1], conv([2, 2], [0; 4], [1, 1], 1)),
    ];
    for (xs, ws, p) in cases {
        let w = r.normal_vec(numel(&ws));
        let b = r.normal_vec(ws[0]);
        let os = ops::conv2d_output_shape(&xs, &ws, &p).unwrap();
        let mut x = r.normal_vec(numel(&xs));
        // theta = 0: every change fires, and the accumulated output is the dense conv. Under every
        // kernel instance the CPU has: the position GEMM packs dx in the instance's layout.
        for &kernel in ops::CpuKernel::available() {
            ops::force_kernel(Some(kernel));
            let mut delta = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, 0.0).unwrap();
            // The delta paths under test, not the cost model's dense fallback.
            delta.set_cost_model(false);
            delta.step(&x).unwrap(); // the first step is a keyframe
            for frame in 0..4 {
                // A sparse change: a fifth of the inputs move.
                for v in x.iter_mut() {
                    if r.unit() < 0.2 {
                        *v += r.normal();
                    }
                }
                delta.step(&x).unwrap();
                assert!(delta.fired() < x.len(), "only the moved inputs fire");
                let reference = ref_conv2d(&x, xs, &w, ws, Some(&b), &p);
                let what = format!("delta conv x {xs:?} w {ws:?} frame {frame} ({})", kernel.name());
                assert_close(&what, delta.output(), &reference);
            }
        }
        ops::force_kernel(None);
        // theta > 0: small moves do not fire, and the output stays within theta * sum|W| of the
        // dense conv (per output), without drifting over many frames.
        let theta = 0.05;
        let mut delta = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, theta).unwrap();
        delta.set_cost_model(false);
        delta.keyframe(&x).unwrap();
        let per_output: f64 = (0..ws[0])
            .map(|m| w[m * numel(&ws[1..])..][..numel(&ws[1..])].iter().map(|v| v.abs() as f64).sum::<f64>())
            .fold(0.0, f64::max);
        for _ in 0..20 {
            for v in x.iter_mut() {
                *v += 0.01 * r.normal();
            }
            delta.step(&x).unwrap();
        }
        let reference = ref_conv2d(&x, xs, &w, ws, Some(&b), &p);
        let worst = delta.output().iter().zip(&reference).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(worst <= theta as f64 * per_output + 1e-4, "{worst} > {theta} x {per_output}");
        assert_eq!(delta.output_shape(), os);
    }
    // Bad arguments are errors.
    let (xs, ws) = ([1, 2, 4, 4], [2, 2, 1, 1]);
    let w = vec![1.0; 4];
    assert!(ops::DeltaConv2d::new(&xs, &w, &ws, None, &Conv2d::default(), -1.0).is_err());
    assert!(ops::DeltaConv2d::new(&xs, &w, &ws, None, &Conv2d::default(), f32::NAN).is_err());
    let mut d = ops::DeltaConv2d::new(&xs, &w, &ws, None, &Conv2d::default(), 0.1).unwrap();
    assert!(d.step(&[0.0; 5]).is_err());
    // A step after the keyframe allocates nothing.
    let x = r.normal_vec(32);
    d.step(&x).unwrap();
    let moved: Vec<f32> = x.iter().map(|v| v + 0.5).collect();
    let n = allocations_during(|| {
        d.step(&moved).unwrap();
    });
    assert_eq!(n, 0, "a delta step allocated {n} times");
    assert_eq!(d.fired(), 32);
}

#[test]
fn delta_conv_applies_its_activation_to_the_accumulated_output_and_keys_when_too_much_fires() {
    let mut r = rng("delta_conv_applies_its_activation_to_the_accumulated_output_and_keys_when_too_much_fires");
    let (xs, ws) = ([1, 5, 8, 8], [7, 5, 3, 3]);
    let p = Conv2d { pads: [1; 4], activation: Activation::Silu, ..Conv2d::default() };
    let w = r.normal_vec(numel(&ws));
    let b = r.normal_vec(7);
    let mut x = r.normal_vec(numel(&xs));
    let mut delta = ops::DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, 0.0).unwrap();
    // On a layer this small the cost model would run most steps dense; the delta path is tested.
    delta.set_cost_model(false);
    assert!(delta.step_bounded(&x, usize::MAX).unwrap().keyed, "the first step is a keyframe");
    let silu = |v: f64| v / (1.0 + (-v).exp());
    for frame in 0..3 {
        // A patch moves: only the outputs its taps reach change.
        for v in &mut x[(frame * 64 + 9)..(frame * 64 + 20)] {
            *v += r.normal();
        }
        let step = delta.step_bounded(&x, usize::MAX).unwrap();
        assert!(!step.keyed && step.fired == 11, "{step:?}");
        // One group: the compaction unit is the input position (11 moved, each a row of all 5
        // channels times every tap's 7 outputs).
        assert!(step.macs > 0 && step.macs <= 11 * 5 * 9 * 7, "work is proportional to the moved positions: {step:?}");
        let reference: Vec<f64> =
            ref_conv2d(&x, xs, &w, ws, Some(&b), &Conv2d { activation: Activation::None, ..p.clone() })
                .into_iter()
                .map(silu)
                .collect();
        assert_close(&format!("delta silu conv frame {frame}"), delta.output(), &reference);
    }
    // Past the bound the step is the dense conv, and the state restarts from it.
    for v in x.iter_mut() {
        *v += 1.0;
    }
    let step = delta.step_bounded(&x, x.len() / 2).unwrap();
    assert!(step.keyed && step.macs == delta.dense_macs(), "{step:?}");
    assert_eq!(delta.reference_input(), &x[..]);
    // reset() makes the next step a keyframe even when nothing moved.
    delta.reset();
    assert!(delta.step_bounded(&x, usize::MAX).unwrap().keyed);
    assert!(!delta.step_bounded(&x, usize::MAX).unwrap().keyed);
    assert_eq!(delta.fired(), 0, "nothing moved, nothing fires");
}

#[test]
fn delta_linear_tracks_the_dense_layer_and_theta_bounds_the_error() {
    let mut r = rng("delta_linear_tracks_the_dense_layer_and_theta_bounds_the_error");
    let (rows, n, k) = (3, 10, 37);
    let w = r.normal_vec(n * k);
    let b = r.normal_vec(n);
    let mut x = r.normal_vec(rows * k);
    let dense = |x: &[f32]| -> Vec<f64> {
        (0..rows * n)
            .map(|o| {
                let (row, j) = (o / n, o % n);
                b[j] as f64 + (0..k).map(|i| x[row * k + i] as f64 * w[j * k + i] as f64).sum::<f64>()
            })
            .collect()
    };
    let mut delta = ops::DeltaLinear::new(rows, &w, n, k, Some(&b), 0.0).unwrap();
    delta.step(&x).unwrap();
    for frame in 0..4 {
        for v in x.iter_mut() {
            if r.unit() < 0.1 {
                *v += r.normal();
            }
        }
        delta.step(&x).unwrap();
        let s = delta.last_step();
        assert!(!s.keyed && s.macs == (s.fired * n) as u64, "{s:?}");
        assert_close(&format!("delta linear frame {frame}"), delta.output(), &dense(&x));
    }
    let theta = 0.05;
    let mut delta = ops::DeltaLinear::new(rows, &w, n, k, Some(&b), theta).unwrap();
    delta.keyframe(&x).unwrap();
    let per_output = (0..n).map(|j| w[j * k..][..k].iter().map(|v| v.abs() as f64).sum::<f64>()).fold(0.0, f64::max);
    for _ in 0..30 {
        for v in x.iter_mut() {
            *v += 0.01 * r.normal();
        }
        delta.step(&x).unwrap();
    }
    let worst = delta.output().iter().zip(dense(&x)).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(worst <= theta as f64 * per_output + 1e-4, "{worst} > {theta} x {per_output}");
    assert!(ops::DeltaLinear::new(rows, &w, n, k + 1, None, 0.1).is_err());
    assert!(ops::DeltaLinear::new(rows, &w, n, k, None, -0.1).is_err());
    let moved: Vec<f32> = x.iter().map(|v| v + 1.0).collect();
    let allocs = allocations_during(|| {
        delta.step(&moved).unwrap();
    });
    assert_eq!(allocs, 0, "a delta linear step allocated {allocs} times");
    let allocs = allocations_during(|| {
        delta.keyframe(&x).unwrap();
    });
    assert_eq!(allocs, 0, "a delta linear keyframe allocated {allocs} times");
    assert_close("delta linear keyframe", delta.output(), &dense(&x));
}

#[test]
fn conv_with_no_input_channels_gives_its_bias() {
    // C = 0: no taps at all, so every output is its bias (then the activation), on every path.
    let (xs, ws) = ([1, 0, 5, 5], [8, 0, 3, 3]);
    let bias: Vec<f32> = (0..8).map(|m| m as f32 - 3.5).collect();
    let p = Conv2d { pads: [1; 4], activation: Activation::Relu, ..Conv2d::default() };
    let mut out = vec![f32::NAN; 8 * 25];
    ops::conv2d(&[], &xs, &[], &ws, Some(&bias), &p, &mut out).unwrap();
    let want: Vec<f32> = (0..8 * 25).map(|i| bias[i / 25].max(0.0)).collect();
    assert_eq!(out, want);
    let packed = ops::PackedConvWeights::new(&[], &ws, 1).unwrap();
    let mut again = vec![f32::NAN; 8 * 25];
    ops::conv2d_packed(&[], &xs, &packed, Some(&bias), &p, &mut again).unwrap();
    assert_eq!(again, want);
}

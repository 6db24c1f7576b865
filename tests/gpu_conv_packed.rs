//! `graph_ops::conv2d_packed` (conv2d reading F16 / Q8 / Q4 / FP4 weights packed, decoding them
//! in the kernels' weight-tile loader) held to the CPU twin `ops::conv2d` run on the DEQUANTIZED
//! weights (`quant::dequantize`, the f64 reference decoder, cast to f32): the weights are then
//! identical and only the summation order differs, so the bound is `Tol::F32` (relative L2 1e-5)
//! for every scheme of `selftest::all_schemes()`.
//!
//! Every conv path is covered per scheme: implicit GEMM with each tile shape (3x3 stride 1 pad
//! 1, 3x3 stride 2, 1x1, groups 2, many output channels) and the direct kernel (depthwise, few
//! output channels per group), with K rarely a multiple of the group size, fused bias and SiLU.
//! x and y live in one arena buffer (x read through the read_write binding), with guard values
//! that must survive; main, aux and bias are three other buffers.
//!
//! The seed comes from the clock and is printed; `KESTREL_SEED=<seed>` replays a failure.
//! There must be an adapter (lavapipe is enough): without one these tests fail, they do not skip.

mod common;
use common::gpu::{ctx, normals, range, seeded, ALIGN, GUARD};

use kestrel::backend::gpu::graph_ops::{self as gops, GpuStep, GpuView, PackedWeights};
use kestrel::backend::gpu::GpuContext;
use kestrel::ops::{self, Activation, Conv2d};
use kestrel::quant::{dequantize, quantize};
use kestrel::rng::SplitMix64;
use kestrel::selftest::all_schemes;
use kestrel::tensor::{Fp4Scale, Scheme};
use kestrel::tol::{rel_l2, Tol};
use kestrel::Error;
use wgpu::naga;

// ---------------------------------------------------------------------------------------------
// Shader validation

/// The packed-weight module suffixes (one module per tile shape and suffix).
const PACKED_SUFFIXES: [&str; 5] = ["_f16", "_q8", "_q4", "_fp4_e8m0", "_fp4_f16"];

#[test]
fn every_packed_conv_module_validates_with_naga() {
    let modules = gops::modules();
    let packed: Vec<_> = modules.iter().filter(|(name, _)| PACKED_SUFFIXES.iter().any(|s| name.ends_with(s))).collect();
    assert_eq!(packed.len(), PACKED_SUFFIXES.len() * gops::GEMM_TILES.len(), "one module per format and tile");
    for (name, src) in packed {
        assert!(name.starts_with("op_gemm_"), "{name}");
        let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        // No capability at all: the f16 decoding is done by hand, not with unpack2x16float.
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty());
        validator.validate(&module).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        let entries: Vec<&str> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
        for e in ["conv2d", "conv2d_direct", "matmul"] {
            assert!(entries.contains(&e), "{name} lacks entry point {e}");
        }
        // Packed words are read as integers: the read-only bindings are u32 in these modules.
        assert!(src.contains("var<storage, read> src0: array<u32>;"), "{name}: src0 is not array<u32>");
        assert!(!src.contains("array<f32>;\n@group(0) @binding(3)"), "{name}: src1 is not array<u32>");
    }
}

// ---------------------------------------------------------------------------------------------
// Against the CPU twin

struct Case {
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    p: Conv2d,
    bias: bool,
}

/// Random geometry of one path: 0 3x3 stride 1 pad 1, 1 3x3 stride 2, 2 1x1, 3 groups 2,
/// 4 depthwise (direct), 5 grouped with 1..3 output channels per group (direct, dilated),
/// 6 many output channels (the square tile) with odd sizes.
fn case(rng: &mut SplitMix64, kind: usize) -> Case {
    let n = range(rng, 1, 2);
    let (h, w) = (range(rng, 3, 9), range(rng, 3, 9));
    let conv = |strides: [usize; 2], pads: [usize; 4], dilations: [usize; 2], group: usize| Conv2d {
        strides,
        pads,
        dilations,
        group,
        activation: Activation::None,
    };
    // (group, C/group, M/group, kernel, conv)
    let (group, cg, mg, (kh, kw), p) = match kind {
        0 => (1, range(rng, 2, 7), range(rng, 17, 32), (3, 3), conv([1, 1], [1; 4], [1, 1], 1)),
        1 => (1, range(rng, 9, 17), range(rng, 4, 16), (3, 3), conv([2, 2], [1, 0, 1, 1], [1, 1], 1)),
        2 => (1, range(rng, 20, 45), range(rng, 4, 40), (1, 1), conv([1, 1], [0; 4], [1, 1], 1)),
        3 => (2, range(rng, 3, 9), range(rng, 4, 12), (3, 3), conv([1, 1], [1; 4], [1, 1], 2)),
        4 => {
            let g = range(rng, 2, 9);
            (g, 1, 1, (3, 3), conv([range(rng, 1, 2), 1], [1; 4], [1, 1], g))
        }
        5 => (range(rng, 2, 3), range(rng, 10, 20), range(rng, 1, 3), (2, 3), conv([1, 1], [1, 2, 0, 1], [2, 1], 1)),
        _ => (1, range(rng, 1, 5), range(rng, 65, 80), (range(rng, 1, 3), 3), conv([1, 2], [0, 1, 2, 1], [1, 1], 1)),
    };
    let p = Conv2d { group, ..p };
    Case { x_shape: [n, group * cg, h, w], w_shape: [group * mg, cg, kh, kw], p, bias: kind != 2 }
}

/// Runs one packed conv on the GPU and returns (relative L2 error against the CPU twin on the
/// dequantized weights, kernel entry point).
fn check(ctx: &GpuContext, rng: &mut SplitMix64, scheme: Scheme, c: &Case) -> (f64, &'static str) {
    let out = ops::conv2d_output_shape(&c.x_shape, &c.w_shape, &c.p).expect("valid case");
    let [m, cg, kh, kw] = c.w_shape;
    let k = cg * kh * kw;
    let n_out = ops::numel(&out);
    let x = normals(rng, ops::numel(&c.x_shape), 1.0);
    let w = normals(rng, m * k, 0.5);
    let bias = c.bias.then(|| normals(rng, m, 0.5));
    let packed = quantize(&w, m, k, scheme).expect("quantize");
    let deq: Vec<f32> = dequantize(&packed.view()).iter().map(|&v| v as f32).collect();
    let mut want = vec![0f32; n_out];
    ops::conv2d(&x, &c.x_shape, &deq, &c.w_shape, bias.as_deref(), &c.p, &mut want).expect("cpu conv2d");

    // Arena: guard, x, guard, y (NaN: an unwritten output fails), guard; 256-byte offsets.
    let mut host = vec![GUARD; ALIGN];
    let x_at = host.len();
    host.extend_from_slice(&x);
    host.resize(host.len().next_multiple_of(ALIGN) + ALIGN * range(rng, 0, 2), GUARD);
    let y_at = host.len();
    host.extend(std::iter::repeat_n(f32::NAN, n_out));
    host.resize(host.len().next_multiple_of(ALIGN) + ALIGN, GUARD);
    let arena = ctx.storage_buffer("arena", bytemuck::cast_slice(&host)).expect("arena");
    let main = ctx.storage_buffer("packed main", bytemuck::cast_slice(&packed.main)).expect("main");
    let aux = ctx.storage_buffer("packed aux", bytemuck::cast_slice(&packed.aux)).expect("aux");
    // The bias at a non-zero offset of its own buffer.
    let bias_host: Vec<f32> =
        bias.iter().flat_map(|b| std::iter::repeat_n(GUARD, ALIGN).chain(b.iter().copied())).collect();
    let bias_buf = ctx.storage_buffer("bias", bytemuck::cast_slice(&bias_host)).expect("bias");

    let bias_shape = [m];
    let steps = gops::conv2d_packed(
        ctx,
        GpuView::new(&arena, (x_at * 4) as u64, &c.x_shape),
        PackedWeights { scheme, main: &main, aux: &aux, shape: c.w_shape },
        bias.as_ref().map(|_| GpuView::new(&bias_buf, (ALIGN * 4) as u64, &bias_shape)),
        &c.p,
        GpuView::new(&arena, (y_at * 4) as u64, &out),
    )
    .expect("conv2d_packed");
    assert_eq!(steps.len(), 1);
    run(ctx, &steps);

    let mut back = vec![0f32; host.len()];
    let staging = ctx
        .zeroed_buffer(
            "read-back",
            (back.len() * 4) as u64,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )
        .expect("staging");
    ctx.read_f32(&arena, &staging, &mut back).expect("read-back");
    for (i, (&got, &was)) in back.iter().zip(&host).enumerate() {
        let is_out = (y_at..y_at + n_out).contains(&i);
        assert!(is_out || got.to_bits() == was.to_bits(), "float {i} outside the output changed: {was} -> {got}");
    }
    let reference: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    (rel_l2(&back[y_at..y_at + n_out], &reference), steps[0].name())
}

fn run(ctx: &GpuContext, steps: &[GpuStep]) {
    ctx.scoped("running conv2d_packed", || {
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("test") });
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("conv"), timestamp_writes: None });
            for s in steps {
                s.encode(&mut pass);
            }
        }
        ctx.queue.submit([enc.finish()]);
    })
    .expect("the steps must encode and submit without validation errors");
}

/// Every conv path for every scheme of `all_schemes()` that `pick` selects.
fn every_path(test: &str, pick: impl Fn(Scheme) -> bool) {
    let ctx = ctx();
    let mut rng = seeded(test);
    let schemes: Vec<Scheme> = all_schemes().into_iter().filter(|&s| pick(s)).collect();
    assert!(!schemes.is_empty());
    for scheme in schemes {
        let mut entries = Vec::new();
        // F32 is the plain conv path (tests/gpu_ops.rs covers it): one GEMM and one direct case.
        let kinds: &[usize] = if scheme == Scheme::F32 { &[0, 4] } else { &[0, 1, 2, 3, 4, 5, 6] };
        for &kind in kinds {
            let mut c = case(&mut rng, kind);
            // Fused bias + SiLU on a GEMM path and on the direct path; the others vary.
            c.p.activation = match kind {
                0 | 4 => Activation::Silu,
                1 => Activation::Relu,
                5 => Activation::Silu,
                _ => Activation::None,
            };
            let (err, entry) = check(ctx, &mut rng, scheme, &c);
            let k = c.w_shape[1] * c.w_shape[2] * c.w_shape[3];
            assert!(
                err <= Tol::F32.rel_l2,
                "{} kind {kind}: x {:?} w {:?} (K = {k}) {:?} bias {} ({entry}): relative L2 error {err:.3e}",
                scheme.label(),
                c.x_shape,
                c.w_shape,
                c.p,
                c.bias,
            );
            entries.push(entry);
        }
        // Both kernels ran (F32 takes the plain conv path).
        let (gemm, direct) = ("conv2d", "conv2d_direct");
        assert!(entries.contains(&gemm) && entries.contains(&direct), "{}: kernels {entries:?}", scheme.label());
    }
}

#[test]
fn q4_conv_matches_cpu_on_dequantized_weights() {
    every_path("q4", |s| matches!(s, Scheme::Q4 { .. }));
}

#[test]
fn fp4_conv_matches_cpu_on_dequantized_weights() {
    every_path("fp4", |s| matches!(s, Scheme::Fp4 { .. }));
}

#[test]
fn q8_conv_matches_cpu_on_dequantized_weights() {
    every_path("q8", |s| s == Scheme::Q8);
}

#[test]
fn f16_and_f32_conv_match_cpu() {
    every_path("f16/f32", |s| matches!(s, Scheme::F16 | Scheme::F32));
}

#[test]
fn all_schemes_are_covered() {
    let covered =
        |s: Scheme| matches!(s, Scheme::F32 | Scheme::F16 | Scheme::Q8 | Scheme::Q4 { .. } | Scheme::Fp4 { .. });
    assert!(all_schemes().into_iter().all(covered));
    // Both FP4 scale kinds are in the list (each is its own module).
    assert!(all_schemes().iter().any(|s| matches!(s, Scheme::Fp4 { scale: Fp4Scale::E8M0, .. })));
    assert!(all_schemes().iter().any(|s| matches!(s, Scheme::Fp4 { scale: Fp4Scale::F16, .. })));
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn wrong_shapes_are_typed_errors() {
    let ctx = ctx();
    let scheme = Scheme::Q4 { group: 32, symmetric: false };
    // Weights [4, 3, 3, 3]: K = 27, one group.
    let packed = quantize(&vec![0.25f32; 4 * 27], 4, 27, scheme).unwrap();
    let main = ctx.storage_buffer("main", bytemuck::cast_slice(&packed.main)).unwrap();
    let aux = ctx.storage_buffer("aux", bytemuck::cast_slice(&packed.aux)).unwrap();
    let arena = ctx.storage_buffer("arena", &[0u8; 8192]).unwrap();
    let x = GpuView::new(&arena, 0, &[1, 3, 4, 4]);
    let y = GpuView::new(&arena, 1024, &[1, 4, 2, 2]);
    let p = Conv2d::default();
    let w = |scheme: Scheme, shape: [usize; 4]| PackedWeights { scheme, main: &main, aux: &aux, shape };
    let shape_err = |r: kestrel::Result<Vec<GpuStep>>| matches!(r, Err(Error::ShapeMismatch { .. }));

    // The right call works.
    assert_eq!(gops::conv2d_packed(ctx, x, w(scheme, [4, 3, 3, 3]), None, &p, y).unwrap().len(), 1);
    // C/group does not match the input's channels.
    assert!(shape_err(gops::conv2d_packed(ctx, x, w(scheme, [4, 2, 3, 3]), None, &p, y)));
    // The output view has the wrong size.
    assert!(shape_err(gops::conv2d_packed(
        ctx,
        x,
        w(scheme, [4, 3, 3, 3]),
        None,
        &p,
        GpuView::new(&arena, 1024, &[1, 4, 3, 3])
    )));
    // A bias of the wrong length.
    let b = GpuView::new(&arena, 2048, &[5]);
    assert!(shape_err(gops::conv2d_packed(ctx, x, w(scheme, [4, 3, 3, 3]), Some(b), &p, y)));
    // More output channels than the packed buffers hold (main, then aux).
    assert!(shape_err(gops::conv2d_packed(
        ctx,
        x,
        w(scheme, [64, 3, 3, 3]),
        None,
        &p,
        GpuView::new(&arena, 1024, &[1, 64, 2, 2])
    )));
    let big = ctx.storage_buffer("big main", &vec![0u8; 64 * 4 * 4]).unwrap();
    let only_main_fits = PackedWeights { scheme, main: &big, aux: &aux, shape: [64, 3, 3, 3] };
    assert!(shape_err(gops::conv2d_packed(
        ctx,
        x,
        only_main_fits,
        None,
        &p,
        GpuView::new(&arena, 1024, &[1, 64, 2, 2])
    )));
    // x in a buffer of its own: main, aux, bias and x are four read-only buffers, one too many.
    let x_alone = ctx.storage_buffer("x alone", &[0u8; 256]).unwrap();
    let bias_alone = ctx.storage_buffer("bias alone", &[0u8; 16]).unwrap();
    let b = GpuView::new(&bias_alone, 0, &[4]);
    let r = gops::conv2d_packed(ctx, GpuView::new(&x_alone, 0, &[1, 3, 4, 4]), w(scheme, [4, 3, 3, 3]), Some(b), &p, y);
    assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
    // A scheme that does not validate (group 48), and MXFP4 with another group than 32.
    let bad = Scheme::Q4 { group: 48, symmetric: false };
    assert!(matches!(
        gops::conv2d_packed(ctx, x, w(bad, [4, 3, 3, 3]), None, &p, y),
        Err(Error::InvalidQuantization { .. })
    ));
    let bad = Scheme::Fp4 { group: 64, scale: Fp4Scale::E8M0 };
    assert!(matches!(
        gops::conv2d_packed(ctx, x, w(bad, [4, 3, 3, 3]), None, &p, y),
        Err(Error::InvalidQuantization { .. })
    ));
    // An empty output needs no dispatch.
    let x0 = GpuView::new(&arena, 0, &[0, 3, 4, 4]);
    let y0 = GpuView::new(&arena, 1024, &[0, 4, 2, 2]);
    assert!(gops::conv2d_packed(ctx, x0, w(scheme, [4, 3, 3, 3]), None, &p, y0).unwrap().is_empty());
}

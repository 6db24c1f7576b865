//! The GPU graph ops (`backend::gpu::graph_ops`) held to their CPU twins in `kestrel::ops` on
//! fresh random data and random shapes, within `Tol::F32` (relative L2 1e-5; data movement,
//! max pooling and nearest resize must match bit for bit).
//!
//! Every tensor sits in an "arena" buffer at a random 256-byte-aligned offset (never 0), several
//! operands in the same buffer, with guard values between them; after each run the whole arena
//! is read back and everything outside the outputs must be unchanged. Constants (weights, bias)
//! live in a second buffer, and some cases put an input in a third, to use every binding slot.
//!
//! The seed comes from the clock and is printed; `KESTREL_SEED=<seed>` replays a failure.
//! There must be an adapter (lavapipe is enough): without one these tests fail, they do not skip.

mod common;
use common::gpu::{ctx, normals, range, seeded, ALIGN, GUARD};

use kestrel::backend::gpu::graph_ops::{self as gops, GpuStep, GpuView};
use kestrel::backend::gpu::{shaders, GpuContext};
use kestrel::ops::{
    self, Activation, BinaryOp, ClipThreshold, Conv2d, CoordTransform, NearestMode, Pool2d, Resize, ResizeMode,
};
use kestrel::rng::SplitMix64;
use kestrel::tol::{rel_l2, Tol};
use kestrel::Error;
use wgpu::naga;

// ---------------------------------------------------------------------------------------------
// Harness

/// A host mirror of a GPU buffer: tensors at random 256-byte-aligned offsets with guard values
/// in between; outputs start as NaN so an unwritten output fails every comparison.
struct Arena {
    host: Vec<f32>,
    outputs: Vec<(usize, usize)>,
    buffer: Option<wgpu::Buffer>,
}

impl Arena {
    fn new() -> Self {
        // Nothing at offset 0: every view has a non-zero offset.
        Arena { host: vec![GUARD; ALIGN], outputs: Vec::new(), buffer: None }
    }

    fn gap(&mut self, rng: &mut SplitMix64) -> usize {
        let start = (self.host.len().next_multiple_of(ALIGN)) + ALIGN * rng.below(3) as usize;
        self.host.resize(start, GUARD);
        start
    }

    /// An input; byte offset returned.
    fn put(&mut self, rng: &mut SplitMix64, data: &[f32]) -> u64 {
        let at = self.gap(rng);
        self.host.extend_from_slice(data);
        (at * 4) as u64
    }

    /// An input at a 4-byte (not 256-byte) aligned offset.
    fn put_unaligned(&mut self, rng: &mut SplitMix64, data: &[f32]) -> u64 {
        let at = self.gap(rng) + range(rng, 1, ALIGN - 1);
        self.host.resize(at, GUARD);
        self.host.extend_from_slice(data);
        (at * 4) as u64
    }

    /// An output of `len` values.
    fn output(&mut self, rng: &mut SplitMix64, len: usize) -> u64 {
        let at = self.gap(rng);
        self.host.extend(std::iter::repeat_n(f32::NAN, len));
        self.outputs.push((at, len));
        (at * 4) as u64
    }

    /// An input that is also the output (in place).
    fn inout(&mut self, rng: &mut SplitMix64, data: &[f32]) -> u64 {
        let at = self.put(rng, data) as usize / 4;
        self.outputs.push((at, data.len()));
        (at * 4) as u64
    }

    /// Creates the buffer; returns a handle to it (wgpu buffers are reference-counted handles).
    fn upload(&mut self, ctx: &GpuContext) -> wgpu::Buffer {
        let end = self.host.len().next_multiple_of(ALIGN) + ALIGN;
        self.host.resize(end, GUARD);
        self.buffer = Some(ctx.storage_buffer("test arena", bytemuck::cast_slice(&self.host)).expect("arena"));
        self.buf().clone()
    }

    fn buf(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("uploaded")
    }

    /// Reads the buffer back and checks that nothing outside the outputs changed.
    fn read(&self, ctx: &GpuContext) -> Readback {
        let mut data = vec![0f32; self.host.len()];
        let staging = ctx
            .zeroed_buffer(
                "test read-back",
                (data.len() * 4) as u64,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )
            .expect("staging");
        ctx.read_f32(self.buf(), &staging, &mut data).expect("read-back");
        let mut is_out = vec![false; data.len()];
        for &(at, len) in &self.outputs {
            is_out[at..at + len].iter_mut().for_each(|o| *o = true);
        }
        for (i, (&got, &was)) in data.iter().zip(&self.host).enumerate() {
            assert!(
                is_out[i] || got.to_bits() == was.to_bits(),
                "float {i} outside the outputs changed: {was} -> {got}"
            );
        }
        Readback { data }
    }
}

struct Readback {
    data: Vec<f32>,
}

impl Readback {
    fn at(&self, offset: u64, len: usize) -> &[f32] {
        &self.data[offset as usize / 4..][..len]
    }
}

/// Records the steps into one compute pass, submits, and fails on any validation error.
fn run(ctx: &GpuContext, steps: &[GpuStep]) {
    ctx.scoped("running graph-op steps", || {
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("test") });
        {
            let mut pass = enc
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("graph ops"), timestamp_writes: None });
            for s in steps {
                s.encode(&mut pass);
            }
        }
        ctx.queue.submit([enc.finish()]);
    })
    .expect("the steps must encode and submit without validation errors");
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let reference: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    let err = rel_l2(got, &reference);
    assert!(
        err <= tol,
        "{what}: relative L2 error {err:.3e} above {tol:.0e}\n got {:?}\nwant {:?}",
        head(got),
        head(want)
    );
}

fn assert_exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits()) {
        panic!("{what}: element {i} is {} instead of {}", got[i], want[i]);
    }
}

fn head(v: &[f32]) -> &[f32] {
    &v[..v.len().min(8)]
}

const F32: f64 = Tol::F32.rel_l2;

fn all_activations(rng: &mut SplitMix64, channels: usize) -> Vec<Activation> {
    vec![
        Activation::None,
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Silu,
        Activation::Elu { alpha: rng.uniform(0.5, 1.5) },
        Activation::Gelu,
        Activation::ClippedRelu(ClipThreshold::PerLayer(rng.uniform(0.5, 2.0))),
        Activation::ClippedRelu(ClipThreshold::PerChannel((0..channels).map(|_| rng.uniform(0.2, 2.5)).collect())),
        Activation::ClippedSilu(ClipThreshold::PerLayer(rng.uniform(0.5, 2.0))),
        Activation::ClippedSilu(ClipThreshold::PerChannel((0..channels).map(|_| rng.uniform(0.2, 2.5)).collect())),
        Activation::LeakyRelu { alpha: rng.uniform(0.01, 0.3) },
        Activation::HardSigmoid { alpha: rng.uniform(0.1, 0.3), beta: rng.uniform(0.4, 0.6) },
        Activation::HardSwish,
        Activation::Clip { min: rng.uniform(-1.0, 0.0), max: rng.uniform(0.5, 6.0) },
    ]
}

// ---------------------------------------------------------------------------------------------
// Shader validation

#[test]
fn every_graph_op_module_validates_with_naga() {
    let modules = gops::modules();
    assert!(!modules.is_empty());
    for (name, src) in &modules {
        let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty());
        validator.validate(&module).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        let entries: Vec<&str> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
        let expected: &[&str] = match name.as_str() {
            "op_elementwise" => &["binary", "activation"],
            "op_gather" => &["gather"],
            "op_pool" => &["pool2d", "global_pool"],
            "op_resize" => &["resize"],
            "op_rows" => &["softmax_rows", "softmax_strided", "layer_norm"],
            "op_attention" => &["linear_attention", "softmax_attention"],
            n if n.starts_with("op_gemm_") => &["matmul", "conv2d", "conv2d_direct"],
            other => panic!("unexpected module {other}"),
        };
        for e in expected {
            assert!(entries.contains(e), "{name} lacks entry point {e}");
        }
    }
    // Every op_*.wgsl file is used by a module and listed in the shader table.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with("op_") && name.ends_with(".wgsl") {
            assert!(gops::SHADER_FILES.contains(&name.as_str()), "shaders/{name} is not in graph_ops::SHADER_FILES");
        }
    }
    for file in gops::SHADER_FILES {
        let (_, text) = shaders::ALL_FILES
            .iter()
            .find(|(n, _)| *n == file)
            .unwrap_or_else(|| panic!("{file} is not in the shader table"));
        assert!(modules.iter().any(|(_, src)| src.contains(text)), "{file} is in no module");
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise

/// A random shape and a broadcastable partner (dims set to 1, leading dims dropped).
fn broadcast_pair(rng: &mut SplitMix64) -> (Vec<usize>, Vec<usize>) {
    let rank = range(rng, 0, 6);
    let out: Vec<usize> = (0..rank).map(|_| range(rng, 1, 4)).collect();
    let mut thin = |full: &[usize]| -> Vec<usize> {
        let drop = range(rng, 0, full.len());
        full[drop..].iter().map(|&d| if rng.below(3) == 0 { 1 } else { d }).collect()
    };
    // Both thinned from one shape, so they always broadcast (to `out` or a suffix of it).
    let a = thin(&out);
    let b = thin(&out);
    (a, b)
}

#[test]
fn binary_with_broadcasting_matches_cpu() {
    let ctx = ctx();
    let mut rng = seeded("binary");
    let mut pairs: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![2, 3, 5, 7], vec![1, 3, 1, 1]),
        (vec![1, 3, 1, 1], vec![2, 3, 5, 7]),
        (vec![2, 3, 5, 7], vec![]),
        (vec![], vec![4, 5]),
        (vec![3, 1, 5], vec![4, 1]),
        (vec![2, 3, 4, 1, 3, 2], vec![3, 1, 5, 1, 2]),
        (vec![6, 7], vec![6, 7]),
        (vec![1], vec![]),
    ];
    pairs.extend((0..12).map(|_| broadcast_pair(&mut rng)));
    let ops = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];
    for (i, (sa, sb)) in pairs.iter().enumerate() {
        let out_shape = ops::broadcast_shape(sa, sb).unwrap();
        let n = ops::numel(&out_shape);
        let a = normals(&mut rng, ops::numel(sa), 1.0);
        // Divisors away from zero so the reference is well conditioned.
        let b: Vec<f32> =
            (0..ops::numel(sb)).map(|_| rng.uniform(0.5, 2.0) * if rng.below(2) == 0 { -1.0 } else { 1.0 }).collect();
        for (j, &op) in ops.iter().enumerate() {
            let mut want = vec![0f32; n];
            ops::binary(op, &a, sa, &b, sb, &mut want).unwrap();
            let (mut arena, mut consts) = (Arena::new(), Arena::new());
            let in_place = sa == &out_shape && j == 0;
            let a_off = if in_place {
                arena.inout(&mut rng, &a)
            } else if i % 3 == 1 {
                arena.put_unaligned(&mut rng, &a)
            } else {
                arena.put(&mut rng, &a)
            };
            // b in the arena (same buffer as a and y) or in the constants buffer.
            let b_in_arena = (i + j) % 2 == 0;
            let b_off = if b_in_arena { arena.put(&mut rng, &b) } else { consts.put(&mut rng, &b) };
            let y_off = if in_place { a_off } else { arena.output(&mut rng, n) };
            arena.upload(ctx);
            consts.upload(ctx);
            let b_buf = if b_in_arena { arena.buf() } else { consts.buf() };
            let steps = gops::binary(
                ctx,
                op,
                GpuView::new(arena.buf(), a_off, sa),
                GpuView::new(b_buf, b_off, sb),
                GpuView::new(arena.buf(), y_off, &out_shape),
            )
            .unwrap();
            run(ctx, &steps);
            let back = arena.read(ctx);
            assert_close(&format!("{op:?} {sa:?} x {sb:?}"), back.at(y_off, n), &want, F32);
        }
    }
}

#[test]
fn every_activation_matches_cpu() {
    let ctx = ctx();
    let mut rng = seeded("activation");
    for case in 0..3 {
        let rank = range(&mut rng, 2, 4);
        let shape: Vec<usize> = (0..rank).map(|_| range(&mut rng, 1, 7)).collect();
        let n = ops::numel(&shape);
        let x = normals(&mut rng, n, 3.0);
        for act in all_activations(&mut rng, shape[1]) {
            let mut want = vec![0f32; n];
            ops::activation(&x, &shape, &act, &mut want).unwrap();
            let mut arena = Arena::new();
            let in_place = case == 2;
            let x_off = if in_place { arena.inout(&mut rng, &x) } else { arena.put(&mut rng, &x) };
            let y_off = if in_place { x_off } else { arena.output(&mut rng, n) };
            let buf = arena.upload(ctx);
            let steps =
                gops::activation(ctx, GpuView::new(&buf, x_off, &shape), &act, GpuView::new(&buf, y_off, &shape))
                    .unwrap();
            run(ctx, &steps);
            let back = arena.read(ctx);
            assert_close(&format!("{act:?} on {shape:?}"), back.at(y_off, n), &want, F32);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Convolution

struct ConvCase {
    x_shape: Vec<usize>,
    w_shape: Vec<usize>,
    p: Conv2d,
    bias: bool,
}

/// Random conv geometry; `kind` picks the path: 0..3 implicit GEMM with many / some / few
/// output channels per group (the three tile shapes), 3 depthwise, 4 grouped with 1..3 output
/// channels per group (direct), 5 pointwise.
fn conv_case(rng: &mut SplitMix64, kind: usize) -> ConvCase {
    loop {
        let n = range(rng, 1, 2);
        let (group, cg, mg) = match kind {
            0 => (1, range(rng, 1, 9), range(rng, 33, 70)),
            1 => (range(rng, 1, 2), range(rng, 1, 6), range(rng, 17, 32)),
            2 => (range(rng, 1, 3), range(rng, 1, 6), range(rng, 4, 16)),
            3 => (range(rng, 1, 12), 1, 1),
            4 => (range(rng, 2, 4), range(rng, 1, 4), range(rng, 1, 3)),
            _ => (1, range(rng, 1, 20), range(rng, 4, 40)),
        };
        let (c, m) = (group * cg, group * mg);
        let (h, w) = (range(rng, 1, 12), range(rng, 1, 12));
        let (kh, kw) = if kind == 5 { (1, 1) } else { (range(rng, 1, 3), range(rng, 1, 3)) };
        let p = Conv2d {
            strides: if kind == 5 { [1, 1] } else { [range(rng, 1, 2), range(rng, 1, 2)] },
            pads: if kind == 5 {
                [0; 4]
            } else {
                [range(rng, 0, 2), range(rng, 0, 2), range(rng, 0, 2), range(rng, 0, 2)]
            },
            dilations: if kind == 5 { [1, 1] } else { [range(rng, 1, 2), range(rng, 1, 2)] },
            group,
            activation: Activation::None,
        };
        let x_shape = vec![n, c, h, w];
        let w_shape = vec![m, cg, kh, kw];
        if ops::conv2d_output_shape(&x_shape, &w_shape, &p).is_ok() {
            return ConvCase { x_shape, w_shape, p, bias: rng.below(4) != 0 };
        }
    }
}

#[test]
fn conv2d_matches_cpu_on_every_path() {
    let ctx = ctx();
    let mut rng = seeded("conv2d");
    for case in 0..18 {
        let kind = case % 6;
        let mut cc = conv_case(&mut rng, kind);
        let m = cc.w_shape[0];
        let acts = all_activations(&mut rng, m);
        // Cycle through every activation, per-channel thresholds included.
        cc.p.activation = acts[case % acts.len()].clone();
        let out = ops::conv2d_output_shape(&cc.x_shape, &cc.w_shape, &cc.p).unwrap();
        let n_out = ops::numel(&out);
        let x = normals(&mut rng, ops::numel(&cc.x_shape), 1.0);
        let w = normals(&mut rng, ops::numel(&cc.w_shape), 0.5);
        let bias = cc.bias.then(|| normals(&mut rng, m, 0.5));
        let mut want = vec![0f32; n_out];
        ops::conv2d(&x, &cc.x_shape, &w, &cc.w_shape, bias.as_deref(), &cc.p, &mut want).unwrap();

        // x and y in the arena, w and bias in the constants buffer; every third case puts x and
        // the bias in buffers of their own (three read-only buffers besides the output's).
        let (mut arena, mut consts, mut x_home, mut b_home) = (Arena::new(), Arena::new(), Arena::new(), Arena::new());
        let alone = case % 3 == 2;
        let x_off = if alone { x_home.put(&mut rng, &x) } else { arena.put(&mut rng, &x) };
        let w_off = consts.put(&mut rng, &w);
        let b_off = bias.as_ref().map(|b| if alone { b_home.put(&mut rng, b) } else { consts.put(&mut rng, b) });
        let y_off = arena.output(&mut rng, n_out);
        for a in [&mut arena, &mut consts, &mut x_home, &mut b_home] {
            a.upload(ctx);
        }
        let (x_buf, bias_buf) = if alone { (x_home.buf(), b_home.buf()) } else { (arena.buf(), consts.buf()) };
        let steps = gops::conv2d(
            ctx,
            GpuView::new(x_buf, x_off, &cc.x_shape),
            GpuView::new(consts.buf(), w_off, &cc.w_shape),
            b_off.map(|o| GpuView::new(bias_buf, o, std::slice::from_ref(&m))),
            &cc.p,
            GpuView::new(arena.buf(), y_off, &out),
        )
        .unwrap();
        run(ctx, &steps);
        let back = arena.read(ctx);
        let what = format!(
            "conv kind {kind}: x {:?} w {:?} {:?} bias {} -> {out:?} ({})",
            cc.x_shape,
            cc.w_shape,
            cc.p,
            cc.bias,
            steps[0].name()
        );
        assert_close(&what, back.at(y_off, n_out), &want, F32);
    }
}

// ---------------------------------------------------------------------------------------------
// Pooling and resize

fn pool_case(rng: &mut SplitMix64) -> (Vec<usize>, Pool2d) {
    loop {
        let shape = vec![range(rng, 1, 2), range(rng, 1, 4), range(rng, 1, 11), range(rng, 1, 11)];
        let kernel = [range(rng, 1, 4), range(rng, 1, 4)];
        let dilations = [range(rng, 1, 2), range(rng, 1, 2)];
        let span = |a: usize| dilations[a] * (kernel[a] - 1) + 1;
        let p = Pool2d {
            kernel,
            strides: [range(rng, 1, 3), range(rng, 1, 3)],
            pads: [
                range(rng, 0, span(0) - 1),
                range(rng, 0, span(1) - 1),
                range(rng, 0, span(0) - 1),
                range(rng, 0, span(1) - 1),
            ],
            dilations,
            ceil_mode: rng.below(2) == 0,
            count_include_pad: rng.below(2) == 0,
        };
        if ops::pool2d_output_shape(&shape, &p).is_ok() {
            return (shape, p);
        }
    }
}

#[test]
fn pooling_matches_cpu() {
    let ctx = ctx();
    let mut rng = seeded("pool");
    for case in 0..16 {
        let (shape, p) = pool_case(&mut rng);
        let out = ops::pool2d_output_shape(&shape, &p).unwrap();
        let n = ops::numel(&out);
        let x = normals(&mut rng, ops::numel(&shape), 1.0);
        let is_max = case % 2 == 0;
        let mut want = vec![0f32; n];
        if is_max {
            ops::max_pool2d(&x, &shape, &p, &mut want).unwrap();
        } else {
            ops::avg_pool2d(&x, &shape, &p, &mut want).unwrap();
        }
        let mut arena = Arena::new();
        let x_off = arena.put(&mut rng, &x);
        let y_off = arena.output(&mut rng, n);
        let buf = arena.upload(ctx);
        let (xv, yv) = (GpuView::new(&buf, x_off, &shape), GpuView::new(&buf, y_off, &out));
        let steps = if is_max { gops::max_pool2d(ctx, xv, &p, yv) } else { gops::avg_pool2d(ctx, xv, &p, yv) }.unwrap();
        run(ctx, &steps);
        let back = arena.read(ctx);
        let what = format!("{} {shape:?} {p:?}", if is_max { "max" } else { "avg" });
        if is_max {
            assert_exact(&what, back.at(y_off, n), &want);
        } else {
            assert_close(&what, back.at(y_off, n), &want, F32);
        }
    }
    // Global pooling, including planes longer than a workgroup.
    for shape in [vec![2, 3, 5, 7], vec![1, 4, 23, 19], vec![3, 2, 300], vec![1, 1, 1, 1]] {
        let planes = shape[0] * shape[1];
        let x = normals(&mut rng, ops::numel(&shape), 1.0);
        for is_max in [false, true] {
            let mut want = vec![0f32; planes];
            if is_max {
                ops::global_max_pool(&x, &shape, &mut want).unwrap();
            } else {
                ops::global_avg_pool(&x, &shape, &mut want).unwrap();
            }
            let mut arena = Arena::new();
            let x_off = arena.put(&mut rng, &x);
            let y_off = arena.output(&mut rng, planes);
            let buf = arena.upload(ctx);
            let out_shape = [shape[0], shape[1], 1, 1];
            let (xv, yv) = (GpuView::new(&buf, x_off, &shape), GpuView::new(&buf, y_off, &out_shape));
            let steps =
                if is_max { gops::global_max_pool(ctx, xv, yv) } else { gops::global_avg_pool(ctx, xv, yv) }.unwrap();
            run(ctx, &steps);
            let back = arena.read(ctx);
            assert_close(&format!("global (max {is_max}) {shape:?}"), back.at(y_off, planes), &want, F32);
        }
    }
}

#[test]
fn resize_matches_cpu_in_every_mode() {
    let ctx = ctx();
    let mut rng = seeded("resize");
    let coords = [
        CoordTransform::HalfPixel,
        CoordTransform::Asymmetric,
        CoordTransform::AlignCorners,
        CoordTransform::PytorchHalfPixel,
    ];
    let nearest = [NearestMode::RoundPreferFloor, NearestMode::RoundPreferCeil, NearestMode::Floor, NearestMode::Ceil];
    let mut configs = Vec::new();
    for &coord in &coords {
        for &nm in &nearest {
            configs.push((ResizeMode::Nearest, coord, nm));
        }
        configs.push((ResizeMode::Linear, coord, NearestMode::RoundPreferFloor));
    }
    for (i, &(mode, coord, nm)) in configs.iter().enumerate() {
        let shape = vec![range(&mut rng, 1, 2), range(&mut rng, 1, 3), range(&mut rng, 1, 9), range(&mut rng, 1, 9)];
        // Integer upsampling (the YOLO neck), arbitrary sizes, and given non-integer scales.
        let (out, scales) = match i % 3 {
            0 => (vec![shape[0], shape[1], shape[2] * 2, shape[3] * 2], None),
            1 => (vec![shape[0], shape[1], range(&mut rng, 1, 17), range(&mut rng, 1, 17)], None),
            _ => {
                let s = [rng.uniform(0.4, 3.0), rng.uniform(0.4, 3.0)];
                let oh = ((shape[2] as f32 * s[0]).floor() as usize).max(1);
                let ow = ((shape[3] as f32 * s[1]).floor() as usize).max(1);
                (vec![shape[0], shape[1], oh, ow], Some(s))
            }
        };
        let p = Resize { mode, coord, nearest: nm, scales };
        let n = ops::numel(&out);
        let x = normals(&mut rng, ops::numel(&shape), 1.0);
        let mut want = vec![0f32; n];
        ops::resize(&x, &shape, &out, &p, &mut want).unwrap();
        let mut arena = Arena::new();
        let x_off = arena.put(&mut rng, &x);
        let y_off = arena.output(&mut rng, n);
        let buf = arena.upload(ctx);
        let steps = gops::resize(ctx, GpuView::new(&buf, x_off, &shape), &p, GpuView::new(&buf, y_off, &out)).unwrap();
        run(ctx, &steps);
        let back = arena.read(ctx);
        let what = format!("resize {shape:?} -> {out:?} {p:?}");
        if mode == ResizeMode::Nearest {
            assert_exact(&what, back.at(y_off, n), &want);
        } else {
            assert_close(&what, back.at(y_off, n), &want, F32);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data movement

fn random_shape(rng: &mut SplitMix64, rank: usize, max: usize) -> Vec<usize> {
    (0..rank).map(|_| range(rng, 1, max)).collect()
}

#[test]
fn concat_and_split_match_cpu() {
    let ctx = ctx();
    let mut rng = seeded("concat/split");
    for case in 0..10 {
        let rank = range(&mut rng, 1, 4);
        let base = random_shape(&mut rng, rank, 5);
        let axis = range(&mut rng, 0, rank - 1);
        // Negative axes half of the time; one empty part now and then.
        let onnx_axis = if case % 2 == 0 { axis as i64 } else { axis as i64 - rank as i64 };
        let parts = range(&mut rng, 1, 4);
        let shapes: Vec<Vec<usize>> = (0..parts)
            .map(|i| {
                let mut s = base.clone();
                s[axis] = if case % 4 == 3 && i == 1 { 0 } else { range(&mut rng, 1, 4) };
                s
            })
            .collect();
        let datas: Vec<Vec<f32>> = shapes.iter().map(|s| normals(&mut rng, ops::numel(s), 1.0)).collect();
        let mut out_shape = base.clone();
        out_shape[axis] = shapes.iter().map(|s| s[axis]).sum();
        let n = ops::numel(&out_shape);
        let inputs: Vec<(&[f32], &[usize])> =
            datas.iter().zip(&shapes).map(|(d, s)| (d.as_slice(), s.as_slice())).collect();
        let mut want = vec![0f32; n];
        ops::concat(&inputs, onnx_axis, &mut want).unwrap();

        // Concat: inputs in the arena, one in the constants buffer.
        let (mut arena, mut consts) = (Arena::new(), Arena::new());
        let offs: Vec<(bool, u64)> = datas
            .iter()
            .enumerate()
            .map(|(i, d)| if i == 1 { (false, consts.put(&mut rng, d)) } else { (true, arena.put(&mut rng, d)) })
            .collect();
        let y_off = arena.output(&mut rng, n);
        arena.upload(ctx);
        consts.upload(ctx);
        let views: Vec<GpuView> = offs
            .iter()
            .zip(&shapes)
            .map(|(&(in_arena, off), s)| GpuView::new(if in_arena { arena.buf() } else { consts.buf() }, off, s))
            .collect();
        let steps = gops::concat(ctx, &views, onnx_axis, GpuView::new(arena.buf(), y_off, &out_shape)).unwrap();
        run(ctx, &steps);
        let back = arena.read(ctx);
        assert_exact(&format!("concat {shapes:?} axis {onnx_axis}"), back.at(y_off, n), &want);

        // Split the concatenation back into the parts.
        let sizes: Vec<usize> = shapes.iter().map(|s| s[axis]).collect();
        let mut parts_want: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0f32; ops::numel(s)]).collect();
        {
            let mut outs: Vec<&mut [f32]> = parts_want.iter_mut().map(|v| v.as_mut_slice()).collect();
            ops::split(&want, &out_shape, onnx_axis, &sizes, &mut outs).unwrap();
        }
        let mut arena = Arena::new();
        let x_off = arena.put(&mut rng, &want);
        let outs: Vec<u64> = shapes.iter().map(|s| arena.output(&mut rng, ops::numel(s))).collect();
        let buf = arena.upload(ctx);
        let views: Vec<GpuView> = outs.iter().zip(&shapes).map(|(&o, s)| GpuView::new(&buf, o, s)).collect();
        let steps = gops::split(ctx, GpuView::new(&buf, x_off, &out_shape), onnx_axis, &views).unwrap();
        run(ctx, &steps);
        let back = arena.read(ctx);
        for (i, (o, s)) in outs.iter().zip(&shapes).enumerate() {
            assert_exact(&format!("split part {i} {s:?}"), back.at(*o, ops::numel(s)), &parts_want[i]);
            assert_exact(&format!("split part {i} is the input part"), &parts_want[i], &datas[i]);
        }
    }
}

#[test]
fn slice_matches_cpu_with_negative_steps_and_clamping() {
    let ctx = ctx();
    let mut rng = seeded("slice");
    let mut done = 0;
    while done < 16 {
        let rank = range(&mut rng, 1, 4);
        let shape = random_shape(&mut rng, rank, 6);
        let count = range(&mut rng, 1, rank);
        let mut axes: Vec<i64> = (0..rank as i64).collect();
        // A random subset of axes in random order, some written negative.
        for i in (1..axes.len()).rev() {
            axes.swap(i, rng.below(i as u64 + 1) as usize);
        }
        axes.truncate(count);
        let axes: Vec<i64> = axes.into_iter().map(|a| if rng.below(2) == 0 { a - rank as i64 } else { a }).collect();
        let bound = |rng: &mut SplitMix64, dim: i64| match rng.below(8) {
            0 => i64::MAX,
            1 => i64::MIN,
            _ => rng.below((2 * dim + 5) as u64) as i64 - dim - 2,
        };
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        let mut steps = Vec::new();
        for &a in &axes {
            let dim = shape[a.rem_euclid(rank as i64) as usize] as i64;
            starts.push(bound(&mut rng, dim));
            ends.push(bound(&mut rng, dim));
            let s = range(&mut rng, 1, 3) as i64;
            steps.push(if rng.below(2) == 0 { -s } else { s });
        }
        let use_axes = rng.below(4) != 0 || axes.iter().enumerate().any(|(i, &a)| a != i as i64);
        let (ax, st) = (use_axes.then_some(axes.as_slice()), Some(steps.as_slice()));
        let Ok(out) = ops::slice_output_shape(&shape, &starts, &ends, ax, st) else { continue };
        let n = ops::numel(&out);
        if n == 0 {
            continue;
        }
        let x = normals(&mut rng, ops::numel(&shape), 1.0);
        let mut want = vec![0f32; n];
        ops::slice(&x, &shape, &starts, &ends, ax, st, &mut want).unwrap();
        let mut arena = Arena::new();
        let x_off = arena.put(&mut rng, &x);
        let y_off = arena.output(&mut rng, n);
        let buf = arena.upload(ctx);
        let gsteps = gops::slice(
            ctx,
            GpuView::new(&buf, x_off, &shape),
            &starts,
            &ends,
            ax,
            st,
            GpuView::new(&buf, y_off, &out),
        )
        .unwrap();
        run(ctx, &gsteps);
        let back = arena.read(ctx);
        assert_exact(
            &format!("slice {shape:?} starts {starts:?} ends {ends:?} axes {ax:?} steps {st:?}"),
            back.at(y_off, n),
            &want,
        );
        done += 1;
    }
}

#[test]
fn transpose_and_copy_match_cpu() {
    let ctx = ctx();
    let mut rng = seeded("transpose");
    for case in 0..10 {
        let rank = range(&mut rng, 1, 6);
        let shape = random_shape(&mut rng, rank, 4);
        let mut perm: Vec<usize> = (0..rank).collect();
        for i in (1..rank).rev() {
            perm.swap(i, rng.below(i as u64 + 1) as usize);
        }
        if case == 0 {
            perm = (0..rank).rev().collect();
        }
        let n = ops::numel(&shape);
        let x = normals(&mut rng, n, 1.0);
        let mut want = vec![0f32; n];
        ops::transpose(&x, &shape, &perm, &mut want).unwrap();
        let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let mut arena = Arena::new();
        let x_off = arena.put(&mut rng, &x);
        let y_off = arena.output(&mut rng, n);
        let c_off = arena.output(&mut rng, n);
        let buf = arena.upload(ctx);
        let mut steps =
            gops::transpose(ctx, GpuView::new(&buf, x_off, &shape), &perm, GpuView::new(&buf, y_off, &out)).unwrap();
        // A reshape copy of the transposed tensor, recorded in the same pass after it.
        let flat = [n];
        steps.extend(gops::copy(ctx, GpuView::new(&buf, y_off, &out), GpuView::new(&buf, c_off, &flat)).unwrap());
        run(ctx, &steps);
        let back = arena.read(ctx);
        assert_exact(&format!("transpose {shape:?} by {perm:?}"), back.at(y_off, n), &want);
        assert_exact("copy", back.at(c_off, n), &want);
        assert!(gops::copy(ctx, GpuView::new(&buf, x_off, &shape), GpuView::new(&buf, x_off, &flat))
            .unwrap()
            .is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Rows: softmax, layer norm

#[test]
fn softmax_matches_cpu_on_every_axis() {
    let ctx = ctx();
    let mut rng = seeded("softmax");
    let mut shapes = vec![vec![3, 300], vec![2, 5, 7], vec![1, 84, 40], vec![4, 3, 2, 5]];
    shapes.extend((0..4).map(|_| {
        let rank = range(&mut rng, 1, 4);
        random_shape(&mut rng, rank, 9)
    }));
    for (i, shape) in shapes.iter().enumerate() {
        let rank = shape.len();
        let n = ops::numel(shape);
        let x = normals(&mut rng, n, 3.0);
        for axis in 0..rank {
            let onnx_axis = if (i + axis) % 2 == 0 { axis as i64 } else { axis as i64 - rank as i64 };
            let mut want = vec![0f32; n];
            ops::softmax(&x, shape, onnx_axis, &mut want).unwrap();
            let mut arena = Arena::new();
            let in_place = axis == rank - 1 && i % 2 == 1;
            let x_off = if in_place { arena.inout(&mut rng, &x) } else { arena.put(&mut rng, &x) };
            let y_off = if in_place { x_off } else { arena.output(&mut rng, n) };
            let buf = arena.upload(ctx);
            let steps =
                gops::softmax(ctx, GpuView::new(&buf, x_off, shape), onnx_axis, GpuView::new(&buf, y_off, shape))
                    .unwrap();
            run(ctx, &steps);
            let back = arena.read(ctx);
            // The device's exp differs from the twin's Cephes polynomial by a few ulp, and the
            // sums run in another order: both are ~1e-7 relative, well inside Tol::F32.
            assert_close(&format!("softmax {shape:?} axis {onnx_axis}"), back.at(y_off, n), &want, F32);
        }
    }
}

#[test]
fn layer_norm_matches_cpu() {
    let ctx = ctx();
    let mut rng = seeded("layer_norm");
    for case in 0..8 {
        let rank = range(&mut rng, 1, 4);
        let mut shape = random_shape(&mut rng, rank, 7);
        if case == 0 {
            shape = vec![3, 700];
        }
        let rank = shape.len();
        let axis = range(&mut rng, 0, rank - 1);
        let onnx_axis = if case % 2 == 0 { axis as i64 } else { axis as i64 - rank as i64 };
        let len = ops::numel(&shape[axis..]);
        let n = ops::numel(&shape);
        let x: Vec<f32> = normals(&mut rng, n, 2.0).into_iter().map(|v| v + 1.5).collect();
        let scale = normals(&mut rng, len, 1.0);
        let bias = (case % 3 != 0).then(|| normals(&mut rng, len, 1.0));
        let eps = 1e-5;
        let mut want = vec![0f32; n];
        ops::layer_norm(&x, &shape, onnx_axis, &scale, bias.as_deref(), eps, &mut want).unwrap();
        let (mut arena, mut consts) = (Arena::new(), Arena::new());
        let x_off = arena.put(&mut rng, &x);
        let s_off = consts.put(&mut rng, &scale);
        let b_off = bias.as_ref().map(|b| consts.put(&mut rng, b));
        let y_off = arena.output(&mut rng, n);
        arena.upload(ctx);
        consts.upload(ctx);
        let norm_shape = &shape[axis..];
        let steps = gops::layer_norm(
            ctx,
            GpuView::new(arena.buf(), x_off, &shape),
            onnx_axis,
            GpuView::new(consts.buf(), s_off, norm_shape),
            b_off.map(|o| GpuView::new(consts.buf(), o, norm_shape)),
            eps,
            GpuView::new(arena.buf(), y_off, &shape),
        )
        .unwrap();
        run(ctx, &steps);
        let back = arena.read(ctx);
        assert_close(&format!("layer_norm {shape:?} axis {onnx_axis}"), back.at(y_off, n), &want, F32);
    }
}

// ---------------------------------------------------------------------------------------------
// MatMul and linear

#[test]
fn matmul_with_batch_broadcasting_matches_cpu() {
    let ctx = ctx();
    let mut rng = seeded("matmul");
    let mut pairs: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![5, 7], vec![7, 3]),
        (vec![70, 33], vec![33, 70]),
        (vec![2, 1, 20, 9], vec![3, 9, 130]),
        (vec![9], vec![9, 4]),
        (vec![4, 2, 9], vec![9]),
        (vec![11], vec![11]),
        (vec![1, 17, 40], vec![2, 40, 5]),
        (vec![16, 9], vec![9, 200]),
        (vec![30, 9], vec![9, 200]),
        (vec![64, 20], vec![20, 64]),
    ];
    for _ in 0..5 {
        let (m, k, n) = (range(&mut rng, 1, 70), range(&mut rng, 1, 40), range(&mut rng, 1, 140));
        let batch_rank = range(&mut rng, 0, 3);
        let batch = random_shape(&mut rng, batch_rank, 3);
        let mut a = batch.clone();
        let mut b: Vec<usize> = batch.iter().map(|&d| if rng.below(2) == 0 { 1 } else { d }).collect();
        b.drain(..range(&mut rng, 0, b.len()));
        a.extend([m, k]);
        b.extend([k, n]);
        pairs.push((a, b));
    }
    // Every tile shape the GEMM is compiled for runs at least once.
    let rows_cols = |sa: &[usize], sb: &[usize]| {
        let m = if sa.len() == 1 { 1 } else { sa[sa.len() - 2] };
        (m, if sb.len() == 1 { 1 } else { sb[sb.len() - 1] })
    };
    for t in gops::GEMM_TILES {
        assert!(
            pairs.iter().any(|(sa, sb)| {
                let (m, n) = rows_cols(sa, sb);
                gops::GemmTile::choose(m, n) == t
            }),
            "no matmul case uses the {t:?} tile"
        );
    }
    for (i, (sa, sb)) in pairs.iter().enumerate() {
        let out = ops::matmul_output_shape(sa, sb).unwrap();
        let n = ops::numel(&out);
        let a = normals(&mut rng, ops::numel(sa), 1.0);
        let b = normals(&mut rng, ops::numel(sb), 1.0);
        let mut want = vec![0f32; n];
        ops::matmul(&a, sa, &b, sb, &mut want).unwrap();
        let (mut arena, mut consts) = (Arena::new(), Arena::new());
        let a_off = arena.put(&mut rng, &a);
        let b_const = i % 2 == 1;
        let b_off = if b_const { consts.put(&mut rng, &b) } else { arena.put(&mut rng, &b) };
        let y_off = arena.output(&mut rng, n);
        arena.upload(ctx);
        consts.upload(ctx);
        let b_buf = if b_const { consts.buf() } else { arena.buf() };
        let steps = gops::matmul(
            ctx,
            GpuView::new(arena.buf(), a_off, sa),
            GpuView::new(b_buf, b_off, sb),
            GpuView::new(arena.buf(), y_off, &out),
        )
        .unwrap();
        run(ctx, &steps);
        let back = arena.read(ctx);
        assert_close(&format!("matmul {sa:?} x {sb:?}"), back.at(y_off, n), &want, F32);
    }
}

#[test]
fn linear_matches_cpu() {
    let ctx = ctx();
    let mut rng = seeded("linear");
    for case in 0..6 {
        let k = range(&mut rng, 1, 50);
        let nf = range(&mut rng, 1, 90);
        let lead = range(&mut rng, 0, 2);
        let mut x_shape = random_shape(&mut rng, lead, 5);
        x_shape.push(k);
        if case == 0 {
            x_shape = vec![1, k];
        }
        let m = ops::numel(&x_shape) / k;
        let w_shape = [nf, k];
        let x = normals(&mut rng, m * k, 1.0);
        let w = normals(&mut rng, nf * k, 0.3);
        let bias = (case % 2 == 0).then(|| normals(&mut rng, nf, 1.0));
        let mut want = vec![0f32; m * nf];
        ops::linear(&x, &x_shape, &w, &w_shape, bias.as_deref(), &mut want).unwrap();
        let (mut arena, mut consts) = (Arena::new(), Arena::new());
        let x_off = arena.put(&mut rng, &x);
        let w_off = consts.put(&mut rng, &w);
        let b_off = bias.as_ref().map(|b| consts.put(&mut rng, b));
        let y_off = arena.output(&mut rng, m * nf);
        arena.upload(ctx);
        consts.upload(ctx);
        let mut y_shape = x_shape.clone();
        *y_shape.last_mut().unwrap() = nf;
        let nfs = [nf];
        let steps = gops::linear(
            ctx,
            GpuView::new(arena.buf(), x_off, &x_shape),
            GpuView::new(consts.buf(), w_off, &w_shape),
            b_off.map(|o| GpuView::new(consts.buf(), o, &nfs)),
            GpuView::new(arena.buf(), y_off, &y_shape),
        )
        .unwrap();
        run(ctx, &steps);
        let back = arena.read(ctx);
        assert_close(&format!("linear {x_shape:?} x {w_shape:?}"), back.at(y_off, m * nf), &want, F32);
    }
}

// ---------------------------------------------------------------------------------------------
// A small graph in one pass, and errors

/// conv + SiLU -> add a per-channel bias -> 2x nearest upsample -> concat with the conv output
/// resized -> softmax over channels: five ops recorded into one compute pass, as the executor
/// records a whole model, each reading what the one before wrote.
#[test]
fn a_chain_of_ops_in_one_pass_matches_cpu() {
    let ctx = ctx();
    let mut rng = seeded("chain");
    let (c, m, h, w) = (3, 8, 6, 5);
    let x_shape = [1, c, h, w];
    let w_shape = [m, c, 3, 3];
    let p = Conv2d { pads: [1; 4], activation: Activation::Silu, ..Conv2d::default() };
    let x = normals(&mut rng, ops::numel(&x_shape), 1.0);
    let wt = normals(&mut rng, ops::numel(&w_shape), 0.3);
    let cb = normals(&mut rng, m, 1.0);
    let y1_shape = [1, m, h, w];
    let cb_shape = [1, m, 1, 1];
    let up_shape = [1, m, 2 * h, 2 * w];
    let cat_shape = [1, 2 * m, 2 * h, 2 * w];
    let resize = Resize::default();
    // CPU
    let mut y1 = vec![0f32; ops::numel(&y1_shape)];
    ops::conv2d(&x, &x_shape, &wt, &w_shape, None, &p, &mut y1).unwrap();
    let mut y2 = vec![0f32; y1.len()];
    ops::binary(BinaryOp::Add, &y1, &y1_shape, &cb, &cb_shape, &mut y2).unwrap();
    let mut up2 = vec![0f32; ops::numel(&up_shape)];
    ops::resize(&y2, &y1_shape, &up_shape, &resize, &mut up2).unwrap();
    let mut up1 = vec![0f32; up2.len()];
    ops::resize(&y1, &y1_shape, &up_shape, &resize, &mut up1).unwrap();
    let mut cat = vec![0f32; ops::numel(&cat_shape)];
    ops::concat(&[(&up2, &up_shape), (&up1, &up_shape)], 1, &mut cat).unwrap();
    let mut want = vec![0f32; cat.len()];
    ops::softmax(&cat, &cat_shape, 1, &mut want).unwrap();
    // GPU
    let (mut arena, mut consts) = (Arena::new(), Arena::new());
    let x_off = arena.put(&mut rng, &x);
    let w_off = consts.put(&mut rng, &wt);
    let cb_off = consts.put(&mut rng, &cb);
    let o1 = arena.output(&mut rng, y1.len());
    let o2 = arena.output(&mut rng, y2.len());
    let ou2 = arena.output(&mut rng, up2.len());
    let ou1 = arena.output(&mut rng, up1.len());
    let ocat = arena.output(&mut rng, cat.len());
    arena.upload(ctx);
    consts.upload(ctx);
    let (a, k) = (arena.buf(), consts.buf());
    let mut steps = Vec::new();
    steps.extend(
        gops::conv2d(
            ctx,
            GpuView::new(a, x_off, &x_shape),
            GpuView::new(k, w_off, &w_shape),
            None,
            &p,
            GpuView::new(a, o1, &y1_shape),
        )
        .unwrap(),
    );
    steps.extend(
        gops::binary(
            ctx,
            BinaryOp::Add,
            GpuView::new(a, o1, &y1_shape),
            GpuView::new(k, cb_off, &cb_shape),
            GpuView::new(a, o2, &y1_shape),
        )
        .unwrap(),
    );
    steps.extend(gops::resize(ctx, GpuView::new(a, o2, &y1_shape), &resize, GpuView::new(a, ou2, &up_shape)).unwrap());
    steps.extend(gops::resize(ctx, GpuView::new(a, o1, &y1_shape), &resize, GpuView::new(a, ou1, &up_shape)).unwrap());
    steps.extend(
        gops::concat(
            ctx,
            &[GpuView::new(a, ou2, &up_shape), GpuView::new(a, ou1, &up_shape)],
            1,
            GpuView::new(a, ocat, &cat_shape),
        )
        .unwrap(),
    );
    // Softmax in place on the concatenation.
    steps.extend(gops::softmax(ctx, GpuView::new(a, ocat, &cat_shape), 1, GpuView::new(a, ocat, &cat_shape)).unwrap());
    run(ctx, &steps);
    let back = arena.read(ctx);
    assert_close("conv output", back.at(o1, y1.len()), &y1, F32);
    assert_close("chain output", back.at(ocat, want.len()), &want, F32);
}

#[test]
fn bad_shapes_and_views_are_typed_errors() {
    let ctx = ctx();
    let buf = ctx.storage_buffer("errors", &[0u8; 4096]).unwrap();
    let v = |offset: u64, shape: &'static [usize]| GpuView::new(&buf, offset, shape);
    let shape_err = |r: kestrel::Result<Vec<GpuStep>>| matches!(r, Err(Error::ShapeMismatch { .. }));
    let arg_err = |r: kestrel::Result<Vec<GpuStep>>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(shape_err(gops::binary(ctx, BinaryOp::Add, v(0, &[2, 3]), v(256, &[4]), v(512, &[2, 3]))));
    assert!(shape_err(gops::binary(ctx, BinaryOp::Add, v(0, &[2, 3]), v(256, &[3]), v(512, &[7]))));
    // A view past the end of its buffer, and one at an offset that is not a multiple of 4.
    assert!(shape_err(gops::activation(ctx, v(4000, &[100]), &Activation::Relu, v(0, &[100]))));
    assert!(arg_err(gops::activation(ctx, v(2, &[10]), &Activation::Relu, v(256, &[10]))));
    let per_channel = Activation::ClippedRelu(ClipThreshold::PerChannel(vec![1.0; 3]));
    assert!(shape_err(gops::activation(ctx, v(0, &[1, 4, 2]), &per_channel, v(256, &[1, 4, 2]))));
    assert!(arg_err(gops::activation(ctx, v(0, &[4]), &Activation::Clip { min: 1.0, max: 0.0 }, v(256, &[4]))));
    let p = Conv2d::default();
    assert!(shape_err(gops::conv2d(ctx, v(0, &[1, 3, 4, 4]), v(256, &[2, 3, 3, 3]), None, &p, v(1024, &[1, 2, 3, 3]))));
    assert!(shape_err(gops::conv2d(ctx, v(0, &[1, 3, 4, 4]), v(256, &[2, 2, 3, 3]), None, &p, v(1024, &[1, 2, 2, 2]))));
    assert!(shape_err(gops::conv2d(
        ctx,
        v(0, &[1, 3, 4, 4]),
        v(256, &[2, 3, 3, 3]),
        Some(v(768, &[3])),
        &p,
        v(1024, &[1, 2, 2, 2])
    )));
    assert!(arg_err(gops::softmax(ctx, v(0, &[2, 3]), 2, v(256, &[2, 3]))));
    assert!(shape_err(gops::concat(ctx, &[v(0, &[2, 3]), v(256, &[3, 3])], 1, v(512, &[2, 6]))));
    assert!(shape_err(gops::split(ctx, v(0, &[2, 6]), 1, &[v(256, &[2, 2]), v(512, &[2, 3])])));
    assert!(arg_err(gops::transpose(ctx, v(0, &[2, 3]), &[0, 0], v(256, &[2, 3]))));
    assert!(shape_err(gops::matmul(ctx, v(0, &[2, 3]), v(256, &[4, 5]), v(512, &[2, 5]))));
    assert!(shape_err(gops::linear(ctx, v(0, &[2, 3]), v(256, &[5, 4]), None, v(512, &[2, 5]))));
    assert!(shape_err(gops::layer_norm(ctx, v(0, &[2, 3]), -1, v(256, &[2]), None, 1e-5, v(512, &[2, 3]))));
    assert!(shape_err(gops::resize(ctx, v(0, &[1, 2, 3, 3]), &Resize::default(), v(256, &[1, 3, 6, 6]))));
    assert!(shape_err(gops::global_avg_pool(ctx, v(0, &[1, 2, 3, 3]), v(256, &[1, 3, 1, 1]))));
    assert!(shape_err(gops::max_pool2d(ctx, v(0, &[1, 2, 4, 4]), &Pool2d::square(2), v(256, &[1, 2, 3, 3]))));
    assert!(arg_err(gops::slice(ctx, v(0, &[4]), &[0], &[4], None, Some(&[0]), v(256, &[4]))));
    // Empty outputs need no dispatch.
    assert!(gops::binary(ctx, BinaryOp::Mul, v(0, &[0, 3]), v(256, &[3]), v(512, &[0, 3])).unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Attention: CARE linear attention and softmax attention

#[test]
fn attention_matches_cpu() {
    let ctx = ctx();
    let mut rng = seeded("attention");
    for &(b, h, n, d, dv) in &[(1, 1, 1, 1, 1), (1, 2, 37, 8, 5), (2, 3, 64, 16, 16), (1, 1, 300, 32, 24)] {
        let (qs, vs) = ([b, h, n, d], [b, h, n, dv]);
        let (q, k) = (normals(&mut rng, b * h * n * d, 1.0), normals(&mut rng, b * h * n * d, 1.0));
        let v = normals(&mut rng, b * h * n * dv, 1.0);
        let len = b * h * n * dv;
        let scale = 1.0 / (d as f32).sqrt();
        for softmax in [false, true] {
            let mut want = vec![0f32; len];
            if softmax {
                ops::softmax_attention(&q, &qs, &k, &qs, &v, &vs, scale, &mut want).unwrap();
            } else {
                ops::linear_attention(&q, &qs, &k, &qs, &v, &vs, &mut want).unwrap();
            }
            let mut arena = Arena::new();
            let (q_off, k_off, v_off) = (arena.put(&mut rng, &q), arena.put(&mut rng, &k), arena.put(&mut rng, &v));
            let y_off = arena.output(&mut rng, len);
            let buf = arena.upload(ctx);
            let (qv, kv, vv, yv) = (
                GpuView::new(&buf, q_off, &qs),
                GpuView::new(&buf, k_off, &qs),
                GpuView::new(&buf, v_off, &vs),
                GpuView::new(&buf, y_off, &vs),
            );
            let steps = if softmax {
                gops::softmax_attention(ctx, qv, kv, vv, scale, yv).unwrap()
            } else {
                gops::linear_attention(ctx, qv, kv, vv, yv).unwrap()
            };
            run(ctx, &steps);
            let back = arena.read(ctx);
            let what = if softmax { "softmax" } else { "linear" };
            assert_close(&format!("{what} attention {qs:?} {vs:?}"), back.at(y_off, len), &want, F32);
        }
    }
    // Heads too wide for the linear kernel's workgroup memory are refused by name.
    let mut arena = Arena::new();
    let off = arena.output(&mut rng, 100 * 100);
    let buf = arena.upload(ctx);
    let wide = [1, 1, 1, 100];
    let view = || GpuView::new(&buf, off, &wide);
    let e = gops::linear_attention(ctx, view(), view(), view(), view()).unwrap_err().to_string();
    assert!(e.contains("D x (Dv + 1)"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Delta convolution: the GPU state against its CPU twin, frame by frame
// ---------------------------------------------------------------------------------------------

#[test]
fn delta_conv_on_the_gpu_follows_its_cpu_twin() {
    use kestrel::backend::gpu::GpuDeltaConv2d;
    use kestrel::ops::DeltaConv2d;
    let ctx = ctx();
    let mut rng = seeded("delta_conv_on_the_gpu_follows_its_cpu_twin");
    let conv = |strides, pads, group, activation| Conv2d { strides, pads, group, activation, ..Conv2d::default() };
    let cases = [
        ([1, 4, 12, 10], [6, 4, 3, 3], conv([1, 1], [1; 4], 1, Activation::Silu)),
        ([2, 6, 9, 9], [6, 2, 3, 3], conv([2, 2], [1, 0, 2, 1], 3, Activation::Relu)),
        ([1, 8, 7, 7], [8, 1, 3, 3], conv([1, 1], [1; 4], 8, Activation::None)),
        ([1, 5, 8, 8], [7, 5, 1, 1], conv([1, 1], [0; 4], 1, Activation::Sigmoid)),
    ];
    for (xs, ws, p) in cases {
        let w = normals(&mut rng, ws.iter().product(), 0.5);
        let b = normals(&mut rng, ws[0], 0.5);
        let mut x = normals(&mut rng, xs.iter().product(), 1.0);
        // One theta for every channel, and one per channel.
        let per_channel: Vec<f32> = (0..xs[1]).map(|_| rng.uniform(0.02, 0.2)).collect();
        for theta in [vec![0.0f32], vec![0.1], per_channel] {
            let what = format!("x {xs:?} w {ws:?} theta {theta:?}");
            let mut cpu = DeltaConv2d::new(&xs, &w, &ws, Some(&b), &p, 0.0).unwrap();
            cpu.set_thetas(&theta).unwrap();
            // The twin of the GPU's delta step is the CPU's delta step, not its dense fallback.
            cpu.set_cost_model(false);
            let gpu = GpuDeltaConv2d::new(ctx, &xs, &w, &ws, Some(&b), &p, &theta).unwrap();
            let mut got = vec![0f32; cpu.output().len()];
            cpu.keyframe(&x).unwrap();
            gpu.keyframe(ctx, &x).unwrap();
            gpu.read_output(ctx, &mut got).unwrap();
            assert_close(&format!("{what} keyframe"), &got, cpu.output(), Tol::F32.rel_l2);
            for frame in 0..4 {
                // A third of the entries move, by amounts on both sides of theta.
                for v in x.iter_mut() {
                    if rng.unit() < 0.33 {
                        *v += rng.normal() * 0.2;
                    }
                }
                cpu.step(&x).unwrap();
                gpu.step(ctx, &x).unwrap();
                // The same entries fire on both (the same f32 subtraction against the same
                // reference), so the states differ only by the order of the float adds.
                assert_eq!(gpu.fired(ctx).unwrap(), cpu.fired(), "{what} frame {frame}: fired entries");
                gpu.read_output(ctx, &mut got).unwrap();
                assert_close(&format!("{what} frame {frame}"), &got, cpu.output(), Tol::F32.rel_l2);
                let mut reference = vec![0f32; x.len()];
                gpu.read_reference(ctx, &mut reference).unwrap();
                assert_exact(&format!("{what} frame {frame} x_ref"), &reference, cpu.reference_input());
            }
        }
    }
    // Bad arguments are typed errors.
    let (xs, ws) = ([1, 2, 4, 4], [2, 2, 1, 1]);
    let w = vec![1.0; 4];
    assert!(GpuDeltaConv2d::new(ctx, &xs, &w, &ws, None, &Conv2d::default(), &[-1.0]).is_err());
    assert!(GpuDeltaConv2d::new(ctx, &xs, &w, &ws, None, &Conv2d::default(), &[0.1; 3]).is_err());
    let gelu = Conv2d { activation: Activation::Gelu, ..Conv2d::default() };
    assert!(GpuDeltaConv2d::new(ctx, &xs, &w, &ws, None, &gelu, &[0.1]).is_err());
    let gpu = GpuDeltaConv2d::new(ctx, &xs, &w, &ws, None, &Conv2d::default(), &[0.1]).unwrap();
    assert!(gpu.step(ctx, &[0.0; 5]).is_err());
}

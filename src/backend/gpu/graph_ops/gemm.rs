//! MatMul, linear (Gemm with transB) and Conv (shaders/op_gemm.wgsl): one tiled GEMM core,
//! fed either from strided operands or, for convolutions, from an im2col tile gathered on the
//! fly; depthwise-like convs (fewer than 4 output channels per group) use a direct kernel.
//!
//! [`conv2d_packed`] runs the same two conv kernels on weights kept in their packed format (F16,
//! Q8, Q4, FP4; shaders/op_conv_packed.wgsl plus one op_conv_<format>.wgsl per format), decoding
//! each weight as the tile is filled, so a quantized model keeps its footprint on the GPU.

use super::{act_params, aux_start, grid_1d, make_step, pack8, ActParams, Binder, GpuStep, GpuView, Module};
use crate::backend::gpu::context::GpuContext;
use crate::backend::gpu::shaders;
use crate::error::{Error, Result};
use crate::ops::{broadcast_into, conv2d_output_shape, matmul_output_shape, numel, Conv2d, MAX_RANK};
use crate::tensor::{Fp4Scale, Scheme};

/// A GEMM tile shape: `bm` output rows x `bn` output columns per workgroup of 256 threads (each
/// thread `bm / 16` x `bn / 16` outputs). Each shape is its own compiled module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmTile {
    pub bm: u32,
    pub bn: u32,
}

/// The tile shapes the GEMM kernels are compiled for: square for large products, wide for
/// products with few rows (a conv with 16 or 32 output channels, a matmul of a few tokens).
pub const GEMM_TILES: [GemmTile; 3] =
    [GemmTile { bm: 64, bn: 64 }, GemmTile { bm: 32, bn: 128 }, GemmTile { bm: 16, bn: 128 }];

/// Below this many output channels per group a conv runs the direct kernel (as the CPU twin).
const DIRECT_MAX_MG: usize = 4;

impl GemmTile {
    /// Estimated cost of an m x n product with this tile: the work including padding to whole
    /// tiles, weighted by the workgroup-memory reads per multiply-add of the thread tile.
    fn cost(self, m: usize, n: usize) -> f64 {
        let (bm, bn) = (self.bm as usize, self.bn as usize);
        let padded = (m.div_ceil(bm) * bm * n.div_ceil(bn) * bn) as f64;
        let (tm, tn) = (bm as f64 / 16.0, bn as f64 / 16.0);
        padded * (1.0 + (tm + tn) / (tm * tn))
    }

    /// The cheapest tile for an m x n product.
    pub fn choose(m: usize, n: usize) -> GemmTile {
        let mut best = GEMM_TILES[0];
        for t in GEMM_TILES {
            if t.cost(m, n) < best.cost(m, n) {
                best = t;
            }
        }
        best
    }
}

/// Mirrors `struct Params` in shaders/op_gemm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    batch_rank: u32,
    a_slot: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_slot: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    y_off: u32,
    y_rs: u32,
    bias_slot: u32,
    bias_off: u32,
    bias_mode: u32,
    len: u32,
    groups: u32,
    _pad: u32,
    act: ActParams,
    batch_dims: [[u32; 4]; 2],
    a_bstr: [[u32; 4]; 2],
    b_bstr: [[u32; 4]; 2],
    c: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    dh: u32,
    dw: u32,
    pt: u32,
    pl: u32,
    cg: u32,
    mg: u32,
    m_total: u32,
    s_slot: u32,
    s_off: u32,
    row_words: u32,
    aux_row_words: u32,
    group_words: u32,
    _pad1: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<GemmParams>() == 288);
const _: () = assert!(std::mem::offset_of!(GemmParams, act) == 80);
const _: () = assert!(std::mem::offset_of!(GemmParams, batch_dims) == 96);
const _: () = assert!(std::mem::offset_of!(GemmParams, c) == 192);

const BIAS_NONE: u32 = 0;
const BIAS_PER_ROW: u32 = 1;
const BIAS_PER_COLUMN: u32 = 2;

fn gemm_groups(tile: GemmTile, m: usize, n: usize, z: usize) -> [u32; 3] {
    [n.div_ceil(tile.bn as usize) as u32, m.div_ceil(tile.bm as usize) as u32, z as u32]
}

/// Per-batch-dim element strides of one operand (0 where it broadcasts), aligned right.
fn batch_strides(batch: &[usize], operand_batch: &[usize], matrix: usize) -> Vec<u32> {
    let lead = batch.len() - operand_batch.len();
    let mut s = vec![0u32; batch.len()];
    let mut acc = matrix;
    for i in (0..operand_batch.len()).rev() {
        if operand_batch[i] != 1 {
            s[lead + i] = acc as u32;
        }
        acc *= operand_batch[i];
    }
    s
}

/// ONNX `MatMul`: y = a b with numpy promotion of 1-D operands and broadcast batch dims.
pub fn matmul(ctx: &GpuContext, a: GpuView, b: GpuView, y: GpuView) -> Result<Vec<GpuStep>> {
    let op = "matmul";
    let out = matmul_output_shape(a.shape, b.shape)?;
    let total = numel(&out);
    if y.numel() != total {
        return Err(Error::shape(op, format!("output of shape {out:?} ({total} values)"), format!("{:?}", y.shape)));
    }
    if total == 0 {
        return Ok(Vec::new());
    }
    let (ar, br) = (a.shape.len(), b.shape.len());
    let (m, k) = if ar == 1 { (1, a.shape[0]) } else { (a.shape[ar - 2], a.shape[ar - 1]) };
    let n = if br == 1 { 1 } else { b.shape[br - 1] };
    let a_batch = &a.shape[..ar.saturating_sub(2)];
    let b_batch = &b.shape[..br.saturating_sub(2)];
    let mut batch = [0usize; MAX_RANK];
    let batch_rank = broadcast_into(op, a_batch, b_batch, &mut batch)?;
    let batch = &batch[..batch_rank];
    let batches = numel(batch);
    let mut binder = Binder::new(op, &y)?;
    let (ra, rb) = (binder.input("left operand", &a)?, binder.input("right operand", &b)?);
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (oa, ob, oy) = (layout.operand(ra), layout.operand(rb), layout.operand(ry));
    let dims: Vec<u32> = batch.iter().map(|&d| d as u32).collect();
    let params = GemmParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        batch_rank: batch_rank as u32,
        a_slot: oa.slot,
        a_off: oa.off,
        a_rs: k as u32,
        a_cs: 1,
        b_slot: ob.slot,
        b_off: ob.off,
        b_rs: n as u32,
        b_cs: 1,
        y_off: oy.off,
        y_rs: n as u32,
        batch_dims: pack8(&dims),
        a_bstr: pack8(&batch_strides(batch, a_batch, m * k)),
        b_bstr: pack8(&batch_strides(batch, b_batch, k * n)),
        ..Default::default()
    };
    let tile = GemmTile::choose(m, n);
    Ok(vec![make_step(ctx, Module::Gemm(tile), "matmul", &params, &[], &layout, gemm_groups(tile, m, n, batches))?])
}

/// y = x W^T + b for x [..., K] and W [N, K] (ONNX `Gemm` with transB = 1, PyTorch
/// `nn.Linear`); `bias` has N values; `y` is [..., N].
pub fn linear(ctx: &GpuContext, x: GpuView, w: GpuView, bias: Option<GpuView>, y: GpuView) -> Result<Vec<GpuStep>> {
    let op = "linear";
    let &[nf, k] = w.shape else {
        return Err(Error::shape(op, "weights [N, K]", format!("{:?}", w.shape)));
    };
    if x.shape.last() != Some(&k) {
        return Err(Error::shape(op, format!("input [..., {k}]"), format!("{:?}", x.shape)));
    }
    if let Some(b) = &bias {
        if b.numel() != nf {
            return Err(Error::shape(op, format!("bias of {nf} values"), format!("{:?}", b.shape)));
        }
    }
    let m = numel(&x.shape[..x.shape.len() - 1]);
    if y.numel() != m.saturating_mul(nf) {
        return Err(Error::shape(op, format!("output of {m} x {nf} values"), format!("{:?}", y.shape)));
    }
    if m * nf == 0 {
        return Ok(Vec::new());
    }
    let mut binder = Binder::new(op, &y)?;
    let (rx, rw) = (binder.input("input", &x)?, binder.input("weights", &w)?);
    let rb = bias.as_ref().map(|b| binder.input("bias", b)).transpose()?;
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (ox, ow, oy) = (layout.operand(rx), layout.operand(rw), layout.operand(ry));
    let ob = rb.map(|r| layout.operand(r)).unwrap_or_default();
    let params = GemmParams {
        m: m as u32,
        n: nf as u32,
        k: k as u32,
        a_slot: ox.slot,
        a_off: ox.off,
        a_rs: k as u32,
        a_cs: 1,
        // B(k, n) = W[n, k].
        b_slot: ow.slot,
        b_off: ow.off,
        b_rs: 1,
        b_cs: k as u32,
        y_off: oy.off,
        y_rs: nf as u32,
        bias_slot: ob.slot,
        bias_off: ob.off,
        bias_mode: if bias.is_some() { BIAS_PER_COLUMN } else { BIAS_NONE },
        ..Default::default()
    };
    let tile = GemmTile::choose(m, nf);
    Ok(vec![make_step(ctx, Module::Gemm(tile), "matmul", &params, &[], &layout, gemm_groups(tile, m, nf, 1))?])
}

/// y = act(conv(x, w) + bias) for NCHW `x` and weights [M, C/group, kH, kW] (ONNX `Conv` with
/// [`Conv2d`]'s strides, pads, dilations, groups and fused activation); `bias` has M values.
pub fn conv2d(
    ctx: &GpuContext,
    x: GpuView,
    w: GpuView,
    bias: Option<GpuView>,
    p: &Conv2d,
    y: GpuView,
) -> Result<Vec<GpuStep>> {
    let Ok(w_shape) = <[usize; 4]>::try_from(w.shape) else {
        return Err(Error::shape("conv2d", "weights [M, C/group, kH, kW]", format!("{:?}", w.shape)));
    };
    conv_steps(ctx, "conv2d", x, w_shape, ConvWeights::F32(w), bias, p, y)
}

/// A packed weight format the conv kernels decode in place: one module per format (and tile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PackedFormat {
    F16,
    Q8,
    Q4,
    Fp4E8m0,
    Fp4F16,
}

impl PackedFormat {
    pub(crate) const ALL: [PackedFormat; 5] =
        [PackedFormat::F16, PackedFormat::Q8, PackedFormat::Q4, PackedFormat::Fp4E8m0, PackedFormat::Fp4F16];

    /// The format of `scheme`; `None` for F32 (the plain conv kernels).
    fn of(scheme: Scheme) -> Option<Self> {
        match scheme {
            Scheme::F32 => None,
            Scheme::F16 => Some(PackedFormat::F16),
            Scheme::Q8 => Some(PackedFormat::Q8),
            Scheme::Q4 { .. } => Some(PackedFormat::Q4),
            Scheme::Fp4 { scale: Fp4Scale::E8M0, .. } => Some(PackedFormat::Fp4E8m0),
            Scheme::Fp4 { scale: Fp4Scale::F16, .. } => Some(PackedFormat::Fp4F16),
        }
    }

    /// Suffix of the module name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            PackedFormat::F16 => "f16",
            PackedFormat::Q8 => "q8",
            PackedFormat::Q4 => "q4",
            PackedFormat::Fp4E8m0 => "fp4_e8m0",
            PackedFormat::Fp4F16 => "fp4_f16",
        }
    }
}

/// The WGSL of a packed-weight conv module: header, op_common.wgsl with the read-only `src`
/// bindings typed `array<u32>` (packed words are read as integers; `load` bitcasts them for the
/// f32 operands), op_gemm.wgsl, op_conv_packed.wgsl and the format's weight decoder.
pub(super) fn packed_source(name: &str, tile: GemmTile, format: PackedFormat) -> String {
    let fp4_f16 = format == PackedFormat::Fp4F16;
    let header = format!(
        "// {name}\nconst BM: u32 = {}u;\nconst BN: u32 = {}u;\nconst FP4_SCALE_F16: bool = {fp4_f16};\n",
        tile.bm, tile.bn
    );
    let mut common = shaders::OP_COMMON.to_string();
    for s in ["src0", "src1", "src2"] {
        // A pattern that stops matching leaves an f32 binding and `load_word` fails validation
        // (tests validate every module), so an edit of op_common.wgsl cannot slip through.
        common = common
            .replace(&format!("var<storage, read> {s}: array<f32>;"), &format!("var<storage, read> {s}: array<u32>;"))
            .replace(&format!("v = {s}[i];"), &format!("v = bitcast<f32>({s}[i]);"));
    }
    let decoder = match format {
        PackedFormat::F16 => shaders::OP_CONV_F16,
        PackedFormat::Q8 => shaders::OP_CONV_Q8,
        PackedFormat::Q4 => shaders::OP_CONV_Q4,
        PackedFormat::Fp4E8m0 | PackedFormat::Fp4F16 => shaders::OP_CONV_FP4,
    };
    [header.as_str(), common.as_str(), shaders::OP_GEMM, shaders::OP_CONV_PACKED, decoder].join("\n")
}

/// Packed conv weights: the matrix [M, K] of a conv weight in any weight format, as uploaded
/// from a .kpak (main and aux component buffers, byte offset 0).
///
/// `shape` is the conv weight's [M, C/group, kH, kW]; the matrix row m is output channel m and
/// column k = (c kH + ky) kW + kx, the natural flattening (src/tensor.rs gives each format's row
/// layout). `aux` is not read for F32 and F16 (any buffer will do).
#[derive(Clone, Copy, Debug)]
pub struct PackedWeights<'a> {
    pub scheme: Scheme,
    pub main: &'a wgpu::Buffer,
    pub aux: &'a wgpu::Buffer,
    pub shape: [usize; 4],
}

/// [`conv2d`] with the weights in any [`Scheme`], read packed: y = act(conv(x, deq(w)) + bias).
///
/// F32 runs [`conv2d`] itself. The others decode each weight as the kernels' weight tile is
/// filled, so the GPU holds and streams only the packed bytes. The main and aux buffers take two
/// of the three read-only binding slots and the bias the third, so `x` must be in `y`'s buffer
/// (the arena) or share a buffer with one of them (a typed `Unsupported` error otherwise).
pub fn conv2d_packed(
    ctx: &GpuContext,
    x: GpuView,
    w: PackedWeights,
    bias: Option<GpuView>,
    p: &Conv2d,
    y: GpuView,
) -> Result<Vec<GpuStep>> {
    let op = "conv2d_packed";
    w.scheme.validate()?;
    let Some(format) = PackedFormat::of(w.scheme) else {
        return conv2d(ctx, x, GpuView::new(w.main, 0, &w.shape), bias, p, y);
    };
    let [m, cg, kh, kw] = w.shape;
    let k = cg * kh * kw;
    let (row_words, aux_row_words) = (w.scheme.row_words(k), w.scheme.aux_row_words(k));
    let words = [m * row_words, m * aux_row_words];
    for (what, buf, n) in [("main", w.main, words[0]), ("aux", w.aux, words[1])] {
        if buf.size() < n as u64 * 4 {
            return Err(Error::shape(
                op,
                format!("a {what} component of {n} words ({} weights {:?} = [{m}, {k}])", w.scheme.label(), w.shape),
                format!("a buffer of {} bytes", buf.size()),
            ));
        }
    }
    let weights = ConvWeights::Packed {
        format,
        main: GpuView::new(w.main, 0, &words[..1]),
        aux: GpuView::new(w.aux, 0, &words[1..]),
        row_words: row_words as u32,
        aux_row_words: aux_row_words as u32,
        group_words: w.scheme.group().map_or(1, |g| g / 8) as u32,
    };
    conv_steps(ctx, op, x, w.shape, weights, bias, p, y)
}

/// Where a conv's weights are and how the kernels read them.
enum ConvWeights<'a> {
    /// f32 [M, C/group, kH, kW], read by `conv2d` / `conv2d_direct`.
    F32(GpuView<'a>),
    /// A packed [M, K] matrix, read by the packed modules' `conv2d` / `conv2d_direct`.
    Packed {
        format: PackedFormat,
        main: GpuView<'a>,
        aux: GpuView<'a>,
        row_words: u32,
        aux_row_words: u32,
        group_words: u32,
    },
}

/// The one conv step (shape checks, bindings, parameters, kernel and tile choice) for either
/// weight form.
#[allow(clippy::too_many_arguments)]
fn conv_steps(
    ctx: &GpuContext,
    op: &'static str,
    x: GpuView,
    w_shape: [usize; 4],
    weights: ConvWeights,
    bias: Option<GpuView>,
    p: &Conv2d,
    y: GpuView,
) -> Result<Vec<GpuStep>> {
    let out = conv2d_output_shape(x.shape, &w_shape, p)?;
    let [n, m, oh, ow] = out;
    let total = numel(&out);
    if y.numel() != total {
        return Err(Error::shape(op, format!("output of shape {out:?} ({total} values)"), format!("{:?}", y.shape)));
    }
    if let Some(b) = &bias {
        if b.numel() != m {
            return Err(Error::shape(op, format!("bias of {m} values"), format!("{:?}", b.shape)));
        }
    }
    let aux0 = aux_start::<GemmParams>();
    let mut aux = Vec::new();
    let act = act_params(op, &p.activation, m, aux0, &mut aux)?;
    if total == 0 {
        return Ok(Vec::new());
    }
    let (c, h, wd) = (x.shape[1], x.shape[2], x.shape[3]);
    let [_, cg, kh, kw] = w_shape;
    let groups = p.group;
    let mg = m / groups;
    let (k, pixels) = (cg * kh * kw, oh * ow);
    let mut binder = Binder::new(op, &y)?;
    let rx = binder.input("input", &x)?;
    let (rw, rs) = match &weights {
        ConvWeights::F32(w) => (binder.input("weights", w)?, None),
        ConvWeights::Packed { main, aux, .. } => {
            (binder.input("packed weights", main)?, Some(binder.input("packed weight scales", aux)?))
        }
    };
    let rb = bias.as_ref().map(|b| binder.input("bias", b)).transpose()?;
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (ox, owt, oy) = (layout.operand(rx), layout.operand(rw), layout.operand(ry));
    let os = rs.map(|r| layout.operand(r)).unwrap_or_default();
    let ob = rb.map(|r| layout.operand(r)).unwrap_or_default();
    let u = |v: usize| v as u32;
    let mut params = GemmParams {
        m: u(mg),
        n: u(pixels),
        k: u(k),
        a_slot: owt.slot,
        a_off: owt.off,
        a_rs: u(k),
        a_cs: 1,
        b_slot: ox.slot,
        b_off: ox.off,
        y_off: oy.off,
        y_rs: u(pixels),
        bias_slot: ob.slot,
        bias_off: ob.off,
        bias_mode: if bias.is_some() { BIAS_PER_ROW } else { BIAS_NONE },
        len: u(total),
        groups: u(groups),
        act,
        c: u(c),
        h: u(h),
        w: u(wd),
        oh: u(oh),
        ow: u(ow),
        kh: u(kh),
        kw: u(kw),
        sh: u(p.strides[0]),
        sw: u(p.strides[1]),
        dh: u(p.dilations[0]),
        dw: u(p.dilations[1]),
        pt: u(p.pads[0]),
        pl: u(p.pads[1]),
        cg: u(cg),
        mg: u(mg),
        m_total: u(m),
        ..Default::default()
    };
    let (format, entries) = match weights {
        ConvWeights::F32(_) => (None, ["conv2d_direct", "conv2d"]),
        ConvWeights::Packed { format, row_words, aux_row_words, group_words, .. } => {
            params.s_slot = os.slot;
            params.s_off = os.off;
            params.row_words = row_words;
            params.aux_row_words = aux_row_words;
            params.group_words = group_words;
            (Some(format), ["conv2d_direct", "conv2d"])
        }
    };
    let module = |t: GemmTile| match format {
        None => Module::Gemm(t),
        Some(f) => Module::GemmPacked(t, f),
    };
    let step = if mg < DIRECT_MAX_MG {
        make_step(ctx, module(GEMM_TILES[0]), entries[0], &params, &aux, &layout, grid_1d(ctx, total))?
    } else {
        let tile = GemmTile::choose(mg, pixels);
        let grid = gemm_groups(tile, mg, pixels, n * groups);
        make_step(ctx, module(tile), entries[1], &params, &aux, &layout, grid)?
    };
    Ok(vec![step])
}

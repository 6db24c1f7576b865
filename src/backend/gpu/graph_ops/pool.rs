//! 2-D and global pooling on NCHW (shaders/op_pool.wgsl).

use super::{grid_1d, grid_rows, make_step, Binder, GpuStep, GpuView, Module};
use crate::backend::gpu::context::GpuContext;
use crate::error::{Error, Result};
use crate::ops::{numel, pool2d_output_shape, Pool2d};

/// Mirrors `struct Params` in shaders/op_pool.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct PoolParams {
    x_slot: u32,
    x_off: u32,
    y_off: u32,
    len: u32,
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
    pb: u32,
    pr: u32,
    mode: u32,
    planes: u32,
    plane_len: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<PoolParams>() == 96);

const MODE_MAX: u32 = 0;
const MODE_AVG: u32 = 1;
const MODE_AVG_INCLUDE_PAD: u32 = 2;

fn pool2d(ctx: &GpuContext, op: &'static str, x: GpuView, p: &Pool2d, mode: u32, y: GpuView) -> Result<Vec<GpuStep>> {
    // The twin's checks: [N, C, H, W] input, kernel / stride / dilation >= 1, pads below the
    // window, every window touching the input.
    let out = pool2d_output_shape(x.shape, p)?;
    let n = numel(&out);
    if y.numel() != n {
        return Err(Error::shape(op, format!("output of shape {out:?} ({n} values)"), format!("{:?}", y.shape)));
    }
    if n == 0 || x.numel() == 0 {
        return Ok(Vec::new());
    }
    let mut binder = Binder::new(op, &y)?;
    let rx = binder.input("input", &x)?;
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (ox, oy) = (layout.operand(rx), layout.operand(ry));
    let u = |v: usize| v as u32;
    let params = PoolParams {
        x_slot: ox.slot,
        x_off: ox.off,
        y_off: oy.off,
        len: u(n),
        h: u(x.shape[2]),
        w: u(x.shape[3]),
        oh: u(out[2]),
        ow: u(out[3]),
        kh: u(p.kernel[0]),
        kw: u(p.kernel[1]),
        sh: u(p.strides[0]),
        sw: u(p.strides[1]),
        dh: u(p.dilations[0]),
        dw: u(p.dilations[1]),
        pt: u(p.pads[0]),
        pl: u(p.pads[1]),
        pb: u(p.pads[2]),
        pr: u(p.pads[3]),
        mode,
        ..Default::default()
    };
    Ok(vec![make_step(ctx, Module::Pool, "pool2d", &params, &[], &layout, grid_1d(ctx, n))?])
}

/// ONNX `MaxPool` (2-D): the maximum over each window, padding ignored.
pub fn max_pool2d(ctx: &GpuContext, x: GpuView, p: &Pool2d, y: GpuView) -> Result<Vec<GpuStep>> {
    pool2d(ctx, "max_pool2d", x, p, MODE_MAX, y)
}

/// ONNX `AveragePool` (2-D), with `count_include_pad` and `ceil_mode` as the CPU twin.
pub fn avg_pool2d(ctx: &GpuContext, x: GpuView, p: &Pool2d, y: GpuView) -> Result<Vec<GpuStep>> {
    let mode = if p.count_include_pad { MODE_AVG_INCLUDE_PAD } else { MODE_AVG };
    pool2d(ctx, "avg_pool2d", x, p, mode, y)
}

fn global(ctx: &GpuContext, op: &'static str, x: GpuView, mode: u32, y: GpuView) -> Result<Vec<GpuStep>> {
    if x.shape.len() < 3 {
        return Err(Error::shape(op, "input [N, C, spatial...]", format!("{:?}", x.shape)));
    }
    let planes = x.shape[0].saturating_mul(x.shape[1]);
    if y.numel() != planes {
        return Err(Error::shape(op, format!("output [N, C, 1, ..] of {planes} values"), format!("{:?}", y.shape)));
    }
    if planes == 0 {
        return Ok(Vec::new());
    }
    let len = numel(&x.shape[2..]);
    if len == 0 {
        return Err(Error::shape(op, "non-empty spatial planes", format!("{:?}", x.shape)));
    }
    let mut binder = Binder::new(op, &y)?;
    let rx = binder.input("input", &x)?;
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (ox, oy) = (layout.operand(rx), layout.operand(ry));
    let params = PoolParams {
        x_slot: ox.slot,
        x_off: ox.off,
        y_off: oy.off,
        mode,
        planes: planes as u32,
        plane_len: len as u32,
        ..Default::default()
    };
    Ok(vec![make_step(ctx, Module::Pool, "global_pool", &params, &[], &layout, grid_rows(ctx, planes))?])
}

/// ONNX `GlobalAveragePool`: the mean of every spatial plane; `y` is [N, C, 1, ...].
pub fn global_avg_pool(ctx: &GpuContext, x: GpuView, y: GpuView) -> Result<Vec<GpuStep>> {
    global(ctx, "global_avg_pool", x, MODE_AVG, y)
}

/// ONNX `GlobalMaxPool`: the maximum of every spatial plane; `y` is [N, C, 1, ...].
pub fn global_max_pool(ctx: &GpuContext, x: GpuView, y: GpuView) -> Result<Vec<GpuStep>> {
    global(ctx, "global_max_pool", x, MODE_MAX, y)
}

//! Softmax and LayerNormalization (shaders/op_rows.wgsl).

use super::{grid_1d, grid_rows, make_step, Binder, GpuStep, GpuView, Module};
use crate::backend::gpu::context::GpuContext;
use crate::error::{Error, Result};
use crate::ops::{normalize_axis, numel, split_at_axis};

/// Mirrors `struct Params` in shaders/op_rows.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct RowParams {
    x_slot: u32,
    x_off: u32,
    y_off: u32,
    rows: u32,
    len: u32,
    inner: u32,
    s_slot: u32,
    s_off: u32,
    b_slot: u32,
    b_off: u32,
    has_bias: u32,
    eps: f32,
}
const _: () = assert!(std::mem::size_of::<RowParams>() == 48);

/// ONNX `Softmax` (opset 13) along `axis` (negative counts from the end); `y` may be `x`.
pub fn softmax(ctx: &GpuContext, x: GpuView, axis: i64, y: GpuView) -> Result<Vec<GpuStep>> {
    let op = "softmax";
    let n = x.numel();
    if y.numel() != n {
        return Err(Error::shape(op, format!("output of shape {:?} ({n} values)", x.shape), format!("{:?}", y.shape)));
    }
    let axis = normalize_axis(axis, x.shape.len())?;
    let (outer, len, inner) = split_at_axis(x.shape, axis);
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut binder = Binder::new(op, &y)?;
    let rx = binder.input("input", &x)?;
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (ox, oy) = (layout.operand(rx), layout.operand(ry));
    let mut params = RowParams {
        x_slot: ox.slot,
        x_off: ox.off,
        y_off: oy.off,
        len: len as u32,
        inner: inner as u32,
        ..Default::default()
    };
    let step = if inner == 1 {
        // Contiguous rows: a workgroup each.
        params.rows = outer as u32;
        make_step(ctx, Module::Rows, "softmax_rows", &params, &[], &layout, grid_rows(ctx, outer))?
    } else {
        // The axis has a stride: a thread per (outer, inner) lane.
        let lanes = outer * inner;
        params.rows = lanes as u32;
        make_step(ctx, Module::Rows, "softmax_strided", &params, &[], &layout, grid_1d(ctx, lanes))?
    };
    Ok(vec![step])
}

/// ONNX `LayerNormalization` over dims `axis..`: y = (x - mean) / sqrt(var + epsilon) * scale
/// + bias, `scale` and `bias` holding one value per normalised element (as the CPU twin).
pub fn layer_norm(
    ctx: &GpuContext,
    x: GpuView,
    axis: i64,
    scale: GpuView,
    bias: Option<GpuView>,
    epsilon: f32,
    y: GpuView,
) -> Result<Vec<GpuStep>> {
    let op = "layer_norm";
    let n = x.numel();
    if y.numel() != n {
        return Err(Error::shape(op, format!("output of shape {:?} ({n} values)", x.shape), format!("{:?}", y.shape)));
    }
    let axis = normalize_axis(axis, x.shape.len())?;
    let len = numel(&x.shape[axis..]);
    if scale.numel() != len {
        return Err(Error::shape(
            op,
            format!("scale of shape {:?} ({len} values)", &x.shape[axis..]),
            format!("{:?}", scale.shape),
        ));
    }
    if let Some(b) = &bias {
        if b.numel() != len {
            return Err(Error::shape(
                op,
                format!("bias of shape {:?} ({len} values)", &x.shape[axis..]),
                format!("{:?}", b.shape),
            ));
        }
    }
    if epsilon.is_nan() || epsilon < 0.0 {
        return Err(Error::InvalidArgument { reason: format!("layer_norm epsilon {epsilon} must be >= 0") });
    }
    if n == 0 || len == 0 {
        return Ok(Vec::new());
    }
    let rows = n / len;
    let mut binder = Binder::new(op, &y)?;
    let rx = binder.input("input", &x)?;
    let rs = binder.input("scale", &scale)?;
    let rb = bias.as_ref().map(|b| binder.input("bias", b)).transpose()?;
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (ox, os, oy) = (layout.operand(rx), layout.operand(rs), layout.operand(ry));
    let ob = rb.map(|r| layout.operand(r)).unwrap_or_default();
    let params = RowParams {
        x_slot: ox.slot,
        x_off: ox.off,
        y_off: oy.off,
        rows: rows as u32,
        len: len as u32,
        inner: 1,
        s_slot: os.slot,
        s_off: os.off,
        b_slot: ob.slot,
        b_off: ob.off,
        has_bias: bias.is_some() as u32,
        eps: epsilon,
    };
    Ok(vec![make_step(ctx, Module::Rows, "layer_norm", &params, &[], &layout, grid_rows(ctx, rows))?])
}

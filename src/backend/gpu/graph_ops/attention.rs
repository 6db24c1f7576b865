//! CARE linear attention and softmax attention (shaders/op_attention.wgsl). Twins:
//! `ops::linear_attention`, `ops::softmax_attention`.

use super::{grid_1d, grid_rows, make_step, Binder, GpuStep, GpuView, Module};
use crate::backend::gpu::context::GpuContext;
use crate::error::{Error, Result};

/// Mirrors `struct Params` in shaders/op_attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct AttentionParams {
    q_slot: u32,
    q_off: u32,
    k_slot: u32,
    k_off: u32,
    v_slot: u32,
    v_off: u32,
    y_off: u32,
    heads: u32,
    n: u32,
    d: u32,
    dv: u32,
    scale: f32,
}
const _: () = assert!(std::mem::size_of::<AttentionParams>() == 48);

/// Floats of KV (+ kmean) the linear kernel keeps in workgroup memory (`MAX_KV` in the shader).
pub const MAX_KV: usize = 4000;
/// Largest Dv of the softmax kernel's per-thread accumulator (`MAX_DV` in the shader).
pub const MAX_DV: usize = 128;

#[allow(clippy::too_many_arguments)]
fn launch(
    ctx: &GpuContext,
    op: &'static str,
    entry: &'static str,
    q: GpuView,
    k: GpuView,
    v: GpuView,
    scale: f32,
    y: GpuView,
) -> Result<Vec<GpuStep>> {
    let (heads, n, d, dv) = crate::ops::attention_dims(op, q.shape, k.shape, v.shape)?;
    if y.numel() != heads * n * dv {
        return Err(Error::shape(op, format!("output of {} values", heads * n * dv), format!("{:?}", y.shape)));
    }
    let mut binder = Binder::new(op, &y)?;
    let (rq, rk, rv) = (binder.input("q", &q)?, binder.input("k", &k)?, binder.input("v", &v)?);
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (oq, ok, ov, oy) = (layout.operand(rq), layout.operand(rk), layout.operand(rv), layout.operand(ry));
    let params = AttentionParams {
        q_slot: oq.slot,
        q_off: oq.off,
        k_slot: ok.slot,
        k_off: ok.off,
        v_slot: ov.slot,
        v_off: ov.off,
        y_off: oy.off,
        heads: heads as u32,
        n: n as u32,
        d: d as u32,
        dv: dv as u32,
        scale,
    };
    let grid = if entry == "linear_attention" { grid_rows(ctx, heads) } else { grid_1d(ctx, heads * n) };
    Ok(vec![make_step(ctx, Module::Attention, entry, &params, &[], &layout, grid)?])
}

/// CARE linear attention on [B, H, N, D] q, k and [B, H, N, Dv] v. The kernel keeps KV in
/// workgroup memory, so D x (Dv + 1) must be at most [`MAX_KV`].
pub fn linear_attention(ctx: &GpuContext, q: GpuView, k: GpuView, v: GpuView, y: GpuView) -> Result<Vec<GpuStep>> {
    let (d, dv) = (q.shape.last().copied().unwrap_or(0), v.shape.last().copied().unwrap_or(0));
    if d * (dv + 1) > MAX_KV {
        return Err(Error::Unsupported {
            what: format!("linear attention with D = {d}, Dv = {dv} on the GPU (D x (Dv + 1) must be <= {MAX_KV})"),
        });
    }
    launch(ctx, "linear_attention", "linear_attention", q, k, v, 1.0, y)
}

/// Softmax attention, out_i = sum_j softmax_j(scale q_i . k_j) v_j; Dv at most [`MAX_DV`].
pub fn softmax_attention(
    ctx: &GpuContext,
    q: GpuView,
    k: GpuView,
    v: GpuView,
    scale: f32,
    y: GpuView,
) -> Result<Vec<GpuStep>> {
    if v.shape.last().is_some_and(|&dv| dv > MAX_DV) || !scale.is_finite() {
        return Err(Error::Unsupported {
            what: format!("softmax attention with values {:?} and scale {scale} on the GPU (Dv <= {MAX_DV})", v.shape),
        });
    }
    launch(ctx, "softmax_attention", "softmax_attention", q, k, v, scale, y)
}

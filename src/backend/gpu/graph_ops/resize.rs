//! ONNX `Resize` on NCHW (shaders/op_resize.wgsl). The source taps of every output row and
//! column are computed here in f64 with the rules of the CPU twin (src/ops/resize.rs) and passed
//! as tables, so the GPU picks exactly the twin's pixels and weights.

use super::{aux_start, grid_1d, make_step, Binder, GpuStep, GpuView, Module};
use crate::backend::gpu::context::GpuContext;
use crate::error::{Error, Result};
// The sampling rules are the CPU twin's (src/ops/resize.rs), so both pick the same pixels.
use crate::ops::{linear_taps, nearest_index, source_coord, Resize, ResizeMode};

/// Mirrors `struct Params` in shaders/op_resize.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ResizeParams {
    x_slot: u32,
    x_off: u32,
    y_off: u32,
    len: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    mode: u32,
    tab_y: u32,
    tab_x: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<ResizeParams>() == 48);

/// The table of one axis: one index per output position (nearest) or (i0, i1, weight).
/// Indices are stored as f32, exact below 2^24 (checked by the caller).
fn axis_table(p: &Resize, in_len: usize, out_len: usize, scale: f64, table: &mut Vec<f32>) {
    for o in 0..out_len {
        let x = source_coord(p.coord, o, in_len, out_len, scale);
        match p.mode {
            ResizeMode::Nearest => table.push(nearest_index(p.nearest, x, in_len) as f32),
            ResizeMode::Linear => {
                let (i0, i1, w) = linear_taps(x, in_len);
                table.extend([i0 as f32, i1 as f32, w]);
            }
        }
    }
}

/// ONNX `Resize` of NCHW `x` to `y.shape` (same N and C), nearest or bilinear on H and W.
pub fn resize(ctx: &GpuContext, x: GpuView, p: &Resize, y: GpuView) -> Result<Vec<GpuStep>> {
    let op = "resize";
    let (&[n, c, h, w], &[on, oc, oh, ow]) = (x.shape, y.shape) else {
        return Err(Error::shape(op, "4-D input and output shapes", format!("{:?} -> {:?}", x.shape, y.shape)));
    };
    if on != n || oc != c {
        return Err(Error::shape(op, format!("output [{n}, {c}, ..] (N and C unchanged)"), format!("{:?}", y.shape)));
    }
    if y.numel() == 0 {
        return Ok(Vec::new());
    }
    if x.numel() == 0 {
        return Err(Error::shape(op, "a non-empty input", format!("{:?}", x.shape)));
    }
    let (sh, sw) = match p.scales {
        Some([a, b]) => {
            if !(a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()) {
                return Err(Error::InvalidArgument { reason: format!("resize scales {a}, {b} must be positive") });
            }
            (a as f64, b as f64)
        }
        None => (oh as f64 / h as f64, ow as f64 / w as f64),
    };
    if h.max(w) >= 1 << 24 {
        return Err(Error::Unsupported { what: format!("resize of a {h} x {w} plane (f32 index tables)") });
    }
    let aux0 = aux_start::<ResizeParams>();
    let mut aux = Vec::new();
    axis_table(p, h, oh, sh, &mut aux);
    let tab_x = aux0 + aux.len() as u32;
    axis_table(p, w, ow, sw, &mut aux);
    let mut binder = Binder::new(op, &y)?;
    let rx = binder.input("input", &x)?;
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (ox, oy) = (layout.operand(rx), layout.operand(ry));
    let len = y.numel();
    let params = ResizeParams {
        x_slot: ox.slot,
        x_off: ox.off,
        y_off: oy.off,
        len: len as u32,
        h: h as u32,
        w: w as u32,
        oh: oh as u32,
        ow: ow as u32,
        mode: match p.mode {
            ResizeMode::Nearest => 0,
            ResizeMode::Linear => 1,
        },
        tab_y: aux0,
        tab_x,
        _pad: 0,
    };
    Ok(vec![make_step(ctx, Module::Resize, "resize", &params, &aux, &layout, grid_1d(ctx, len))?])
}

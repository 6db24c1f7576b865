//! Binary ops with ONNX broadcasting and unary activations (shaders/op_elementwise.wgsl).

use super::{
    act_params, contiguous_strides, grid_1d, is_per_channel, make_step, pack8, ActParams, Binder, GpuStep, GpuView,
    Module,
};
use crate::backend::gpu::context::GpuContext;
use crate::error::{Error, Result};
use crate::ops::{broadcast_into, numel, Activation, BinaryOp, MAX_RANK};

/// Mirrors `struct Params` in shaders/op_elementwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct EltParams {
    len: u32,
    rank: u32,
    y_off: u32,
    op: u32,
    a_slot: u32,
    a_off: u32,
    b_slot: u32,
    b_off: u32,
    act: ActParams,
    channels: u32,
    inner: u32,
    _pad: [u32; 2],
    shape: [[u32; 4]; 2],
    a_str: [[u32; 4]; 2],
    b_str: [[u32; 4]; 2],
}
const _: () = assert!(std::mem::size_of::<EltParams>() == 160);
const _: () = assert!(std::mem::offset_of!(EltParams, act) == 32);
const _: () = assert!(std::mem::offset_of!(EltParams, shape) == 64);

/// The broadcast as a loop nest: output dims (size-1 dims dropped, neighbours merged where both
/// operands continue contiguously) and each operand's element stride per dim (0 = broadcast).
/// The same collapse as the CPU twin's plan, so equal shapes become one flat dim.
fn broadcast_plan(out: &[usize], a: &[usize], b: &[usize]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let operand = |shape: &[usize]| -> Vec<usize> {
        let own = contiguous_strides(shape);
        let lead = out.len() - shape.len();
        (0..out.len()).map(|i| if i < lead || shape[i - lead] == 1 { 0 } else { own[i - lead] }).collect()
    };
    let (fa, fb) = (operand(a), operand(b));
    let (mut dims, mut sa, mut sb) = (Vec::<usize>::new(), Vec::<usize>::new(), Vec::<usize>::new());
    for (i, &d) in out.iter().enumerate() {
        if d == 1 {
            continue;
        }
        match dims.len().checked_sub(1) {
            Some(r) if sa[r] == fa[i] * d && sb[r] == fb[i] * d => {
                dims[r] *= d;
                sa[r] = fa[i];
                sb[r] = fb[i];
            }
            _ => {
                dims.push(d);
                sa.push(fa[i]);
                sb.push(fb[i]);
            }
        }
    }
    if dims.is_empty() {
        (dims, sa, sb) = (vec![1], vec![0], vec![0]);
    }
    let u = |v: Vec<usize>| v.into_iter().map(|x| x as u32).collect();
    (u(dims), u(sa), u(sb))
}

/// y = a (op) b with ONNX multidirectional broadcasting (rank <= 8). `y` holds the broadcast
/// shape's values (its shape may be any reshape of it, as the CPU twin only checks the count).
pub fn binary(ctx: &GpuContext, op: BinaryOp, a: GpuView, b: GpuView, y: GpuView) -> Result<Vec<GpuStep>> {
    // The codes of the `switch p.op` in op_elementwise.wgsl.
    let (name, code) = match op {
        BinaryOp::Add => ("add", 0),
        BinaryOp::Sub => ("sub", 1),
        BinaryOp::Mul => ("mul", 2),
        BinaryOp::Div => ("div", 3),
    };
    let mut shape = [0usize; MAX_RANK];
    let rank = broadcast_into(name, a.shape, b.shape, &mut shape)?;
    let out = &shape[..rank];
    let n = numel(out);
    if y.numel() != n {
        return Err(Error::shape(name, format!("output of shape {out:?} ({n} values)"), format!("{:?}", y.shape)));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let (dims, sa, sb) = broadcast_plan(out, a.shape, b.shape);
    let mut binder = Binder::new(name, &y)?;
    let (ra, rb) = (binder.input("left operand", &a)?, binder.input("right operand", &b)?);
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (oa, ob, oy) = (layout.operand(ra), layout.operand(rb), layout.operand(ry));
    let params = EltParams {
        len: n as u32,
        rank: dims.len() as u32,
        y_off: oy.off,
        op: code,
        a_slot: oa.slot,
        a_off: oa.off,
        b_slot: ob.slot,
        b_off: ob.off,
        channels: 1,
        inner: 1,
        shape: pack8(&dims),
        a_str: pack8(&sa),
        b_str: pack8(&sb),
        ..Default::default()
    };
    Ok(vec![make_step(ctx, Module::Elementwise, "binary", &params, &[], &layout, grid_1d(ctx, n))?])
}

/// y = act(x) for x of `x.shape` (per-channel clip thresholds index axis 1); `y` holds as many
/// values (in place when it is the same range as `x`).
pub fn activation(ctx: &GpuContext, x: GpuView, act: &Activation, y: GpuView) -> Result<Vec<GpuStep>> {
    let op = "activation";
    let n = x.numel();
    if y.numel() != n {
        return Err(Error::shape(op, format!("output of shape {:?} ({n} values)", x.shape), format!("{:?}", y.shape)));
    }
    let (channels, inner) = if is_per_channel(act) {
        if x.shape.len() < 2 {
            return Err(Error::shape(op, "a tensor with a channel axis (rank >= 2)", format!("{:?}", x.shape)));
        }
        (x.shape[1], numel(&x.shape[2..]))
    } else {
        (1, 1)
    };
    let aux0 = super::aux_start::<EltParams>();
    let mut aux = Vec::new();
    let act = act_params(op, act, channels, aux0, &mut aux)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut binder = Binder::new(op, &y)?;
    let rx = binder.input("input", &x)?;
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (ox, oy) = (layout.operand(rx), layout.operand(ry));
    let params = EltParams {
        len: n as u32,
        y_off: oy.off,
        a_slot: ox.slot,
        a_off: ox.off,
        act,
        channels: channels as u32,
        inner: inner as u32,
        ..Default::default()
    };
    Ok(vec![make_step(ctx, Module::Elementwise, "activation", &params, &aux, &layout, grid_1d(ctx, n))?])
}

//! Data movement (shaders/op_gather.wgsl): Concat, Split, Slice, Transpose and plain copies, all
//! as one strided-copy kernel whose loop nest the host builds and collapses.

use super::{contiguous_strides, grid_1d, make_step, pack8, Binder, GpuStep, GpuView, Module};
use crate::backend::gpu::context::GpuContext;
use crate::error::{Error, Result};
use crate::ops::{check_rank, normalize_axis, numel, split_at_axis, MAX_RANK};

/// Mirrors `struct Params` in shaders/op_gather.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GatherParams {
    len: u32,
    rank: u32,
    x_slot: u32,
    x_off: u32,
    y_off: u32,
    _pad: [u32; 3],
    shape: [[u32; 4]; 2],
    x_str: [[i32; 4]; 2],
    y_str: [[u32; 4]; 2],
}
const _: () = assert!(std::mem::size_of::<GatherParams>() == 128);
const _: () = assert!(std::mem::offset_of!(GatherParams, shape) == 32);

/// A strided copy: for every index of `dims`, y[y_base + sum idx y_str] = x[x_base + sum idx
/// x_str] (element offsets from the starts of the views).
struct Strided<'s> {
    dims: &'s [usize],
    x_base: usize,
    x_str: &'s [i64],
    y_base: usize,
    y_str: &'s [usize],
}

fn gather(ctx: &GpuContext, op: &'static str, x: &GpuView, y: &GpuView, s: Strided) -> Result<GpuStep> {
    // Drop size-1 dims; merge a dim into the previous one when both sides stay contiguous.
    let (mut dims, mut xs, mut ys) = (Vec::<usize>::new(), Vec::<i64>::new(), Vec::<usize>::new());
    for (i, &d) in s.dims.iter().enumerate() {
        if d == 1 {
            continue;
        }
        match dims.len().checked_sub(1) {
            Some(r) if xs[r] == s.x_str[i] * d as i64 && ys[r] == s.y_str[i] * d => {
                dims[r] *= d;
                xs[r] = s.x_str[i];
                ys[r] = s.y_str[i];
            }
            _ => {
                dims.push(d);
                xs.push(s.x_str[i]);
                ys.push(s.y_str[i]);
            }
        }
    }
    if dims.is_empty() {
        (dims, xs, ys) = (vec![1], vec![0], vec![0]);
    }
    if dims.len() > MAX_RANK {
        return Err(Error::Unsupported { what: format!("{op} over {} dims (at most {MAX_RANK})", dims.len()) });
    }
    let len = numel(&dims);
    let mut binder = Binder::new(op, y)?;
    let rx = binder.input("input", x)?;
    let ry = binder.output();
    let layout = binder.finish(ctx)?;
    let (ox, oy) = (layout.operand(rx), layout.operand(ry));
    let params = GatherParams {
        len: len as u32,
        rank: dims.len() as u32,
        x_slot: ox.slot,
        x_off: ox.off + s.x_base as u32,
        y_off: oy.off + s.y_base as u32,
        shape: pack8(&dims.iter().map(|&d| d as u32).collect::<Vec<_>>()),
        x_str: pack8(&xs.iter().map(|&v| v as i32).collect::<Vec<_>>()),
        y_str: pack8(&ys.iter().map(|&v| v as u32).collect::<Vec<_>>()),
        ..Default::default()
    };
    make_step(ctx, Module::Gather, "gather", &params, &[], &layout, grid_1d(ctx, len))
}

/// ONNX `Concat` along `axis` (negative counts from the end): one strided copy per non-empty
/// input into its block of `y`. Inputs share rank and the dims off the axis.
pub fn concat(ctx: &GpuContext, inputs: &[GpuView], axis: i64, y: GpuView) -> Result<Vec<GpuStep>> {
    let op = "concat";
    let Some(first) = inputs.first() else {
        return Err(Error::InvalidArgument { reason: "concat of no inputs".into() });
    };
    let axis = normalize_axis(axis, first.shape.len())?;
    let mut total = 0usize;
    for (i, v) in inputs.iter().enumerate() {
        let same_off_axis = v.shape.len() == first.shape.len()
            && v.shape.iter().zip(first.shape).enumerate().all(|(d, (a, b))| d == axis || a == b);
        if !same_off_axis {
            return Err(Error::shape(
                op,
                format!("input {i} matching {:?} off axis {axis}", first.shape),
                format!("{:?}", v.shape),
            ));
        }
        total = total.saturating_add(v.shape[axis]);
    }
    let (outer, _, inner) = split_at_axis(first.shape, axis);
    let expected = outer.saturating_mul(total).saturating_mul(inner);
    if y.numel() != expected {
        return Err(Error::shape(op, format!("output of {expected} values"), format!("{:?}", y.shape)));
    }
    let mut steps = Vec::new();
    let mut at = 0;
    for v in inputs {
        let len = v.shape[axis];
        if outer * len * inner > 0 {
            let dims = [outer, len, inner];
            let s = Strided {
                dims: &dims,
                x_base: 0,
                x_str: &[(len * inner) as i64, inner as i64, 1],
                y_base: at * inner,
                y_str: &[total * inner, inner, 1],
            };
            steps.push(gather(ctx, op, v, &y, s)?);
        }
        at += len;
    }
    Ok(steps)
}

/// ONNX `Split` along `axis`: part i goes to `outs[i]`, whose shape says its length on the axis
/// (the lengths sum to the input's; the other dims are the input's).
pub fn split(ctx: &GpuContext, x: GpuView, axis: i64, outs: &[GpuView]) -> Result<Vec<GpuStep>> {
    let op = "split";
    let axis = normalize_axis(axis, x.shape.len())?;
    let mut sum = 0usize;
    for (i, o) in outs.iter().enumerate() {
        let same_off_axis = o.shape.len() == x.shape.len()
            && o.shape.iter().zip(x.shape).enumerate().all(|(d, (a, b))| d == axis || a == b);
        if !same_off_axis {
            return Err(Error::shape(
                op,
                format!("output {i} matching {:?} off axis {axis}", x.shape),
                format!("{:?}", o.shape),
            ));
        }
        sum = sum.saturating_add(o.shape[axis]);
    }
    if sum != x.shape[axis] {
        let sizes: Vec<usize> = outs.iter().map(|o| o.shape[axis]).collect();
        return Err(Error::shape(
            op,
            format!("sizes summing to axis {axis} length {}", x.shape[axis]),
            format!("{sizes:?}"),
        ));
    }
    let (outer, dim, inner) = split_at_axis(x.shape, axis);
    let mut steps = Vec::new();
    let mut at = 0;
    for o in outs {
        let len = o.shape[axis];
        if outer * len * inner > 0 {
            let dims = [outer, len, inner];
            let s = Strided {
                dims: &dims,
                x_base: at * inner,
                x_str: &[(dim * inner) as i64, inner as i64, 1],
                y_base: 0,
                y_str: &[len * inner, inner, 1],
            };
            steps.push(gather(ctx, op, &x, o, s)?);
        }
        at += len;
    }
    Ok(steps)
}

/// Per-axis first index, step and count of an ONNX slice: the CPU twin's plan, as vectors.
fn plan_slice(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<(Vec<i64>, Vec<i64>, Vec<usize>)> {
    let plan = crate::ops::plan_slice(shape, starts, ends, axes, steps)?;
    let rank = shape.len();
    Ok((plan.start[..rank].to_vec(), plan.step[..rank].to_vec(), plan.count[..rank].to_vec()))
}

/// ONNX `Slice` with the semantics of [`crate::ops::slice`]: optional `axes` (default 0..len)
/// and `steps` (default 1, negative allowed), ONNX clamping; `y` holds the sliced values.
pub fn slice(
    ctx: &GpuContext,
    x: GpuView,
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
    y: GpuView,
) -> Result<Vec<GpuStep>> {
    let op = "slice";
    let (start, step, count) = plan_slice(x.shape, starts, ends, axes, steps)?;
    let n = numel(&count);
    if y.numel() != n {
        return Err(Error::shape(op, format!("output of shape {count:?} ({n} values)"), format!("{:?}", y.shape)));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let strides = contiguous_strides(x.shape);
    let base: i64 = start.iter().zip(&strides).map(|(&s, &st)| s * st as i64).sum();
    let x_str: Vec<i64> = step.iter().zip(&strides).map(|(&s, &st)| s * st as i64).collect();
    let y_str = contiguous_strides(&count);
    let s = Strided { dims: &count, x_base: base as usize, x_str: &x_str, y_base: 0, y_str: &y_str };
    Ok(vec![gather(ctx, op, &x, &y, s)?])
}

/// ONNX `Transpose`: output dim i is input dim `perm[i]`.
pub fn transpose(ctx: &GpuContext, x: GpuView, perm: &[usize], y: GpuView) -> Result<Vec<GpuStep>> {
    let op = "transpose";
    let rank = x.shape.len();
    check_rank(op, rank)?;
    let mut seen = [false; MAX_RANK];
    if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
        return Err(Error::InvalidArgument {
            reason: format!("transpose: {perm:?} is not a permutation of 0..{rank}"),
        });
    }
    let n = x.numel();
    if y.numel() != n {
        return Err(Error::shape(op, format!("output of {n} values"), format!("{:?}", y.shape)));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let in_strides = contiguous_strides(x.shape);
    let dims: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let x_str: Vec<i64> = perm.iter().map(|&p| in_strides[p] as i64).collect();
    let y_str = contiguous_strides(&dims);
    let s = Strided { dims: &dims, x_base: 0, x_str: &x_str, y_base: 0, y_str: &y_str };
    Ok(vec![gather(ctx, op, &x, &y, s)?])
}

/// Copies the values of `x` to `y` (Reshape, Flatten, Squeeze, Unsqueeze when the executor
/// does not alias them): same count, any shapes. No step when `y` is `x`'s own range.
pub fn copy(ctx: &GpuContext, x: GpuView, y: GpuView) -> Result<Vec<GpuStep>> {
    let op = "copy";
    let n = x.numel();
    if y.numel() != n {
        return Err(Error::shape(op, format!("output of {n} values"), format!("{:?}", y.shape)));
    }
    if n == 0 || (x.buffer == y.buffer && x.offset == y.offset) {
        return Ok(Vec::new());
    }
    let s = Strided { dims: &[n], x_base: 0, x_str: &[1], y_base: 0, y_str: &[1] };
    Ok(vec![gather(ctx, op, &x, &y, s)?])
}

//! Data movement: ONNX `Concat`, `Split`, `Slice` and `Transpose`.

use super::{check_len, check_rank, normalize_axis, numel, split_at_axis, strides_of, MAX_RANK};
use crate::error::{Error, Result};

/// Concatenates `inputs` (data, shape) along `axis` (negative counts from the end). Every input
/// has the same rank and the same dims off the axis; `out` holds the concatenated shape.
pub fn concat(inputs: &[(&[f32], &[usize])], axis: i64, out: &mut [f32]) -> Result<()> {
    let op = "concat";
    let Some(&(_, first)) = inputs.first() else {
        return Err(Error::InvalidArgument { reason: "concat of no inputs".into() });
    };
    let axis = normalize_axis(axis, first.len())?;
    let mut total = 0usize;
    for (i, &(data, shape)) in inputs.iter().enumerate() {
        let same_off_axis =
            shape.len() == first.len() && shape.iter().zip(first).enumerate().all(|(d, (a, b))| d == axis || a == b);
        if !same_off_axis {
            return Err(Error::shape(
                op,
                format!("input {i} matching {first:?} off axis {axis}"),
                format!("{shape:?}"),
            ));
        }
        check_len(op, "input", data.len(), shape)?;
        total = total.saturating_add(shape[axis]);
    }
    let (outer, _, inner) = split_at_axis(first, axis);
    let expected = outer.saturating_mul(total).saturating_mul(inner);
    if out.len() != expected {
        return Err(Error::shape(op, format!("output of {expected} values"), out.len()));
    }
    if expected == 0 {
        return Ok(());
    }
    let row = total * inner;
    for (o, dst) in out.chunks_exact_mut(row).enumerate() {
        let mut at = 0;
        for &(data, shape) in inputs {
            let len = shape[axis] * inner;
            dst[at..at + len].copy_from_slice(&data[o * len..(o + 1) * len]);
            at += len;
        }
    }
    Ok(())
}

/// Splits `input` of `shape` along `axis` into parts of `sizes` (which sum to the axis length);
/// `outs[i]` receives part i.
pub fn split(input: &[f32], shape: &[usize], axis: i64, sizes: &[usize], outs: &mut [&mut [f32]]) -> Result<()> {
    let op = "split";
    check_len(op, "input", input.len(), shape)?;
    let axis = normalize_axis(axis, shape.len())?;
    if sizes.len() != outs.len() {
        return Err(Error::shape(op, format!("{} outputs (one per size)", sizes.len()), outs.len()));
    }
    let sum = sizes.iter().fold(0usize, |s, &v| s.saturating_add(v));
    if sum != shape[axis] {
        return Err(Error::shape(
            op,
            format!("sizes summing to axis {axis} length {}", shape[axis]),
            format!("{sizes:?}"),
        ));
    }
    let (outer, dim, inner) = split_at_axis(shape, axis);
    for (i, (&s, o)) in sizes.iter().zip(outs.iter()).enumerate() {
        if o.len() != outer * s * inner {
            return Err(Error::shape(op, format!("output {i} of {} values", outer * s * inner), o.len()));
        }
    }
    if input.is_empty() {
        return Ok(());
    }
    let row = dim * inner;
    for (o, src) in input.chunks_exact(row).enumerate() {
        let mut at = 0;
        for (&s, dst) in sizes.iter().zip(outs.iter_mut()) {
            let len = s * inner;
            dst[o * len..(o + 1) * len].copy_from_slice(&src[at..at + len]);
            at += len;
        }
    }
    Ok(())
}

/// Per-axis (first index, step, count) of a slice, in fixed arrays.
pub(crate) struct SlicePlan {
    pub start: [i64; MAX_RANK],
    pub step: [i64; MAX_RANK],
    pub count: [usize; MAX_RANK],
}

/// Per-axis first index, step and count of an ONNX slice (shared with the GPU's slice).
pub(crate) fn plan_slice(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<SlicePlan> {
    let op = "slice";
    check_rank(op, shape.len())?;
    let n = starts.len();
    if ends.len() != n || axes.is_some_and(|a| a.len() != n) || steps.is_some_and(|s| s.len() != n) {
        return Err(Error::shape(
            op,
            format!("ends, axes and steps of {n} entries (as starts)"),
            format!("ends {ends:?}, axes {axes:?}, steps {steps:?}"),
        ));
    }
    let mut plan = SlicePlan { start: [0; MAX_RANK], step: [1; MAX_RANK], count: [0; MAX_RANK] };
    let mut seen = [false; MAX_RANK];
    for (d, &dim) in shape.iter().enumerate() {
        plan.count[d] = dim;
    }
    for i in 0..n {
        let axis = match axes {
            Some(a) => normalize_axis(a[i], shape.len())?,
            None if i < shape.len() => i,
            None => return Err(Error::shape(op, format!("at most {} starts", shape.len()), n)),
        };
        if std::mem::replace(&mut seen[axis], true) {
            return Err(Error::InvalidArgument { reason: format!("slice: axis {axis} appears twice") });
        }
        let step = steps.map_or(1, |s| s[i]);
        if step == 0 {
            return Err(Error::InvalidArgument { reason: format!("slice: step 0 on axis {axis}") });
        }
        // ONNX clamping (INT64_MAX / INT64_MIN sentinels included): negatives count from the end,
        // then starts clamp to [0, dim] (positive step) or [0, dim - 1] (negative step), ends to
        // [0, dim] or [-1, dim - 1].
        let dim = shape[axis] as i64;
        let wrap = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let (s, e) = (wrap(starts[i]), wrap(ends[i]));
        let (s, e) = if step > 0 || dim == 0 {
            (s.clamp(0, dim), e.clamp(0, dim))
        } else {
            (s.clamp(0, dim - 1), e.clamp(-1, dim - 1))
        };
        let count = if dim == 0 {
            0
        } else if step > 0 {
            if e > s {
                (e - s + step - 1) / step
            } else {
                0
            }
        } else if s > e {
            (s - e + (-step) - 1) / (-step)
        } else {
            0
        };
        plan.start[axis] = s;
        plan.step[axis] = step;
        plan.count[axis] = count as usize;
    }
    Ok(plan)
}

/// The output shape of [`slice()`].
pub fn slice_output_shape(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<Vec<usize>> {
    let plan = plan_slice(shape, starts, ends, axes, steps)?;
    Ok(plan.count[..shape.len()].to_vec())
}

/// ONNX `Slice`: `starts`, `ends`, optional `axes` (default 0..len) and `steps` (default 1),
/// with ONNX clamping and negative steps. `out` holds [`slice_output_shape`].
pub fn slice(
    input: &[f32],
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
    out: &mut [f32],
) -> Result<()> {
    let op = "slice";
    check_len(op, "input", input.len(), shape)?;
    let plan = plan_slice(shape, starts, ends, axes, steps)?;
    let rank = shape.len();
    let counts = &plan.count[..rank];
    let n = numel(counts);
    if out.len() != n {
        return Err(Error::shape(op, format!("output of shape {counts:?} ({n} values)"), out.len()));
    }
    if n == 0 {
        return Ok(());
    }
    if rank == 0 {
        out[0] = input[0];
        return Ok(());
    }
    let strides = strides_of(shape);
    // Element offsets may step backwards: track them as i64.
    let base: i64 = (0..rank).map(|d| plan.start[d] * strides[d] as i64).sum();
    let step: [i64; MAX_RANK] = std::array::from_fn(|d| if d < rank { plan.step[d] * strides[d] as i64 } else { 0 });
    let inner = counts[rank - 1];
    let inner_step = step[rank - 1];
    let mut idx = [0usize; MAX_RANK];
    let mut off = base;
    for dst in out.chunks_exact_mut(inner) {
        if inner_step == 1 {
            let s = off as usize;
            dst.copy_from_slice(&input[s..s + inner]);
        } else {
            for (t, o) in dst.iter_mut().enumerate() {
                *o = input[(off + t as i64 * inner_step) as usize];
            }
        }
        let mut d = rank - 1;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            off += step[d];
            if idx[d] < counts[d] {
                break;
            }
            off -= step[d] * counts[d] as i64;
            idx[d] = 0;
        }
    }
    Ok(())
}

/// ONNX `Transpose`: output dim i is input dim `perm[i]` (ONNX's default perm reverses the dims;
/// the caller passes it explicitly).
pub fn transpose(input: &[f32], shape: &[usize], perm: &[usize], out: &mut [f32]) -> Result<()> {
    let op = "transpose";
    check_len(op, "input", input.len(), shape)?;
    check_len(op, "output", out.len(), shape)?;
    let rank = shape.len();
    check_rank(op, rank)?;
    let mut seen = [false; MAX_RANK];
    if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
        return Err(Error::InvalidArgument {
            reason: format!("transpose: {perm:?} is not a permutation of 0..{rank}"),
        });
    }
    if input.is_empty() {
        return Ok(());
    }
    let in_strides = strides_of(shape);
    // Output loop nest: dims shape[perm[i]], reading the input at stride in_strides[perm[i]].
    // Size-1 dims are dropped and dims that stay contiguous in the input are merged.
    let mut dims = [1usize; MAX_RANK];
    let mut st = [0usize; MAX_RANK];
    let mut r = 0;
    for &p in perm {
        let (d, s) = (shape[p], in_strides[p]);
        if d == 1 {
            continue;
        }
        if r > 0 && st[r - 1] == s * d {
            dims[r - 1] *= d;
            st[r - 1] = s;
        } else {
            dims[r] = d;
            st[r] = s;
            r += 1;
        }
    }
    if r == 0 {
        out[0] = input[0];
        return Ok(());
    }
    let (inner, inner_stride) = (dims[r - 1], st[r - 1]);
    let mut idx = [0usize; MAX_RANK];
    let mut off = 0usize;
    for dst in out.chunks_exact_mut(inner) {
        if inner_stride == 1 {
            dst.copy_from_slice(&input[off..off + inner]);
        } else {
            for (o, &v) in dst.iter_mut().zip(input[off..].iter().step_by(inner_stride)) {
                *o = v;
            }
        }
        let mut d = r - 1;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            off += st[d];
            if idx[d] < dims[d] {
                break;
            }
            off -= st[d] * dims[d];
            idx[d] = 0;
        }
    }
    Ok(())
}

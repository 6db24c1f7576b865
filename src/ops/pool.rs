//! 2-D pooling on NCHW: ONNX `MaxPool`, `AveragePool`, `GlobalAveragePool`, `GlobalMaxPool`.
//!
//! Output size per spatial axis (span = dilation * (kernel - 1) + 1, pads = begin + end):
//!
//! ```text
//! floor mode: out = floor((in + pads - span) / stride) + 1
//! ceil mode:  out = ceil((in + pads - span) / stride) + 1, minus one if the last window would
//!             start in the end padding (ONNX opset 19+ note, PyTorch and ONNX Runtime behaviour)
//! ```

use super::gemm::{with_offsets, with_scratch};
use super::{check_len, numel};
use crate::error::{Error, Result};

/// Parameters of a 2-D pooling window.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool2d {
    /// [kH, kW], each >= 1.
    pub kernel: [usize; 2],
    /// [stride_h, stride_w], each >= 1.
    pub strides: [usize; 2],
    /// ONNX order [top, left, bottom, right]; each below the dilated kernel extent, so that
    /// every window sees at least one input value.
    pub pads: [usize; 4],
    /// [dilation_h, dilation_w], each >= 1 (AveragePool has them from opset 19).
    pub dilations: [usize; 2],
    /// Round the output size up (see the module docs).
    pub ceil_mode: bool,
    /// AveragePool only: divide by the window size including padding (ONNX
    /// `count_include_pad = 1`; the window is still clipped to the padded extent) instead of by
    /// the number of input values it covers.
    pub count_include_pad: bool,
}

impl Pool2d {
    /// A k x k window with stride k, no padding (the ONNX defaults apart from the stride).
    pub fn square(k: usize) -> Pool2d {
        Pool2d {
            kernel: [k, k],
            strides: [k, k],
            pads: [0; 4],
            dilations: [1, 1],
            ceil_mode: false,
            count_include_pad: false,
        }
    }
}

/// One spatial axis of a pooling window.
#[derive(Clone, Copy, Debug)]
struct Axis {
    input: usize,
    out: usize,
    k: usize,
    s: usize,
    d: usize,
    pad_begin: usize,
    pad_end: usize,
}

impl Axis {
    #[allow(clippy::too_many_arguments)]
    fn new(
        op: &'static str,
        input: usize,
        k: usize,
        s: usize,
        d: usize,
        pa: usize,
        pb: usize,
        ceil: bool,
    ) -> Result<Axis> {
        if k == 0 || s == 0 || d == 0 {
            return Err(Error::InvalidArgument {
                reason: format!("{op}: kernel {k}, stride {s} and dilation {d} must be >= 1"),
            });
        }
        let span = d.saturating_mul(k - 1).saturating_add(1);
        if pa >= span || pb >= span {
            return Err(Error::InvalidArgument {
                reason: format!("{op}: pads {pa}+{pb} must be below the window extent {span}"),
            });
        }
        let padded = input.saturating_add(pa).saturating_add(pb);
        if padded < span {
            return Err(Error::shape(op, format!("spatial size + pads >= window extent {span}"), padded));
        }
        let steps = padded - span;
        let mut out = if ceil { steps.div_ceil(s) + 1 } else { steps / s + 1 };
        if ceil && (out - 1) * s >= input + pa {
            out -= 1;
        }
        let axis = Axis { input, out, k, s, d, pad_begin: pa, pad_end: pb };
        // With dilation a window can straddle the input without touching it; refuse those.
        for o in 0..out {
            let (lo, hi) = axis.taps(o, input);
            if lo >= hi {
                return Err(Error::InvalidArgument {
                    reason: format!("{op}: output position {o} has a window with no input value"),
                });
            }
        }
        Ok(axis)
    }

    /// Taps t in 0..k of output `o` whose position o * s - pad_begin + t * d lies in
    /// -pad_begin..limit - pad_begin, i.e. in 0..limit once shifted by the begin pad.
    fn taps_in(&self, o: usize, limit: usize) -> (usize, usize) {
        let base = (o * self.s) as isize - self.pad_begin as isize;
        let d = self.d as isize;
        let lo = if base >= 0 { 0 } else { (-base + d - 1) / d };
        let room = limit as isize - base;
        let hi = if room <= 0 { 0 } else { (room + d - 1) / d };
        let hi = (hi as usize).min(self.k);
        ((lo as usize).min(hi), hi)
    }

    /// The outputs whose taps all land on input values (one run, possibly empty).
    fn interior(&self) -> std::ops::Range<usize> {
        let full = |o: usize| self.taps(o, self.input) == (0, self.k);
        let lo = (0..self.out).find(|&o| full(o)).unwrap_or(self.out);
        let hi = (lo..self.out).find(|&o| !full(o)).unwrap_or(self.out);
        lo..hi
    }

    /// Taps that land on input values.
    fn taps(&self, o: usize, input: usize) -> (usize, usize) {
        self.taps_in(o, input)
    }

    /// Taps within the padded extent (for count_include_pad).
    fn padded_taps(&self, o: usize) -> usize {
        let base = (o * self.s) as isize;
        let d = self.d as isize;
        let room = (self.pad_begin + self.input + self.pad_end) as isize - base;
        let hi = if room <= 0 { 0 } else { ((room + d - 1) / d) as usize };
        hi.min(self.k)
    }

    /// Input position of tap t of output o (valid taps only).
    #[inline]
    fn pos(&self, o: usize, t: usize) -> usize {
        o * self.s + t * self.d - self.pad_begin
    }
}

fn axes(op: &'static str, x_shape: &[usize], p: &Pool2d) -> Result<(usize, Axis, Axis)> {
    let [n, c, h, w] = *x_shape else {
        return Err(Error::shape(op, "input [N, C, H, W]", format!("{x_shape:?}")));
    };
    let [pt, pl, pb, pr] = p.pads;
    let ah = Axis::new(op, h, p.kernel[0], p.strides[0], p.dilations[0], pt, pb, p.ceil_mode)?;
    let aw = Axis::new(op, w, p.kernel[1], p.strides[1], p.dilations[1], pl, pr, p.ceil_mode)?;
    Ok((n * c, ah, aw))
}

/// The output shape [N, C, OH, OW] of a 2-D pooling.
pub fn pool2d_output_shape(x_shape: &[usize], p: &Pool2d) -> Result<[usize; 4]> {
    let (_, ah, aw) = axes("pool2d", x_shape, p)?;
    Ok([x_shape[0], x_shape[1], ah.out, aw.out])
}

fn check_io(
    op: &'static str,
    x: &[f32],
    x_shape: &[usize],
    planes: usize,
    ah: &Axis,
    aw: &Axis,
    out: &[f32],
) -> Result<()> {
    check_len(op, "input", x.len(), x_shape)?;
    let n = planes * ah.out * aw.out;
    if out.len() != n {
        return Err(Error::shape(op, format!("output of {n} values"), out.len()));
    }
    Ok(())
}

/// Runs `reduce(init, value)` over every window of every plane and stores `finish(acc, oh, ow,
/// taps)`, where taps is the number of input values the window covered: the walk max and
/// average pooling share.
#[allow(clippy::too_many_arguments)] // the op's arguments plus the fold (init, step, finish)
fn pool_windows(
    op: &'static str,
    x: &[f32],
    x_shape: &[usize],
    p: &Pool2d,
    out: &mut [f32],
    init: f32,
    reduce: impl Fn(f32, f32) -> f32,
    finish: impl Fn(f32, &Axis, usize, &Axis, usize, usize) -> f32,
) -> Result<()> {
    let (planes, ah, aw) = axes(op, x_shape, p)?;
    check_io(op, x, x_shape, planes, &ah, &aw, out)?;
    let (ip, op_len) = (ah.input * aw.input, ah.out * aw.out);
    if op_len == 0 || ip == 0 {
        return Ok(());
    }
    for (src, dst) in x.chunks_exact(ip).zip(out.chunks_exact_mut(op_len)) {
        for oh in 0..ah.out {
            let (i0, i1) = ah.taps(oh, ah.input);
            for ow in 0..aw.out {
                let (j0, j1) = aw.taps(ow, aw.input);
                let mut acc = init;
                for i in i0..i1 {
                    let row = &src[ah.pos(oh, i) * aw.input..][..aw.input];
                    for j in j0..j1 {
                        acc = reduce(acc, row[aw.pos(ow, j)]);
                    }
                }
                dst[oh * aw.out + ow] = finish(acc, &ah, oh, &aw, ow, (i1 - i0) * (j1 - j0));
            }
        }
    }
    Ok(())
}

/// ONNX `MaxPool` (2-D): the maximum over each window, padding ignored.
///
/// Max is separable: each input row is first reduced along W into a scratch of H x OW maxima,
/// then OH output rows are maxima of those rows. A k x k window costs 2k comparisons instead
/// of k^2, and both passes run over contiguous slices (vectorised) except near the edges.
/// Same result as the window walk: max ignores order (and NaN, as `f32::max` does).
pub fn max_pool2d(x: &[f32], x_shape: &[usize], p: &Pool2d, out: &mut [f32]) -> Result<()> {
    let (planes, ah, aw) = axes("max_pool2d", x_shape, p)?;
    check_io("max_pool2d", x, x_shape, planes, &ah, &aw, out)?;
    let (ip, op_len) = (ah.input * aw.input, ah.out * aw.out);
    if op_len == 0 || ip == 0 {
        return Ok(());
    }
    let interior = aw.interior();
    // Each output's first and last tap along each axis, worked out once (they take integer
    // divisions, which would otherwise dominate small maps such as SPPF's 10 x 10).
    with_offsets(2 * (aw.out + ah.out), |taps| {
        let (tw, th) = taps.split_at_mut(2 * aw.out);
        for (axis, table) in [(&aw, &mut *tw), (&ah, &mut *th)] {
            for (o, pair) in table.chunks_exact_mut(2).enumerate() {
                (pair[0], pair[1]) = axis.taps(o, axis.input);
            }
        }
        let (tw, th) = (&*tw, &*th);
        with_scratch(ah.input * aw.out, |rows| {
            for (src, dst) in x.chunks_exact(ip).zip(out.chunks_exact_mut(op_len)) {
                for (srow, hrow) in src.chunks_exact(aw.input).zip(rows.chunks_exact_mut(aw.out)) {
                    max_along(srow, hrow, &aw, interior.clone(), tw);
                }
                for (oh, drow) in dst.chunks_exact_mut(aw.out).enumerate() {
                    let (i0, i1) = (th[2 * oh], th[2 * oh + 1]);
                    drow.copy_from_slice(&rows[ah.pos(oh, i0) * aw.out..][..aw.out]);
                    for i in i0 + 1..i1 {
                        for (d, &v) in drow.iter_mut().zip(&rows[ah.pos(oh, i) * aw.out..][..aw.out]) {
                            *d = d.max(v);
                        }
                    }
                }
            }
        })
    });
    Ok(())
}

/// dst[o] = the maximum of the valid taps of output o along axis `a` of the row `src`;
/// `interior` is [`Axis::interior`], `taps` holds each output's tap range (first, end).
fn max_along(src: &[f32], dst: &mut [f32], a: &Axis, interior: std::ops::Range<usize>, taps: &[usize]) {
    // With stride 1 the interior run is a running maximum of k shifted slices.
    let (lo, hi) = (interior.start, interior.end);
    let edge = |o: usize, d: &mut f32| {
        *d = (taps[2 * o]..taps[2 * o + 1]).fold(f32::NEG_INFINITY, |m, j| m.max(src[a.pos(o, j)]));
    };
    if a.s != 1 || lo == hi {
        dst.iter_mut().enumerate().for_each(|(o, d)| edge(o, d));
        return;
    }
    let (len, base) = (hi - lo, a.pos(lo, 0));
    let run = &mut dst[lo..hi];
    run.copy_from_slice(&src[base..][..len]);
    for j in 1..a.k {
        for (d, &v) in run.iter_mut().zip(&src[base + j * a.d..][..len]) {
            *d = d.max(v);
        }
    }
    (0..lo).chain(hi..a.out).for_each(|o| edge(o, &mut dst[o]));
}

/// ONNX `AveragePool` (2-D), with `count_include_pad` and `ceil_mode` as in ONNX Runtime.
pub fn avg_pool2d(x: &[f32], x_shape: &[usize], p: &Pool2d, out: &mut [f32]) -> Result<()> {
    pool_windows(
        "avg_pool2d",
        x,
        x_shape,
        p,
        out,
        0.0,
        |s, v| s + v,
        |s, ah, oh, aw, ow, taps| {
            let count = if p.count_include_pad { ah.padded_taps(oh) * aw.padded_taps(ow) } else { taps };
            s / count as f32
        },
    )
}

fn global(op: &'static str, x: &[f32], x_shape: &[usize], out: &mut [f32]) -> Result<(usize, usize)> {
    check_len(op, "input", x.len(), x_shape)?;
    if x_shape.len() < 3 {
        return Err(Error::shape(op, "input [N, C, spatial...]", format!("{x_shape:?}")));
    }
    let planes = x_shape[0].saturating_mul(x_shape[1]);
    if out.len() != planes {
        return Err(Error::shape(op, format!("output [N, C, 1, ..] of {planes} values"), out.len()));
    }
    Ok((planes, numel(&x_shape[2..])))
}

/// ONNX `GlobalAveragePool`: the mean of every spatial plane; `out` is [N, C, 1, ...].
pub fn global_avg_pool(x: &[f32], x_shape: &[usize], out: &mut [f32]) -> Result<()> {
    let (planes, len) = global("global_avg_pool", x, x_shape, out)?;
    if planes == 0 {
        return Ok(());
    }
    if len == 0 {
        return Err(Error::shape("global_avg_pool", "non-empty spatial planes", format!("{x_shape:?}")));
    }
    for (o, plane) in out.iter_mut().zip(x.chunks_exact(len)) {
        *o = sum(plane) / len as f32;
    }
    Ok(())
}

/// ONNX `GlobalMaxPool`: the maximum of every spatial plane; `out` is [N, C, 1, ...].
pub fn global_max_pool(x: &[f32], x_shape: &[usize], out: &mut [f32]) -> Result<()> {
    let (planes, len) = global("global_max_pool", x, x_shape, out)?;
    if planes == 0 {
        return Ok(());
    }
    if len == 0 {
        return Err(Error::shape("global_max_pool", "non-empty spatial planes", format!("{x_shape:?}")));
    }
    for (o, plane) in out.iter_mut().zip(x.chunks_exact(len)) {
        *o = plane.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    }
    Ok(())
}

/// Sum with eight accumulators: vectorises and keeps rounding error small.
pub(crate) fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

//! ONNX `Softmax` (opset 13 semantics: along one axis), numerically stable.

use super::{check_len, math, normalize_axis, split_at_axis};
use crate::error::Result;

/// Lanes of the strided (axis not last) path: per-lane max and sum live in stack arrays.
const LANES: usize = 64;

/// out = exp(x - max) / sum(exp(x - max)) along `axis` (negative counts from the end).
pub fn softmax(input: &[f32], shape: &[usize], axis: i64, out: &mut [f32]) -> Result<()> {
    let op = "softmax";
    check_len(op, "input", input.len(), shape)?;
    check_len(op, "output", out.len(), shape)?;
    let axis = normalize_axis(axis, shape.len())?;
    let (outer, len, inner) = split_at_axis(shape, axis);
    if input.is_empty() {
        return Ok(());
    }
    if inner == 1 {
        for (src, dst) in input.chunks_exact(len).zip(out.chunks_exact_mut(len)) {
            let max = src.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            for (o, &v) in dst.iter_mut().zip(src) {
                *o = math::exp(v - max);
            }
            let inv = 1.0 / super::pool::sum(dst);
            dst.iter_mut().for_each(|o| *o *= inv);
        }
        return Ok(());
    }
    // Axis with a stride: work on up to LANES neighbouring inner positions at once, so every
    // pass reads contiguous runs.
    let block = len * inner;
    for o in 0..outer {
        let src = &input[o * block..][..block];
        let dst = &mut out[o * block..][..block];
        let mut i0 = 0;
        while i0 < inner {
            let lanes = LANES.min(inner - i0);
            let mut max = [f32::NEG_INFINITY; LANES];
            for a in 0..len {
                for (m, &v) in max[..lanes].iter_mut().zip(&src[a * inner + i0..][..lanes]) {
                    *m = m.max(v);
                }
            }
            let mut sum = [0f32; LANES];
            for a in 0..len {
                let d = &mut dst[a * inner + i0..][..lanes];
                for (((o, &v), &m), s) in d.iter_mut().zip(&src[a * inner + i0..]).zip(&max).zip(sum.iter_mut()) {
                    *o = math::exp(v - m);
                    *s += *o;
                }
            }
            let inv: [f32; LANES] = std::array::from_fn(|i| 1.0 / sum[i]);
            for a in 0..len {
                for (o, &r) in dst[a * inner + i0..][..lanes].iter_mut().zip(&inv) {
                    *o *= r;
                }
            }
            i0 += lanes;
        }
    }
    Ok(())
}

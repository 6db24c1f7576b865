//! ONNX `LayerNormalization` (opset 17): normalise over the trailing dims from `axis`.

use super::{check_len, normalize_axis, numel};
use crate::error::{Error, Result};

/// y = (x - mean) / sqrt(var + epsilon) * scale + bias, with mean and (biased) variance over
/// dims `axis..` of `shape`. `scale` and `bias` hold one value per normalised element (the
/// shape `shape[axis..]`; other broadcast forms of ONNX are refused). Mean and variance are
/// computed in f64 with two passes (ONNX `stash_type` = 1 asks for at least f32), which keeps
/// rows whose mean is large against their spread accurate.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    input: &[f32],
    shape: &[usize],
    axis: i64,
    scale: &[f32],
    bias: Option<&[f32]>,
    epsilon: f32,
    out: &mut [f32],
) -> Result<()> {
    let op = "layer_norm";
    check_len(op, "input", input.len(), shape)?;
    check_len(op, "output", out.len(), shape)?;
    let axis = normalize_axis(axis, shape.len())?;
    let len = numel(&shape[axis..]);
    if scale.len() != len {
        return Err(Error::shape(op, format!("scale of shape {:?} ({len} values)", &shape[axis..]), scale.len()));
    }
    if let Some(b) = bias {
        if b.len() != len {
            return Err(Error::shape(op, format!("bias of shape {:?} ({len} values)", &shape[axis..]), b.len()));
        }
    }
    if epsilon.is_nan() || epsilon < 0.0 {
        return Err(Error::InvalidArgument { reason: format!("layer_norm epsilon {epsilon} must be >= 0") });
    }
    if input.is_empty() || len == 0 {
        return Ok(());
    }
    let inv_n = 1.0 / len as f64;
    for (src, dst) in input.chunks_exact(len).zip(out.chunks_exact_mut(len)) {
        // Statistics in f64: x - mean cancels when the mean is large against the spread, and
        // f32 would keep only the rounding error of the mean there.
        let mean = sum64(src.iter().map(|&v| v as f64)) * inv_n;
        let var = sum64(src.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean))) * inv_n;
        let r = 1.0 / (var + epsilon as f64).sqrt();
        match bias {
            Some(b) => {
                for (((d, &v), &s), &bb) in dst.iter_mut().zip(src).zip(scale).zip(b) {
                    *d = ((v as f64 - mean) * r) as f32 * s + bb;
                }
            }
            None => {
                for ((d, &v), &s) in dst.iter_mut().zip(src).zip(scale) {
                    *d = ((v as f64 - mean) * r) as f32 * s;
                }
            }
        }
    }
    Ok(())
}

/// Sum with four independent accumulators (so the loop vectorises).
fn sum64(values: impl Iterator<Item = f64>) -> f64 {
    let mut acc = [0f64; 4];
    for (i, v) in values.enumerate() {
        acc[i % 4] += v;
    }
    acc.iter().sum()
}

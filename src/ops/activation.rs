//! Unary activations (ONNX `Relu`, `Sigmoid`, `Elu`, `Gelu`, `LeakyRelu`, `HardSigmoid`,
//! `HardSwish`, `Clip`, SiLU as `Mul(x, Sigmoid(x))`, and ProAct's clipped ReLU), out of place and
//! in place. [`Activation`] is also what [`super::conv2d`] fuses after bias.

use super::gemm::Kernel;
use super::{check_len, math, numel};
use crate::error::{Error, Result};

/// The threshold of a clipped ReLU: one for the layer or one per channel (axis 1).
#[derive(Clone, Debug, PartialEq)]
pub enum ClipThreshold {
    PerLayer(f32),
    /// One threshold per channel on axis 1 (output channel of a conv).
    PerChannel(Vec<f32>),
}

/// An elementwise activation.
#[derive(Clone, Debug, PartialEq)]
pub enum Activation {
    /// Identity.
    None,
    /// max(x, 0).
    Relu,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// x * sigmoid(x) (SiLU, "swish"; YOLOv8's activation).
    Silu,
    /// x for x > 0, alpha (e^x - 1) otherwise (ONNX `Elu`, default alpha 1).
    Elu { alpha: f32 },
    /// x * Phi(x) with the exact normal CDF (ONNX `Gelu`, approximate = "none").
    Gelu,
    /// ProAct / FitAct clipped ReLU: x if 0 < x <= T, else 0. Values above the threshold go to
    /// zero (not to T): a large activation there signals a fault, not a signal to keep.
    ClippedRelu(ClipThreshold),
    /// ProAct's clipping on a SiLU network (YOLOv8's): silu(x) if it is at most T, else 0 (a
    /// NaN goes to 0 too). SiLU is bounded below (about -0.28), so only the top needs a bound.
    ClippedSilu(ClipThreshold),
    /// x for x >= 0, alpha x otherwise (ONNX `LeakyRelu`, default alpha 0.01).
    LeakyRelu { alpha: f32 },
    /// max(0, min(1, alpha x + beta)) (ONNX `HardSigmoid`, defaults 0.2 and 0.5).
    HardSigmoid { alpha: f32, beta: f32 },
    /// x * max(0, min(1, x / 6 + 1 / 2)) (ONNX `HardSwish`).
    HardSwish,
    /// min(max(x, min), max) (ONNX `Clip`; ReLU6 is min 0, max 6).
    Clip { min: f32, max: f32 },
}

impl Activation {
    /// Checks the per-channel threshold count against `channels`.
    pub(crate) fn check_channels(&self, op: &'static str, channels: usize) -> Result<()> {
        if let Activation::ClippedRelu(ClipThreshold::PerChannel(t))
        | Activation::ClippedSilu(ClipThreshold::PerChannel(t)) = self
        {
            if t.len() != channels {
                return Err(Error::shape(op, format!("{channels} clip thresholds"), t.len()));
            }
        }
        Ok(())
    }

    /// Applies the activation in place to values that all belong to `channel` (per-layer
    /// activations ignore it). The caller has checked the channel count. `FMA`: the caller is
    /// compiled with fused multiply-add (the exp polynomials use it).
    #[inline(always)]
    pub(crate) fn apply_channel<const FMA: bool>(&self, data: &mut [f32], channel: usize) {
        match self {
            Activation::None => {}
            Activation::Relu => data.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Sigmoid => data.iter_mut().for_each(|v| *v = math::sigmoid::<FMA>(*v)),
            Activation::Silu => data.iter_mut().for_each(|v| *v = math::silu::<FMA>(*v)),
            Activation::Elu { alpha } => {
                let a = *alpha;
                data.iter_mut().for_each(|v| *v = if *v > 0.0 { *v } else { a * (math::exp_with::<FMA>(*v) - 1.0) })
            }
            Activation::Gelu => data.iter_mut().for_each(|v| *v *= math::normal_cdf::<FMA>(*v)),
            Activation::ClippedRelu(t) => {
                let t = match t {
                    ClipThreshold::PerLayer(t) => *t,
                    ClipThreshold::PerChannel(ts) => ts[channel],
                };
                data.iter_mut().for_each(|v| *v = if *v > 0.0 && *v <= t { *v } else { 0.0 })
            }
            Activation::ClippedSilu(t) => {
                let t = match t {
                    ClipThreshold::PerLayer(t) => *t,
                    ClipThreshold::PerChannel(ts) => ts[channel],
                };
                data.iter_mut().for_each(|v| {
                    let y = math::silu::<FMA>(*v);
                    *v = if y <= t { y } else { 0.0 }
                })
            }
            Activation::LeakyRelu { alpha } => {
                let a = *alpha;
                data.iter_mut().for_each(|v| *v = if *v >= 0.0 { *v } else { a * *v })
            }
            Activation::HardSigmoid { alpha, beta } => {
                let (a, b) = (*alpha, *beta);
                data.iter_mut().for_each(|v| *v = (a * *v + b).clamp(0.0, 1.0))
            }
            Activation::HardSwish => data.iter_mut().for_each(|v| *v *= (*v * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0)),
            Activation::Clip { min, max } => {
                let (lo, hi) = (*min, *max);
                data.iter_mut().for_each(|v| *v = v.max(lo).min(hi))
            }
        }
    }

    pub(crate) fn is_per_channel(&self) -> bool {
        matches!(
            self,
            Activation::ClippedRelu(ClipThreshold::PerChannel(_))
                | Activation::ClippedSilu(ClipThreshold::PerChannel(_))
        )
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            Activation::Clip { min, max } if min > max => {
                Err(Error::InvalidArgument { reason: format!("Clip min {min} is above max {max}") })
            }
            _ => Ok(()),
        }
    }
}

/// Applies `act` in place to a tensor of `shape` (per-channel thresholds index axis 1).
pub fn activation_inplace(data: &mut [f32], shape: &[usize], act: &Activation) -> Result<()> {
    check_len("activation", "data", data.len(), shape)?;
    act.validate()?;
    let kern = Kernel::current();
    if !act.is_per_channel() {
        kern.activate(act, data, 0);
        return Ok(());
    }
    if shape.len() < 2 {
        return Err(Error::shape("activation", "a tensor with a channel axis (rank >= 2)", format!("{shape:?}")));
    }
    let (c, inner) = (shape[1], numel(&shape[2..]));
    act.check_channels("activation", c)?;
    if inner == 0 {
        return Ok(());
    }
    for (i, plane) in data.chunks_exact_mut(inner).enumerate() {
        kern.activate(act, plane, i % c);
    }
    Ok(())
}

/// out = act(x) for a tensor of `shape`.
pub fn activation(x: &[f32], shape: &[usize], act: &Activation, out: &mut [f32]) -> Result<()> {
    check_len("activation", "input", x.len(), shape)?;
    check_len("activation", "output", out.len(), shape)?;
    out.copy_from_slice(x);
    activation_inplace(out, shape, act)
}

fn same_len(op: &'static str, x: &[f32], out: &[f32]) -> Result<()> {
    if x.len() != out.len() {
        return Err(Error::shape(op, format!("output of {} values", x.len()), out.len()));
    }
    Ok(())
}

macro_rules! simple_unary {
    ($(#[$doc:meta])* $name:ident, $inplace:ident, $act:expr) => {
        $(#[$doc])*
        pub fn $name(x: &[f32], out: &mut [f32]) -> Result<()> {
            same_len(stringify!($name), x, out)?;
            out.copy_from_slice(x);
            Kernel::current().activate(&$act, out, 0);
            Ok(())
        }

        $(#[$doc])*
        /// In place.
        pub fn $inplace(data: &mut [f32]) {
            Kernel::current().activate(&$act, data, 0)
        }
    };
}

simple_unary!(
    /// ReLU: max(x, 0).
    relu,
    relu_inplace,
    Activation::Relu
);
simple_unary!(
    /// Sigmoid: 1 / (1 + e^-x).
    sigmoid,
    sigmoid_inplace,
    Activation::Sigmoid
);
simple_unary!(
    /// SiLU: x * sigmoid(x).
    silu,
    silu_inplace,
    Activation::Silu
);
simple_unary!(
    /// GELU with the exact normal CDF: x * Phi(x).
    gelu,
    gelu_inplace,
    Activation::Gelu
);

/// ELU: x for x > 0, alpha (e^x - 1) otherwise.
pub fn elu(x: &[f32], alpha: f32, out: &mut [f32]) -> Result<()> {
    same_len("elu", x, out)?;
    out.copy_from_slice(x);
    elu_inplace(out, alpha);
    Ok(())
}

/// ELU in place.
pub fn elu_inplace(data: &mut [f32], alpha: f32) {
    Kernel::current().activate(&Activation::Elu { alpha }, data, 0)
}

/// ProAct clipped ReLU: x if 0 < x <= T else 0, with T per layer or per channel (axis 1 of
/// `shape`).
pub fn clipped_relu(x: &[f32], shape: &[usize], threshold: &ClipThreshold, out: &mut [f32]) -> Result<()> {
    check_len("clipped_relu", "input", x.len(), shape)?;
    check_len("clipped_relu", "output", out.len(), shape)?;
    out.copy_from_slice(x);
    clipped_relu_inplace(out, shape, threshold)
}

/// Clipped ReLU in place.
pub fn clipped_relu_inplace(data: &mut [f32], shape: &[usize], threshold: &ClipThreshold) -> Result<()> {
    check_len("clipped_relu", "data", data.len(), shape)?;
    let clip =
        |plane: &mut [f32], t: f32| plane.iter_mut().for_each(|v| *v = if *v > 0.0 && *v <= t { *v } else { 0.0 });
    match threshold {
        ClipThreshold::PerLayer(t) => clip(data, *t),
        ClipThreshold::PerChannel(ts) => {
            if shape.len() < 2 {
                return Err(Error::shape(
                    "clipped_relu",
                    "a tensor with a channel axis (rank >= 2)",
                    format!("{shape:?}"),
                ));
            }
            let (c, inner) = (shape[1], numel(&shape[2..]));
            if ts.len() != c {
                return Err(Error::shape("clipped_relu", format!("{c} clip thresholds"), ts.len()));
            }
            if inner > 0 {
                for (i, plane) in data.chunks_exact_mut(inner).enumerate() {
                    clip(plane, ts[i % c]);
                }
            }
        }
    }
    Ok(())
}

//! Temporal delta convolution (PAPERS.md section 2): on a stream of frames, a conv layer keeps
//! its reference input x_ref and its accumulated pre-activation output y, and for a new input x
//! adds only what changed:
//!
//! ```text
//! dx = x - x_ref, zeroed where |dx| < theta
//! y += W * dx        (exact by linearity; the bias stays in y from the keyframe)
//! x_ref += dx        (only where an entry fired, so |x - x_ref| < theta everywhere after)
//! ```
//!
//! The error of y against the dense conv of x is bounded by theta times the sum of |W| over one
//! output's taps, and does not drift: x_ref follows x wherever x moved by theta or more. The work
//! of a step is proportional to the fired entries: each one scatters its delta into the outputs
//! its taps reach. A keyframe (the dense conv) resets both states. Nonlinearities are applied by
//! the caller to y.

use super::conv::{conv2d, conv2d_output_shape, Conv2d};
use super::{check_len, Activation};
use crate::error::{Error, Result};

/// One conv layer's delta state.
#[derive(Clone, Debug)]
pub struct DeltaConv2d {
    x_shape: [usize; 4],
    w: Vec<f32>,
    w_shape: [usize; 4],
    bias: Option<Vec<f32>>,
    p: Conv2d,
    out_shape: [usize; 4],
    theta: f32,
    x_ref: Vec<f32>,
    y: Vec<f32>,
    keyed: bool,
    fired: usize,
}

impl DeltaConv2d {
    /// A delta layer for inputs of `x_shape`; `p.activation` must be `None` (it applies to the
    /// accumulated output, outside). `theta` >= 0; 0 makes every change fire (dense-exact).
    pub fn new(
        x_shape: &[usize],
        w: &[f32],
        w_shape: &[usize],
        bias: Option<&[f32]>,
        p: &Conv2d,
        theta: f32,
    ) -> Result<DeltaConv2d> {
        let op = "delta_conv2d";
        if p.activation != Activation::None {
            return Err(Error::InvalidArgument {
                reason: format!("{op}: the activation applies to the accumulated output; pass Activation::None"),
            });
        }
        if theta.is_nan() || theta < 0.0 || theta.is_infinite() {
            return Err(Error::InvalidArgument { reason: format!("{op}: theta {theta} must be finite and >= 0") });
        }
        let out_shape = conv2d_output_shape(x_shape, w_shape, p)?;
        check_len(op, "weights", w.len(), w_shape)?;
        if let Some(b) = bias {
            if b.len() != w_shape[0] {
                return Err(Error::shape(op, format!("bias of {} values", w_shape[0]), b.len()));
            }
        }
        let (xs, ws): ([usize; 4], [usize; 4]) =
            (x_shape.try_into().expect("checked"), w_shape.try_into().expect("checked"));
        Ok(DeltaConv2d {
            x_shape: xs,
            w: w.to_vec(),
            w_shape: ws,
            bias: bias.map(<[f32]>::to_vec),
            p: p.clone(),
            out_shape,
            theta,
            x_ref: vec![0.0; xs.iter().product()],
            y: vec![0.0; out_shape.iter().product()],
            keyed: false,
            fired: 0,
        })
    }

    /// The accumulated pre-activation output ([N, M, OH, OW]).
    pub fn output(&self) -> &[f32] {
        &self.y
    }

    pub fn output_shape(&self) -> [usize; 4] {
        self.out_shape
    }

    /// Inputs that fired in the last step (all of them for a keyframe).
    pub fn fired(&self) -> usize {
        self.fired
    }

    /// The dense conv of `x`; both states restart from it.
    pub fn keyframe(&mut self, x: &[f32]) -> Result<&[f32]> {
        check_len("delta_conv2d", "input", x.len(), &self.x_shape)?;
        conv2d(x, &self.x_shape, &self.w, &self.w_shape, self.bias.as_deref(), &self.p, &mut self.y)?;
        self.x_ref.copy_from_slice(x);
        self.keyed = true;
        self.fired = x.len();
        Ok(&self.y)
    }

    /// Adds the fired part of `x - x_ref` to the output (a keyframe if there has been none).
    /// Allocates nothing.
    pub fn step(&mut self, x: &[f32]) -> Result<&[f32]> {
        if !self.keyed {
            return self.keyframe(x);
        }
        check_len("delta_conv2d", "input", x.len(), &self.x_shape)?;
        let [_, c, h, w] = self.x_shape;
        let [m, cg, kh, kw] = self.w_shape;
        let [_, _, oh, ow] = self.out_shape;
        let mg = m / self.p.group;
        let ([sh, sw], [dh, dw]) = (self.p.strides, self.p.dilations);
        let (pt, pl) = (self.p.pads[0] as isize, self.p.pads[1] as isize);
        self.fired = 0;
        for (idx, (&xv, r)) in x.iter().zip(self.x_ref.iter_mut()).enumerate() {
            let dx = xv - *r;
            // NaN never fires (and never poisons the state); theta = 0 fires every change.
            if dx == 0.0 || dx.is_nan() || dx.abs() < self.theta {
                continue;
            }
            *r = xv;
            self.fired += 1;
            let (b, ci, ih, iw) = (idx / (c * h * w), idx / (h * w) % c, idx / w % h, idx % w);
            let grp = ci / cg;
            let cl = ci % cg;
            for i in 0..kh {
                // Output row reached by tap row i: oh * sh + i * dh - pt = ih.
                let num = ih as isize + pt - (i * dh) as isize;
                if num < 0 || num % sh as isize != 0 || num / sh as isize >= oh as isize {
                    continue;
                }
                let orow = (num / sh as isize) as usize;
                for j in 0..kw {
                    let num = iw as isize + pl - (j * dw) as isize;
                    if num < 0 || num % sw as isize != 0 || num / sw as isize >= ow as isize {
                        continue;
                    }
                    let ocol = (num / sw as isize) as usize;
                    for mo in grp * mg..(grp + 1) * mg {
                        let wv = self.w[((mo * cg + cl) * kh + i) * kw + j];
                        self.y[((b * m + mo) * oh + orow) * ow + ocol] += wv * dx;
                    }
                }
            }
        }
        Ok(&self.y)
    }
}

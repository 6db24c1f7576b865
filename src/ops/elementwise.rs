//! Binary elementwise ops with ONNX multidirectional (numpy) broadcasting: `Add`, `Sub`, `Mul`,
//! `Div`.
//!
//! The broadcast is planned without allocating: size-1 dims are dropped and neighbouring dims
//! that step both operands contiguously are merged, so equal shapes become one flat loop and
//! [N, C, H, W] op [1, C, 1, 1] becomes loops over (N, C) around a vector-scalar loop over H*W.

use super::{broadcast_into, check_len, numel, strides_of, MAX_RANK};
use crate::error::{Error, Result};

/// Which binary op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// IEEE division: x / 0 is +-inf or NaN, as in ONNX Runtime.
    Div,
}

/// out = a (op) b, broadcasting `a_shape` and `b_shape`; `out` holds the broadcast shape.
pub fn binary(op: BinaryOp, a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize], out: &mut [f32]) -> Result<()> {
    let name = match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
    };
    check_len(name, "left operand", a.len(), a_shape)?;
    check_len(name, "right operand", b.len(), b_shape)?;
    let mut shape = [0usize; MAX_RANK];
    let rank = broadcast_into(name, a_shape, b_shape, &mut shape)?;
    let out_shape = &shape[..rank];
    if out.len() != numel(out_shape) {
        return Err(Error::shape(
            name,
            format!("output of shape {out_shape:?} ({} values)", numel(out_shape)),
            out.len(),
        ));
    }
    if out.is_empty() {
        return Ok(());
    }
    let plan = Plan::new(out_shape, a_shape, b_shape);
    match op {
        BinaryOp::Add => plan.run(a, b, out, |x, y| x + y),
        BinaryOp::Sub => plan.run(a, b, out, |x, y| x - y),
        BinaryOp::Mul => plan.run(a, b, out, |x, y| x * y),
        BinaryOp::Div => plan.run(a, b, out, |x, y| x / y),
    }
    Ok(())
}

/// a + b with broadcasting.
pub fn add(a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize], out: &mut [f32]) -> Result<()> {
    binary(BinaryOp::Add, a, a_shape, b, b_shape, out)
}

/// a - b with broadcasting.
pub fn sub(a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize], out: &mut [f32]) -> Result<()> {
    binary(BinaryOp::Sub, a, a_shape, b, b_shape, out)
}

/// a * b with broadcasting.
pub fn mul(a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize], out: &mut [f32]) -> Result<()> {
    binary(BinaryOp::Mul, a, a_shape, b, b_shape, out)
}

/// a / b with broadcasting.
pub fn div(a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize], out: &mut [f32]) -> Result<()> {
    binary(BinaryOp::Div, a, a_shape, b, b_shape, out)
}

/// Collapsed loop nest: dims (outermost first) with each operand's element stride (0 where it
/// broadcasts). The last dim is the inner loop; its strides are 0 or 1.
struct Plan {
    rank: usize,
    dims: [usize; MAX_RANK],
    sa: [usize; MAX_RANK],
    sb: [usize; MAX_RANK],
}

impl Plan {
    fn new(out: &[usize], a: &[usize], b: &[usize]) -> Plan {
        let operand_strides = |shape: &[usize]| {
            let own = strides_of(shape);
            let mut s = [0usize; MAX_RANK];
            let lead = out.len() - shape.len();
            for i in 0..shape.len() {
                s[lead + i] = if shape[i] == 1 { 0 } else { own[i] };
            }
            s
        };
        let (fa, fb) = (operand_strides(a), operand_strides(b));
        let mut plan = Plan { rank: 0, dims: [1; MAX_RANK], sa: [0; MAX_RANK], sb: [0; MAX_RANK] };
        for i in 0..out.len() {
            if out[i] == 1 {
                continue;
            }
            let r = plan.rank;
            let d = out[i];
            // Merge into the previous dim when both operands continue contiguously.
            if r > 0 && plan.sa[r - 1] == fa[i] * d && plan.sb[r - 1] == fb[i] * d {
                plan.dims[r - 1] *= d;
                plan.sa[r - 1] = fa[i];
                plan.sb[r - 1] = fb[i];
            } else {
                plan.dims[r] = d;
                plan.sa[r] = fa[i];
                plan.sb[r] = fb[i];
                plan.rank += 1;
            }
        }
        if plan.rank == 0 {
            // A single element.
            plan.rank = 1;
        }
        plan
    }

    #[inline(always)]
    fn run(&self, a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Copy) {
        let r = self.rank;
        let inner = self.dims[r - 1];
        let (ia, ib) = (self.sa[r - 1], self.sb[r - 1]);
        let mut idx = [0usize; MAX_RANK];
        let (mut oa, mut ob) = (0usize, 0usize);
        for dst in out.chunks_exact_mut(inner) {
            match (ia, ib) {
                (0, 0) => dst.fill(f(a[oa], b[ob])),
                (0, _) => {
                    let x = a[oa];
                    for (o, &y) in dst.iter_mut().zip(&b[ob..ob + inner]) {
                        *o = f(x, y);
                    }
                }
                (_, 0) => {
                    let y = b[ob];
                    for (o, &x) in dst.iter_mut().zip(&a[oa..oa + inner]) {
                        *o = f(x, y);
                    }
                }
                _ => {
                    for ((o, &x), &y) in dst.iter_mut().zip(&a[oa..oa + inner]).zip(&b[ob..ob + inner]) {
                        *o = f(x, y);
                    }
                }
            }
            // Odometer over the outer dims.
            let mut d = r - 1;
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                oa += self.sa[d];
                ob += self.sb[d];
                if idx[d] < self.dims[d] {
                    break;
                }
                oa -= self.sa[d] * self.dims[d];
                ob -= self.sb[d] * self.dims[d];
                idx[d] = 0;
            }
        }
    }
}

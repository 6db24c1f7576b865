//! Named tolerance tiers. Every numerical check in kestrel says which tier it claims, and measures
//! the relative L2 error ||out - ref|| / ||ref|| against a float64 reference.

/// A named error bound on the relative L2 error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    pub name: &'static str,
    pub rel_l2: f64,
}

impl Tol {
    /// f32 arithmetic against f64 on the same weights.
    pub const F32: Tol = Tol { name: "f32", rel_l2: 1e-5 };
    /// Quantized weights, f32 accumulation, against the f64 product of the dequantized weights.
    pub const QUANT: Tol = Tol { name: "quant", rel_l2: 1e-5 };
    /// Kernels that accumulate or store in f16.
    pub const F16: Tol = Tol { name: "f16", rel_l2: 1e-2 };

    /// True when `err` is within the bound (NaN never passes).
    pub fn accepts(self, err: f64) -> bool {
        err <= self.rel_l2
    }
}

/// Relative L2 error of `out` against `reference`. NaN or infinity anywhere gives infinity.
pub fn rel_l2(out: &[f32], reference: &[f64]) -> f64 {
    if out.len() != reference.len() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (&o, &r) in out.iter().zip(reference) {
        if !o.is_finite() || !r.is_finite() {
            return f64::INFINITY;
        }
        num += (o as f64 - r).powi(2);
        den += r * r;
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

//! Quantization codecs: float -> packed format ([`quantize`]) and back ([`dequantize`]).
//!
//! The math follows ../shared/papers/PAPERS.md: q8 and int4 groups (§8, TurboMind's fused
//! (s, -z*s) parameters), E2M1 fp4 (§4, OCP MX scales), Double Rounding bit switching (§5) and
//! LoRC (§6). [`dequantize`] is the plain, element-by-element reference that every kernel is
//! held to; it shares no code with the fast paths.

mod bitswitch;
mod fp4;
mod lorc;
mod q4;
mod q8;

pub use bitswitch::{round_half_even_shift, switch_bits, SWITCHABLE_BITS};
pub use fp4::{e2m1_decode, e2m1_encode, e8m0_decode, E2M1_VALUES};
pub use lorc::{add_lorc, lorc_dense, MAX_LORC_RANK};

use crate::error::{Error, Result};
use crate::tensor::MatrixView;
use crate::tensor::{f16_at, Fp4Scale, PackedMatrix, Scheme};

/// Quantizes a row-major [n, k] f32 matrix into `scheme`.
///
/// Non-finite weights are rejected: a NaN would poison a whole group's scale.
pub fn quantize(w: &[f32], n: usize, k: usize, scheme: Scheme) -> Result<PackedMatrix> {
    scheme.validate()?;
    if n == 0 || k == 0 || w.len() != n * k {
        return Err(Error::shape("quantize", format!("{n} x {k} = {} values", n * k), w.len()));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidQuantization {
            reason: format!("weight at row {}, column {} is {}", i / k, i % k, w[i]),
        });
    }
    let (main, aux) = match scheme {
        Scheme::F32 => (w.iter().map(|v| v.to_bits()).collect(), Vec::new()),
        Scheme::F16 => {
            if let Some(i) = w.iter().position(|v| v.abs() > half::f16::MAX.to_f32()) {
                return Err(Error::InvalidQuantization {
                    reason: format!("weight {} at index {i} overflows f16", w[i]),
                });
            }
            (crate::tensor::pack_f16_rows(w, k), Vec::new())
        }
        Scheme::Q8 => q8::quantize(w, n, k),
        Scheme::Q4 { group, symmetric } => q4::quantize(w, n, k, group as usize, symmetric)?,
        Scheme::Fp4 { group, scale } => fp4::quantize(w, n, k, group as usize, scale)?,
    };
    Ok(PackedMatrix { n, k, scheme, main, aux, lorc: None, bitswitch_master: false })
}

/// Reference dequantization to f64, element by element, [n, k] row-major (LoRC not included).
pub fn dequantize(m: &MatrixView) -> Vec<f64> {
    let (n, k) = (m.n, m.k);
    let mut out = vec![0f64; n * k];
    for r in 0..n {
        let row = m.row(r);
        let aux = m.aux_row(r);
        for c in 0..k {
            out[r * k + c] = match m.scheme {
                Scheme::F32 => f32::from_bits(row[c]) as f64,
                Scheme::F16 => f16_at(row, c) as f64,
                Scheme::Q8 => {
                    let q = ((row[c / 4] >> (8 * (c % 4))) & 0xFF) as u8 as i8;
                    q as f64 * f32::from_bits(aux[0]) as f64
                }
                Scheme::Q4 { group, .. } => {
                    let q = (row[c / 8] >> (4 * (c % 8))) & 0xF;
                    let p = aux[c / group as usize];
                    let s = half::f16::from_bits(p as u16).to_f64();
                    let zs = half::f16::from_bits((p >> 16) as u16).to_f64();
                    q as f64 * s + zs
                }
                Scheme::Fp4 { group, scale } => {
                    let code = (row[c / 8] >> (4 * (c % 8))) & 0xF;
                    let g = c / group as usize;
                    let s = match scale {
                        Fp4Scale::E8M0 => e8m0_decode(((aux[g / 4] >> (8 * (g % 4))) & 0xFF) as u8),
                        Fp4Scale::F16 => f16_at(aux, g) as f64,
                    };
                    e2m1_decode(code as u8) as f64 * s
                }
            };
        }
    }
    out
}

/// Reference y = deq(W) x + U (V^T x) in f64.
pub fn reference_gemv(m: &MatrixView, x: &[f32]) -> Vec<f64> {
    reference_gemm(m, x, 1)
}

/// Reference Y[m, n] = sum_k X[m, k] * W[n, k] (+ LoRC) in f64; X is row-major [rows, k].
pub fn reference_gemm(m: &MatrixView, x: &[f32], rows: usize) -> Vec<f64> {
    let (n, k) = (m.n, m.k);
    let mut w = dequantize(m);
    if let Some(l) = lorc_dense(m) {
        for (wi, li) in w.iter_mut().zip(l) {
            *wi += li;
        }
    }
    let mut y = vec![0f64; rows * n];
    for i in 0..rows {
        let xr = &x[i * k..(i + 1) * k];
        for r in 0..n {
            y[i * n + r] = w[r * k..(r + 1) * k].iter().zip(xr).map(|(a, &b)| a * b as f64).sum();
        }
    }
    y
}

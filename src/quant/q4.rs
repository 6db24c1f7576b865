//! q4: int4 codes 0..15 in groups of 32/64/128 along K. Eight codes per u32 word, code `c` of a
//! row in bits 4*(c % 8).. of word `c / 8`. Each group has one word of parameters: f16 `s` in the
//! low half and f16 `m = -z*s` in the high half, so w = q*s + m is one fused multiply-add.

use crate::error::{Error, Result};
use half::f16;

fn f16_checked(v: f32, what: &str) -> Result<f16> {
    let h = f16::from_f32(v);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(Error::InvalidQuantization { reason: format!("{what} {v} overflows f16") })
    }
}

/// Returns (quants, params).
pub(super) fn quantize(w: &[f32], n: usize, k: usize, group: usize, symmetric: bool) -> Result<(Vec<u32>, Vec<u32>)> {
    let groups = k.div_ceil(group);
    let row_words = groups * group / 8;
    let mut quants = vec![0u32; n * row_words];
    let mut params = vec![0u32; n * groups];
    for (r, row) in w.chunks_exact(k).enumerate() {
        for (g, vals) in row.chunks(group).enumerate() {
            let (s, m) = if symmetric {
                let amax = vals.iter().fold(0f32, |a, v| a.max(v.abs()));
                let s = f16_checked(amax / 7.0, "group scale")?;
                (s, f16::from_f32(-8.0 * s.to_f32()))
            } else {
                let lo = vals.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                let hi = vals.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let s = f16_checked((hi - lo) / 15.0, "group scale")?;
                if s.to_f32() == 0.0 {
                    // A constant group: q = 0 and the offset carries the value.
                    (s, f16_checked(lo, "group offset")?)
                } else {
                    let z = (-lo / s.to_f32()).round_ties_even().clamp(0.0, 15.0);
                    (s, f16_checked(-z * s.to_f32(), "group offset")?)
                }
            };
            params[r * groups + g] = s.to_bits() as u32 | (m.to_bits() as u32) << 16;
            let (sf, mf) = (s.to_f32(), m.to_f32());
            for (i, &v) in vals.iter().enumerate() {
                // Round against the stored (f16) parameters so dequantization matches exactly.
                let q = if sf == 0.0 { 0.0 } else { ((v - mf) / sf).round_ties_even().clamp(0.0, 15.0) };
                let c = g * group + i;
                quants[r * row_words + c / 8] |= (q as u32) << (4 * (c % 8));
            }
        }
    }
    Ok((quants, params))
}

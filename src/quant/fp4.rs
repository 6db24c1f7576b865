//! fp4: OCP E2M1 codes (sign, 2 exponent bits, 1 mantissa bit; values ±{0, .5, 1, 1.5, 2, 3, 4,
//! 6}) in groups along K, with one scale per group: E8M0 (a power of two, bias 127, as in MXFP4,
//! group 32) or f16. Codes are packed like q4; E8M0 scales four per word, f16 scales two per word.

use crate::error::{Error, Result};
use crate::tensor::Fp4Scale;
use half::f16;

/// The 16 values an E2M1 code decodes to (the shaders hold the same table).
pub const E2M1_VALUES: [f32; 16] =
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

pub fn e2m1_decode(code: u8) -> f32 {
    E2M1_VALUES[(code & 0xF) as usize]
}

/// Nearest E2M1 code, ties to the even mantissa, saturating at ±6.
pub fn e2m1_encode(v: f32) -> u8 {
    let a = v.abs();
    let mag = if a <= 0.25 {
        0
    } else if a < 0.75 {
        1
    } else if a <= 1.25 {
        2
    } else if a < 1.75 {
        3
    } else if a <= 2.5 {
        4
    } else if a < 3.5 {
        5
    } else if a <= 5.0 {
        6
    } else {
        7
    };
    if v.is_sign_negative() && mag != 0 {
        mag | 8
    } else {
        mag
    }
}

/// An E8M0 scale byte as a number: 2^(e - 127). (255 is NaN in the OCP spec; we never write it.)
pub fn e8m0_decode(e: u8) -> f64 {
    (2f64).powi(e as i32 - 127)
}

/// Returns (quants, scales).
pub(super) fn quantize(
    w: &[f32],
    n: usize,
    k: usize,
    group: usize,
    scale_kind: Fp4Scale,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let groups = k.div_ceil(group);
    let row_words = groups * group / 8;
    let scale_row_words = match scale_kind {
        Fp4Scale::E8M0 => groups.div_ceil(4),
        Fp4Scale::F16 => groups.div_ceil(2),
    };
    let mut quants = vec![0u32; n * row_words];
    let mut scales = vec![0u32; n * scale_row_words];
    for (r, row) in w.chunks_exact(k).enumerate() {
        for (g, vals) in row.chunks(group).enumerate() {
            let amax = vals.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = match scale_kind {
                Fp4Scale::E8M0 => {
                    // The smallest power of two that maps amax into [-6, 6]: no clipping.
                    let e = if amax == 0.0 { 0 } else { (amax / 6.0).log2().ceil() as i32 };
                    let e = e.clamp(-127, 127);
                    scales[r * scale_row_words + g / 4] |= ((e + 127) as u32) << (8 * (g % 4));
                    (2f64).powi(e) as f32
                }
                Fp4Scale::F16 => {
                    let s = f16::from_f32(amax / 6.0);
                    if !s.is_finite() {
                        return Err(Error::InvalidQuantization {
                            reason: format!("fp4 group scale {} overflows f16", amax / 6.0),
                        });
                    }
                    scales[r * scale_row_words + g / 2] |= (s.to_bits() as u32) << (16 * (g % 2));
                    s.to_f32()
                }
            };
            for (i, &v) in vals.iter().enumerate() {
                let code = if scale == 0.0 { 0 } else { e2m1_encode(v / scale) };
                let c = g * group + i;
                quants[r * row_words + c / 8] |= (code as u32) << (4 * (c % 8));
            }
        }
    }
    Ok((quants, scales))
}

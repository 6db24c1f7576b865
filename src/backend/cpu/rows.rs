//! Per-row kernels: the dot product of one weight row with an activation row, and decoding one
//! weight row to f32, for each format.

use crate::quant::E2M1_VALUES;
use crate::tensor::{Fp4Scale, MatrixView, Scheme};
use half::slice::HalfFloatSliceExt;

/// Eight independent accumulators so the loop vectorises and rounding error stays small.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline]
fn f16_pair(p: u32) -> (f32, f32) {
    (half::f16::from_bits(p as u16).to_f32(), half::f16::from_bits((p >> 16) as u16).to_f32())
}

#[inline]
fn fp4_group_scale(aux: &[u32], g: usize, scale: Fp4Scale) -> f32 {
    match scale {
        Fp4Scale::E8M0 => {
            let e = (aux[g / 4] >> (8 * (g % 4))) & 0xFF;
            // 2^(e-127) built from the exponent bits; e = 0 is 2^-127, a subnormal.
            if e == 0 {
                f32::from_bits(1 << 22)
            } else {
                f32::from_bits(e << 23)
            }
        }
        Fp4Scale::F16 => half::f16::from_bits((aux[g / 2] >> (16 * (g % 2))) as u16).to_f32(),
    }
}

/// Dot product of weight row `r` with `x` (k values).
pub fn row_dot(w: &MatrixView, r: usize, x: &[f32]) -> f32 {
    let row = w.row(r);
    let k = w.k;
    match w.scheme {
        Scheme::F32 => dot(bytemuck::cast_slice(&row[..k]), x),
        Scheme::F16 => {
            let halves: &[half::f16] = &bytemuck::cast_slice::<u32, half::f16>(row)[..k];
            let mut buf = [0f32; 256];
            let mut acc = 0f32;
            for (hc, xc) in halves.chunks(256).zip(x.chunks(256)) {
                let b = &mut buf[..hc.len()];
                hc.convert_to_f32_slice(b);
                acc += dot(b, xc);
            }
            acc
        }
        Scheme::Q8 => {
            let s = f32::from_bits(w.aux_row(r)[0]);
            let full = k / 4;
            let mut acc = [0f32; 4];
            for (j, &word) in row[..full].iter().enumerate() {
                let xs = &x[j * 4..j * 4 + 4];
                for i in 0..4 {
                    acc[i] += ((word >> (8 * i)) as u8 as i8) as f32 * xs[i];
                }
            }
            let mut sum: f32 = acc.iter().sum();
            for c in full * 4..k {
                sum += ((row[c / 4] >> (8 * (c % 4))) as u8 as i8) as f32 * x[c];
            }
            sum * s
        }
        Scheme::Q4 { group, .. } => {
            let (group, wpg) = (group as usize, group as usize / 8);
            let mut acc = 0f32;
            for (g, &p) in w.aux_row(r).iter().enumerate() {
                let (s, m) = f16_pair(p);
                let xs = &x[g * group..((g + 1) * group).min(k)];
                let ws = &row[g * wpg..(g + 1) * wpg];
                // w = q*s + m, so sum(w x) = s * sum(q x) + m * sum(x): dequantisation leaves the
                // inner loop.
                let (mut qx, mut sx) = ([0f32; 8], [0f32; 8]);
                let full = xs.len() / 8;
                for (j, &word) in ws[..full].iter().enumerate() {
                    let xv = &xs[j * 8..j * 8 + 8];
                    for i in 0..8 {
                        qx[i] += ((word >> (4 * i)) & 0xF) as f32 * xv[i];
                        sx[i] += xv[i];
                    }
                }
                let (mut qsum, mut xsum): (f32, f32) = (qx.iter().sum(), sx.iter().sum());
                for c in full * 8..xs.len() {
                    qsum += ((ws[c / 8] >> (4 * (c % 8))) & 0xF) as f32 * xs[c];
                    xsum += xs[c];
                }
                acc += s * qsum + m * xsum;
            }
            acc
        }
        Scheme::Fp4 { group, scale } => {
            let (group, wpg) = (group as usize, group as usize / 8);
            let aux = w.aux_row(r);
            let mut acc = 0f32;
            for g in 0..k.div_ceil(group) {
                let xs = &x[g * group..((g + 1) * group).min(k)];
                let ws = &row[g * wpg..(g + 1) * wpg];
                let mut vx = [0f32; 8];
                let full = xs.len() / 8;
                for (j, &word) in ws[..full].iter().enumerate() {
                    let xv = &xs[j * 8..j * 8 + 8];
                    for i in 0..8 {
                        vx[i] += E2M1_VALUES[((word >> (4 * i)) & 0xF) as usize] * xv[i];
                    }
                }
                let mut sum: f32 = vx.iter().sum();
                for c in full * 8..xs.len() {
                    sum += E2M1_VALUES[((ws[c / 8] >> (4 * (c % 8))) & 0xF) as usize] * xs[c];
                }
                acc += fp4_group_scale(aux, g, scale) * sum;
            }
            acc
        }
    }
}

/// Dequantises weight row `r` into `out` (k values).
pub fn decode_row(w: &MatrixView, r: usize, out: &mut [f32]) {
    let row = w.row(r);
    let k = w.k;
    match w.scheme {
        Scheme::F32 => out.copy_from_slice(bytemuck::cast_slice(&row[..k])),
        Scheme::F16 => bytemuck::cast_slice::<u32, half::f16>(row)[..k].convert_to_f32_slice(out),
        Scheme::Q8 => {
            let s = f32::from_bits(w.aux_row(r)[0]);
            for (c, o) in out.iter_mut().enumerate() {
                *o = ((row[c / 4] >> (8 * (c % 4))) as u8 as i8) as f32 * s;
            }
        }
        Scheme::Q4 { group, .. } => {
            let aux = w.aux_row(r);
            for (c, o) in out.iter_mut().enumerate() {
                let (s, m) = f16_pair(aux[c / group as usize]);
                *o = ((row[c / 8] >> (4 * (c % 8))) & 0xF) as f32 * s + m;
            }
        }
        Scheme::Fp4 { group, scale } => {
            let aux = w.aux_row(r);
            for (c, o) in out.iter_mut().enumerate() {
                let s = fp4_group_scale(aux, c / group as usize, scale);
                *o = E2M1_VALUES[((row[c / 8] >> (4 * (c % 8))) & 0xF) as usize] * s;
            }
        }
    }
}

//! Per-row kernels: the dot product of one weight row with an activation row, and decoding one
//! weight row to f32, for each format.
//!
//! Packed formats are fastest with the activations permuted once per product: within a block of
//! words (a quantization group, or a q8 row), code i of word j pairs with x[j * per_word + i]. If
//! x is stored as xp[i * words + j], the inner loop for one i runs over consecutive words with a
//! constant shift, which vectorises on every SIMD ISA (SSE2 has no per-lane variable shift).

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

/// An E2M1 code (low 4 bits of `c`) as f32 bits, branch-free so it vectorises: magnitude codes
/// m >= 2 are 2^((m>>1)-1) * (1 + (m&1)/2), code 1 is 0.5, code 0 is 0; bit 3 is the sign.
#[inline(always)]
fn e2m1_bits(c: u32) -> u32 {
    let mag = c & 7;
    let normal = (((mag >> 1) + 126) << 23) | ((mag & 1) << 22);
    let small = if mag == 1 { 0x3F00_0000 } else { 0 };
    (if mag >= 2 { normal } else { small }) | ((c & 8) << 28)
}

/// Words per permutation block: a group for q4/fp4, the whole row for q8.
fn block_words(scheme: Scheme, k: usize) -> usize {
    match scheme.group() {
        Some(g) => g / 8,
        None => scheme.row_words(k),
    }
}

/// Activations prepared once per product for [`row_dot_prepared`].
pub struct PreparedX<'a> {
    x: &'a [f32],
    /// Permuted and zero-padded to the format's padded K (packed formats only).
    permuted: &'a [f32],
    /// Sum of x over each block (q4's offset term and q8's offset-binary term).
    block_sums: &'a [f32],
}

/// Fills `buf` with the permuted activations and block sums for `scheme` and returns the view.
pub fn prepare_x<'a>(scheme: Scheme, x: &'a [f32], buf: &'a mut Vec<f32>) -> PreparedX<'a> {
    if !scheme.is_quantized() {
        return PreparedX { x, permuted: &[], block_sums: &[] };
    }
    let k = x.len();
    let per_word = scheme.elems_per_word();
    let bw = block_words(scheme, k);
    let padded = scheme.padded_k(k);
    let blocks = padded / (bw * per_word);
    buf.clear();
    buf.resize(padded + blocks, 0.0);
    let (permuted, sums) = buf.split_at_mut(padded);
    let block_len = bw * per_word;
    for (b, (dst, sum)) in permuted.chunks_exact_mut(block_len).zip(sums.iter_mut()).enumerate() {
        let src = &x[(b * block_len).min(k)..((b + 1) * block_len).min(k)];
        for (e, &v) in src.iter().enumerate() {
            dst[(e % per_word) * bw + e / per_word] = v;
        }
        *sum = src.iter().sum();
    }
    PreparedX { x, permuted, block_sums: sums }
}

/// Dot product of weight row `r` with the prepared activations.
pub fn row_dot_prepared(w: &MatrixView, r: usize, px: &PreparedX) -> f32 {
    let row = w.row(r);
    let bw = block_words(w.scheme, w.k);
    match w.scheme {
        Scheme::F32 | Scheme::F16 => row_dot(w, r, px.x),
        Scheme::Q8 => {
            // Offset binary: u = q + 128 is the byte with its top bit flipped, so
            // sum(q x) = sum(u x) - 128 sum(x).
            let mut acc = [0f32; 8];
            for i in 0..4 {
                let xs = &px.permuted[i * bw..(i + 1) * bw];
                let (wc, xc) = (row.chunks_exact(8), xs.chunks_exact(8));
                for (&word, &xv) in wc.remainder().iter().zip(xc.remainder()) {
                    acc[0] += (((word ^ 0x8080_8080) >> (8 * i)) & 0xFF) as i32 as f32 * xv;
                }
                for (w8, x8) in wc.zip(xc) {
                    for t in 0..8 {
                        acc[t] += (((w8[t] ^ 0x8080_8080) >> (8 * i)) & 0xFF) as i32 as f32 * x8[t];
                    }
                }
            }
            let sum = acc.iter().sum::<f32>() - 128.0 * px.block_sums[0];
            sum * f32::from_bits(w.aux_row(r)[0])
        }
        Scheme::Q4 { .. } => {
            let nibble = |word: u32| (word & 0xF) as i32 as f32;
            let mut total = 0f32;
            for (g, (&p, ws)) in w.aux_row(r).iter().zip(row.chunks_exact(bw)).enumerate() {
                let (s, m) = f16_pair(p);
                // w = q*s + m, so sum(w x) = s * sum(q x) + m * sum(x): dequantisation leaves
                // the inner loop.
                let qx = group_dot(ws, &px.permuted[g * bw * 8..(g + 1) * bw * 8], nibble);
                total += s * qx + m * px.block_sums[g];
            }
            total
        }
        Scheme::Fp4 { scale, .. } => {
            let value = |word: u32| f32::from_bits(e2m1_bits(word));
            let aux = w.aux_row(r);
            let mut total = 0f32;
            for (g, ws) in row.chunks_exact(bw).enumerate() {
                let vx = group_dot(ws, &px.permuted[g * bw * 8..(g + 1) * bw * 8], value);
                total += fp4_group_scale(aux, g, scale) * vx;
            }
            total
        }
    }
}

/// sum over the 8 codes i of each word j of decode(word_j >> 4i) * xs[i * words + j], with the
/// word count a compile-time constant (4, 8 or 16 for groups of 32, 64, 128) so the loops unroll
/// and vectorise.
#[inline(always)]
fn group_dot(ws: &[u32], xs: &[f32], decode: impl Fn(u32) -> f32 + Copy) -> f32 {
    #[inline(always)]
    fn fixed<const BW: usize>(ws: &[u32], xs: &[f32], decode: impl Fn(u32) -> f32) -> f32 {
        let ws: &[u32; BW] = ws.try_into().expect("group words");
        let mut acc = [0f32; BW];
        for i in 0..8 {
            let x: &[f32; BW] = xs[i * BW..(i + 1) * BW].try_into().expect("group activations");
            for j in 0..BW {
                acc[j] += decode(ws[j] >> (4 * i)) * x[j];
            }
        }
        acc.iter().sum()
    }
    match ws.len() {
        4 => fixed::<4>(ws, xs, decode),
        8 => fixed::<8>(ws, xs, decode),
        16 => fixed::<16>(ws, xs, decode),
        bw => (0..8)
            .map(|i| ws.iter().zip(&xs[i * bw..(i + 1) * bw]).map(|(&w, &x)| decode(w >> (4 * i)) * x).sum::<f32>())
            .sum(),
    }
}

/// Dot product of an f32 or f16 weight row with `x` in natural order (also the LoRC factors).
pub fn row_dot(w: &MatrixView, r: usize, x: &[f32]) -> f32 {
    let row = w.row(r);
    match w.scheme {
        Scheme::F32 => dot(bytemuck::cast_slice(&row[..w.k]), x),
        Scheme::F16 => {
            let halves: &[half::f16] = &bytemuck::cast_slice::<u32, half::f16>(row)[..w.k];
            let mut buf = [0f32; 256];
            let mut acc = 0f32;
            for (hc, xc) in halves.chunks(256).zip(x.chunks(256)) {
                let b = &mut buf[..hc.len()];
                hc.convert_to_f32_slice(b);
                acc += dot(b, xc);
            }
            acc
        }
        _ => {
            // Packed formats go through prepare_x; this path serves one-off calls.
            let mut buf = Vec::new();
            let px = prepare_x(w.scheme, x, &mut buf);
            row_dot_prepared(w, r, &px)
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

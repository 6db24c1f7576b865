//! Bit switching (Double Rounding, PAPERS.md §5): an int8 master with per-row scales yields int4
//! or int2 weights at load time with an integer round-half-even shift, so one file serves boards
//! with different memory budgets.
//!
//! The derived matrix is stored in the q4 layout (group 128, symmetric): code = q_l + 8 and the
//! group parameters are (s * 2^(8-l), -8 * s * 2^(8-l)) in f16, repeated across a row's groups.
//! int2 values therefore also occupy 4-bit codes: the precision switches, the storage does not.

use crate::error::{Error, Result};
use crate::tensor::{MatrixView, PackedMatrix, Scheme};
use half::f16;

/// Bit widths an int8 master can be switched to.
pub const SWITCHABLE_BITS: [u32; 3] = [8, 4, 2];

/// round_half_even(q / 2^k) in integers: r = q >> k; rem = q & (2^k - 1);
/// r += (rem > 2^(k-1)) | (rem == 2^(k-1) & r & 1).
pub fn round_half_even_shift(q: i32, k: u32) -> i32 {
    if k == 0 {
        return q;
    }
    let r = q >> k;
    let rem = q & ((1 << k) - 1);
    let half = 1 << (k - 1);
    r + ((rem > half) | ((rem == half) & (r & 1 == 1))) as i32
}

/// Derives a `bits`-wide matrix from an int8 master (a q8 matrix). 8 returns the master as is.
pub fn switch_bits(master: &MatrixView, bits: u32) -> Result<PackedMatrix> {
    if master.scheme != Scheme::Q8 {
        return Err(Error::InvalidQuantization {
            reason: format!("bit switching needs a q8 master, not {}", master.scheme.label()),
        });
    }
    let lorc = master.lorc.map(|l| crate::tensor::LorcFactors { rank: l.rank, u: l.u.to_vec(), v: l.v.to_vec() });
    if bits == 8 {
        return Ok(PackedMatrix {
            n: master.n,
            k: master.k,
            scheme: Scheme::Q8,
            main: master.main.to_vec(),
            aux: master.aux.to_vec(),
            lorc,
            bitswitch_master: true,
        });
    }
    if !SWITCHABLE_BITS.contains(&bits) {
        return Err(Error::InvalidArgument { reason: format!("cannot switch to {bits} bits (choose 8, 4 or 2)") });
    }
    let shift = 8 - bits;
    let (lo, hi) = (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1);
    let scheme = Scheme::Q4 { group: 128, symmetric: true };
    let (n, k) = (master.n, master.k);
    let (row_words, groups) = (scheme.row_words(k), scheme.groups(k));
    let mut main = vec![0u32; n * row_words];
    let mut aux = vec![0u32; n * groups];
    for r in 0..n {
        let src = master.row(r);
        let s = f32::from_bits(master.aux_row(r)[0]) * (1u32 << shift) as f32;
        let s16 = f16::from_f32(s);
        let m16 = f16::from_f32(-8.0 * s16.to_f32());
        if !s16.is_finite() || !m16.is_finite() {
            return Err(Error::InvalidQuantization { reason: format!("row {r}: switched scale {s} overflows f16") });
        }
        let p = s16.to_bits() as u32 | (m16.to_bits() as u32) << 16;
        aux[r * groups..(r + 1) * groups].fill(p);
        for c in 0..k {
            let q8 = ((src[c / 4] >> (8 * (c % 4))) & 0xFF) as u8 as i8 as i32;
            let ql = round_half_even_shift(q8, shift).clamp(lo, hi);
            main[r * row_words + c / 8] |= ((ql + 8) as u32) << (4 * (c % 8));
        }
        // Padding codes decode to zero weights: code 8 is q = 0.
        for c in k..scheme.padded_k(k) {
            main[r * row_words + c / 8] |= 8 << (4 * (c % 8));
        }
    }
    Ok(PackedMatrix { n, k, scheme, main, aux, lorc, bitswitch_master: false })
}

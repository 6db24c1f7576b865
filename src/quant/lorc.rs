//! LoRC (ZeroQuant-V2, PAPERS.md §6): a rank-r correction of the quantization error,
//! y = deq(Q) x + U (V^T x), from a truncated SVD of E = W - deq(Q(W)).
//!
//! The top-r subspace comes from block power (subspace) iteration in f64, which needs no linear
//! algebra crate and converges quickly for the small ranks used here. The factors are stored in
//! product form (U = E V_r, V = V_r, so U V^T is the rank-r projection of E) as f16.

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::tensor::{f16_at, pack_f16_rows, LorcFactors, MatrixView, PackedMatrix};

/// Largest LoRC rank the runtime accepts (the kernels keep V^T x in a fixed-size buffer).
pub const MAX_LORC_RANK: usize = 64;

const SUBSPACE_ITERATIONS: usize = 16;

/// Orthonormalises the `cols` columns of a row-major [rows, cols] matrix (modified Gram-Schmidt).
fn orthonormalize(a: &mut [f64], rows: usize, cols: usize) {
    for j in 0..cols {
        for p in 0..j {
            let dot: f64 = (0..rows).map(|i| a[i * cols + j] * a[i * cols + p]).sum();
            for i in 0..rows {
                a[i * cols + j] -= dot * a[i * cols + p];
            }
        }
        let norm = (0..rows).map(|i| a[i * cols + j].powi(2)).sum::<f64>().sqrt();
        let inv = if norm > 1e-300 { 1.0 / norm } else { 0.0 };
        for i in 0..rows {
            a[i * cols + j] *= inv;
        }
    }
}

/// Adds rank-`rank` LoRC factors to `packed`, computed against the original weights `w`.
pub fn add_lorc(packed: &mut PackedMatrix, w: &[f32], rank: usize) -> Result<()> {
    let (n, k) = (packed.n, packed.k);
    if rank == 0 || rank > MAX_LORC_RANK || rank > n.min(k) {
        return Err(Error::InvalidQuantization {
            reason: format!("LoRC rank {rank} must be in 1..={}", MAX_LORC_RANK.min(n.min(k))),
        });
    }
    if w.len() != n * k {
        return Err(Error::shape("add_lorc", n * k, w.len()));
    }
    packed.lorc = None;
    let deq = super::dequantize(&packed.view());
    let e: Vec<f64> = w.iter().zip(&deq).map(|(&a, &b)| a as f64 - b).collect();

    // V: [k, rank], U: [n, rank].
    let mut rng = SplitMix64::new(0x10c0_5eed ^ (n as u64) << 32 ^ k as u64);
    let mut v: Vec<f64> = (0..k * rank).map(|_| rng.normal() as f64).collect();
    let mut u = vec![0f64; n * rank];
    orthonormalize(&mut v, k, rank);
    for _ in 0..SUBSPACE_ITERATIONS {
        mul_ev(&e, n, k, &v, rank, &mut u);
        orthonormalize(&mut u, n, rank);
        // V = E^T U
        v.fill(0.0);
        for i in 0..n {
            for c in 0..k {
                let eic = e[i * k + c];
                for j in 0..rank {
                    v[c * rank + j] += eic * u[i * rank + j];
                }
            }
        }
        orthonormalize(&mut v, k, rank);
    }
    mul_ev(&e, n, k, &v, rank, &mut u);

    let u32s: Vec<f32> = u.iter().map(|&x| x as f32).collect();
    // V^T as [rank, k] rows.
    let vt: Vec<f32> =
        (0..rank).flat_map(|j| (0..k).map(move |c| (j, c))).map(|(j, c)| v[c * rank + j] as f32).collect();
    packed.lorc = Some(LorcFactors { rank, u: pack_f16_rows(&u32s, rank), v: pack_f16_rows(&vt, k) });
    Ok(())
}

/// U = E V for E [n, k] and V [k, rank].
fn mul_ev(e: &[f64], n: usize, k: usize, v: &[f64], rank: usize, u: &mut [f64]) {
    u.fill(0.0);
    for i in 0..n {
        for c in 0..k {
            let eic = e[i * k + c];
            for j in 0..rank {
                u[i * rank + j] += eic * v[c * rank + j];
            }
        }
    }
}

/// The dense correction U V^T as f64 [n, k], or None without LoRC factors.
pub fn lorc_dense(m: &MatrixView) -> Option<Vec<f64>> {
    let l = m.lorc?;
    let (n, k) = (m.n, m.k);
    let (u_row, v_row) = (l.rank.div_ceil(2), k.div_ceil(2));
    let mut out = vec![0f64; n * k];
    for i in 0..n {
        for c in 0..k {
            out[i * k + c] = (0..l.rank)
                .map(|j| {
                    f16_at(&l.u[i * u_row..(i + 1) * u_row], j) as f64
                        * f16_at(&l.v[j * v_row..(j + 1) * v_row], c) as f64
                })
                .sum();
        }
    }
    Some(out)
}

//! Attention over tokens: CARE's linear attention (PAPERS.md section 1) and standard softmax
//! attention, for [B, H, N, D] queries and keys and [B, H, N, Dv] values.
//!
//! CARE's linear attention, exactly as its code defines it, with phi(x) = ELU(x) + 1 (positive):
//!
//! ```text
//! KV    = phi(K)^T V / N                     (D x Dv per head)
//! kmean = mean_j phi(k_j)                    (D)
//! z_i   = 1 / (phi(q_i) . kmean + 1e-6)
//! out_i = z_i * phi(q_i) KV
//! ```
//!
//! Cost O(N D Dv) per head against softmax attention's O(N^2 D): the reduction over keys is done
//! once, then every query applies it. Softmax attention, out_i = sum_j softmax_j(s q_i . k_j) v_j,
//! is here for comparison and for models that need it; it runs one query row at a time with the
//! row's scores in a scratch buffer, so memory stays O(N) per worker.

use super::gemm::{with_scratch, Kernel};
use super::math::exp;
use super::{check_len, parallel_chunks, workers_for};
use crate::error::{Error, Result};

/// CARE's z_i denominator guard.
pub const CARE_EPSILON: f32 = 1e-6;

/// [B, H, N, D] and [B, H, N, Dv] shapes checked; returns (B * H, N, D, Dv).
pub(crate) fn dims(op: &'static str, q: &[usize], k: &[usize], v: &[usize]) -> Result<(usize, usize, usize, usize)> {
    let (&[b, h, n, d], &[kb, kh, kn, kd], &[vb, vh, vn, dv]) = (q, k, v) else {
        return Err(Error::shape(op, "q, k, v of rank 4 [B, H, N, D]", format!("{q:?}, {k:?}, {v:?}")));
    };
    if [kb, kh, kn, kd] != [b, h, n, d] || [vb, vh, vn] != [b, h, n] {
        return Err(Error::shape(op, format!("k {q:?} and v [{b}, {h}, {n}, Dv]"), format!("k {k:?}, v {v:?}")));
    }
    if n == 0 || d == 0 || dv == 0 {
        return Err(Error::shape(op, "non-empty tokens and features", format!("{q:?}, {v:?}")));
    }
    Ok((b * h, n, d, dv))
}

/// [`dims`] plus every operand's and the output's length.
fn checked(
    op: &'static str,
    (q, qs): (&[f32], &[usize]),
    (k, ks): (&[f32], &[usize]),
    (v, vs): (&[f32], &[usize]),
    out: &[f32],
) -> Result<(usize, usize, usize, usize)> {
    let (heads, n, d, dv) = dims(op, qs, ks, vs)?;
    check_len(op, "q", q.len(), qs)?;
    check_len(op, "k", k.len(), ks)?;
    check_len(op, "v", v.len(), vs)?;
    check_len(op, "output", out.len(), &[heads, n, dv])?;
    Ok((heads, n, d, dv))
}

/// phi(x) = ELU(x) + 1.
#[inline(always)]
fn phi(x: f32) -> f32 {
    if x > 0.0 {
        x + 1.0
    } else {
        exp(x)
    }
}

/// CARE linear attention (see the module docs). `out` is [B, H, N, Dv].
#[allow(clippy::too_many_arguments)]
pub fn linear_attention(
    q: &[f32],
    q_shape: &[usize],
    k: &[f32],
    k_shape: &[usize],
    v: &[f32],
    v_shape: &[usize],
    out: &mut [f32],
) -> Result<()> {
    let (heads, n, d, dv) = checked("linear_attention", (q, q_shape), (k, k_shape), (v, v_shape), out)?;
    let workers = workers_for(heads * n * d * dv, heads);
    // Per worker: KV (D x Dv), kmean (D), and one query's phi (D).
    let per_worker = d * dv + 2 * d;
    with_scratch(per_worker * workers.max(1), |scratch| {
        parallel_chunks(out, n * dv, workers, scratch, per_worker, |head, dst, sc| {
            let (kv, rest) = sc.split_at_mut(d * dv);
            let (kmean, phi_q) = rest.split_at_mut(d);
            let (qh, kh, vh) =
                (&q[head * n * d..][..n * d], &k[head * n * d..][..n * d], &v[head * n * dv..][..n * dv]);
            kv.fill(0.0);
            kmean.fill(0.0);
            for (kj, vj) in kh.chunks_exact(d).zip(vh.chunks_exact(dv)) {
                for (c, &x) in kj.iter().enumerate() {
                    let p = phi(x);
                    kmean[c] += p;
                    for (acc, &y) in kv[c * dv..(c + 1) * dv].iter_mut().zip(vj) {
                        *acc += p * y;
                    }
                }
            }
            let inv_n = 1.0 / n as f32;
            kv.iter_mut().for_each(|x| *x *= inv_n);
            kmean.iter_mut().for_each(|x| *x *= inv_n);
            for (qi, oi) in qh.chunks_exact(d).zip(dst.chunks_exact_mut(dv)) {
                let mut dot = 0.0;
                for ((p, &x), &m) in phi_q.iter_mut().zip(qi).zip(kmean.iter()) {
                    *p = phi(x);
                    dot += *p * m;
                }
                let z = 1.0 / (dot + CARE_EPSILON);
                oi.fill(0.0);
                for (c, &p) in phi_q.iter().enumerate() {
                    for (o, &w) in oi.iter_mut().zip(&kv[c * dv..(c + 1) * dv]) {
                        *o += p * w;
                    }
                }
                oi.iter_mut().for_each(|o| *o *= z);
            }
        });
    });
    Ok(())
}

/// Softmax attention out_i = sum_j softmax_j(scale * q_i . k_j) v_j. `out` is [B, H, N, Dv].
#[allow(clippy::too_many_arguments)]
pub fn softmax_attention(
    q: &[f32],
    q_shape: &[usize],
    k: &[f32],
    k_shape: &[usize],
    v: &[f32],
    v_shape: &[usize],
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let (heads, n, d, dv) = checked("softmax_attention", (q, q_shape), (k, k_shape), (v, v_shape), out)?;
    if !scale.is_finite() {
        return Err(Error::InvalidArgument { reason: format!("softmax_attention: scale {scale} is not finite") });
    }
    let rows = heads * n;
    let workers = workers_for(rows * n * (d + dv), rows);
    let kern = Kernel::current();
    with_scratch(n * workers.max(1), |scratch| {
        // One item per query row; each worker keeps the row's scores in its scratch.
        parallel_chunks(out, dv, workers, scratch, n, |row, oi, scores| {
            let head = row / n;
            let qi = &q[row * d..][..d];
            let (kh, vh) = (&k[head * n * d..][..n * d], &v[head * n * dv..][..n * dv]);
            // Every key's dot product with the query, at the CPU's vector width.
            kern.dots(qi, kh, None, scores);
            let mut max = f32::NEG_INFINITY;
            for s in scores.iter_mut() {
                *s *= scale;
                max = max.max(*s);
            }
            let mut total = 0.0;
            for s in scores.iter_mut() {
                *s = exp(*s - max);
                total += *s;
            }
            oi.fill(0.0);
            for (&s, vj) in scores.iter().zip(vh.chunks_exact(dv)) {
                let w = s / total;
                for (o, &y) in oi.iter_mut().zip(vj) {
                    *o += w * y;
                }
            }
        });
    });
    Ok(())
}

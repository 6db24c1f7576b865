//! ONNX `MatMul` (numpy semantics: 1-D operands promoted, batch dims broadcast) and `linear`
//! (ONNX `Gemm` with transB = 1: y = x W^T + b, the layout of PyTorch `nn.Linear`).

use super::gemm::{with_scratch, GemmArgs, Kernel, Ld, Strided, NR_MAX};
use super::{
    broadcast_into, check_len, check_rank, item_count, numel, parallel_chunks, strides_of, workers_for, MAX_RANK,
};
use crate::error::{Error, Result};

/// Shapes of a matmul after promotion: batch dims (broadcast), M, K, N.
struct MatmulDims {
    rank: usize,
    batch: [usize; MAX_RANK],
    batch_rank: usize,
    m: usize,
    k: usize,
    n: usize,
    a_1d: bool,
    b_1d: bool,
}

fn matmul_dims(a_shape: &[usize], b_shape: &[usize]) -> Result<MatmulDims> {
    let op = "matmul";
    if a_shape.is_empty() || b_shape.is_empty() {
        return Err(Error::shape(op, "operands of rank >= 1", format!("{a_shape:?} x {b_shape:?}")));
    }
    check_rank(op, a_shape.len().max(b_shape.len()))?;
    let (a_1d, b_1d) = (a_shape.len() == 1, b_shape.len() == 1);
    let (m, ka) = if a_1d { (1, a_shape[0]) } else { (a_shape[a_shape.len() - 2], a_shape[a_shape.len() - 1]) };
    let (kb, n) = if b_1d { (b_shape[0], 1) } else { (b_shape[b_shape.len() - 2], b_shape[b_shape.len() - 1]) };
    if ka != kb {
        return Err(Error::shape(
            op,
            format!("right operand with K = {ka} rows"),
            format!("{a_shape:?} x {b_shape:?}"),
        ));
    }
    let a_batch = &a_shape[..a_shape.len().saturating_sub(2)];
    let b_batch = &b_shape[..b_shape.len().saturating_sub(2)];
    let mut batch = [0usize; MAX_RANK];
    let batch_rank = broadcast_into(op, a_batch, b_batch, &mut batch)?;
    let rank = batch_rank + usize::from(!a_1d) + usize::from(!b_1d);
    check_rank(op, rank)?;
    Ok(MatmulDims { rank, batch, batch_rank, m, k: ka, n, a_1d, b_1d })
}

impl MatmulDims {
    fn out_shape(&self) -> ([usize; MAX_RANK], usize) {
        let mut s = [0usize; MAX_RANK];
        s[..self.batch_rank].copy_from_slice(&self.batch[..self.batch_rank]);
        let mut r = self.batch_rank;
        if !self.a_1d {
            s[r] = self.m;
            r += 1;
        }
        if !self.b_1d {
            s[r] = self.n;
            r += 1;
        }
        debug_assert_eq!(r, self.rank);
        (s, r)
    }
}

/// The output shape of [`matmul`].
pub fn matmul_output_shape(a_shape: &[usize], b_shape: &[usize]) -> Result<Vec<usize>> {
    let (s, r) = matmul_dims(a_shape, b_shape)?.out_shape();
    Ok(s[..r].to_vec())
}

/// Per-batch element offsets of one operand, 0 along the dims it broadcasts.
fn batch_strides(batch: &[usize], operand_batch: &[usize], matrix: usize) -> [usize; MAX_RANK] {
    let own = strides_of(operand_batch);
    let mut s = [0usize; MAX_RANK];
    let lead = batch.len() - operand_batch.len();
    for i in 0..operand_batch.len() {
        s[lead + i] = if operand_batch[i] == 1 { 0 } else { own[i] * matrix };
    }
    s
}

/// Rows of A packed at a time (a multiple of every MR): bounds the scratch while B panels are
/// reused across many rows.
const MC: usize = 192;

/// dst[r][j] = sum_t a[r][t] b[t][j] for `rows` rows of A (row-major, k values each) and B
/// ([k, n] at stride `ldb`). `scratch` holds `kern.packed_a_len(MC, k) + k * NR_MAX` floats.
#[allow(clippy::too_many_arguments)]
fn product_rows(
    kern: Kernel,
    a: &[f32],
    rows: usize,
    k: usize,
    b: &[f32],
    ldb: usize,
    n: usize,
    dst: &mut [f32],
    scratch: &mut [f32],
) {
    let (packed, tail) = scratch.split_at_mut(kern.packed_a_len(MC, k));
    let mut r0 = 0;
    while r0 < rows {
        let count = MC.min(rows - r0);
        kern.pack_a(&a[r0 * k..], k, count, k, packed);
        let args = GemmArgs { a: packed, m: count, k, b, rows: Ld { ld: ldb, k }, n, bias: None };
        kern.gemm(args, tail, &mut Strided { out: &mut dst[r0 * n..], ld: n, col: 0 });
        r0 += count;
    }
}

/// ONNX `MatMul`: out = a b with numpy promotion and batch broadcasting.
pub fn matmul(a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize], out: &mut [f32]) -> Result<()> {
    let op = "matmul";
    let d = matmul_dims(a_shape, b_shape)?;
    check_len(op, "left operand", a.len(), a_shape)?;
    check_len(op, "right operand", b.len(), b_shape)?;
    let (os, or) = d.out_shape();
    check_len(op, "output", out.len(), &os[..or])?;
    if out.is_empty() {
        return Ok(());
    }
    let kern = Kernel::current();
    let (m, k, n) = (d.m, d.k, d.n);
    let batch = &d.batch[..d.batch_rank];
    let a_batch = &a_shape[..a_shape.len().saturating_sub(2)];
    let b_batch = &b_shape[..b_shape.len().saturating_sub(2)];
    let batches = numel(batch);
    let (mat_a, mat_b, mat_o) = (m * k, k * n, m * n);
    // When B is the same matrix for every batch and A is not broadcast, the batches of A are
    // one tall matrix [batches * m, k]: one product, and rows split evenly among workers.
    let fold = numel(b_batch) == 1 && numel(a_batch) == batches;
    let (rows, groups) = if fold { (batches * m, 1) } else { (m, batches) };
    let workers = workers_for(batches * m * n * k.max(1), if fold { rows.div_ceil(4) } else { groups });
    let per_worker = kern.packed_a_len(MC, k) + k * NR_MAX + 1;
    let a_str = batch_strides(batch, a_batch, mat_a);
    let b_str = batch_strides(batch, b_batch, mat_b);
    let offsets = |g: usize| {
        let (mut oa, mut ob, mut rest) = (0usize, 0usize, g);
        for i in (0..batch.len()).rev() {
            let idx = rest % batch[i];
            rest /= batch[i];
            oa += idx * a_str[i];
            ob += idx * b_str[i];
        }
        (oa, ob)
    };
    with_scratch(per_worker * workers, |scratch| {
        if fold {
            if workers <= 1 {
                product_rows(kern, a, rows, k, b, n, n, out, scratch);
                return;
            }
            let per = rows.div_ceil(item_count(workers, rows));
            parallel_chunks(out, per * n, workers, scratch, per_worker, |i, dst, sc| {
                let count = dst.len() / n;
                product_rows(kern, &a[i * per * k..][..count * k], count, k, b, n, n, dst, sc)
            });
            return;
        }
        let run = |g0: usize, chunk: &mut [f32], sc: &mut [f32]| {
            for (gi, dst) in chunk.chunks_exact_mut(mat_o).enumerate() {
                let (oa, ob) = offsets(g0 + gi);
                product_rows(kern, &a[oa..oa + mat_a], m, k, &b[ob..ob + mat_b], n, n, dst, sc);
            }
        };
        if workers <= 1 {
            run(0, out, scratch);
            return;
        }
        let per = groups.div_ceil(item_count(workers, groups));
        parallel_chunks(out, per * mat_o, workers, scratch, per_worker, |i, chunk, sc| run(i * per, chunk, sc));
    });
    Ok(())
}

/// Rows of x at or below which [`linear`] uses dot products instead of the GEMM (one token of a
/// transformer: packing W^T would cost as much as the product).
const DOT_ROWS: usize = 2;

/// y = x W^T + b for x of `x_shape` [..., K], W [N, K] (PyTorch `nn.Linear` layout), bias N
/// values; `out` is [..., N].
pub fn linear(
    x: &[f32],
    x_shape: &[usize],
    w: &[f32],
    w_shape: &[usize],
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Result<()> {
    let op = "linear";
    let [nf, k] = *w_shape else {
        return Err(Error::shape(op, "weights [N, K]", format!("{w_shape:?}")));
    };
    if x_shape.last() != Some(&k) {
        return Err(Error::shape(op, format!("input [..., {k}]"), format!("{x_shape:?}")));
    }
    check_len(op, "input", x.len(), x_shape)?;
    check_len(op, "weights", w.len(), w_shape)?;
    if let Some(b) = bias {
        if b.len() != nf {
            return Err(Error::shape(op, format!("bias of {nf} values"), b.len()));
        }
    }
    let m = numel(&x_shape[..x_shape.len() - 1]);
    if out.len() != m.saturating_mul(nf) {
        return Err(Error::shape(op, format!("output of {m} x {nf} values"), out.len()));
    }
    if out.is_empty() {
        return Ok(());
    }
    let workers = workers_for(m * nf * k.max(1), if m <= DOT_ROWS { nf.div_ceil(64) } else { m.div_ceil(4) });
    if m <= DOT_ROWS {
        // Each output is one dot product of two K-contiguous rows; workers take feature ranges.
        let kern = Kernel::current();
        for (row, dst) in out.chunks_exact_mut(nf).enumerate() {
            let xr = &x[row * k..][..k];
            let run = |n0: usize, d: &mut [f32]| {
                kern.dots(xr, &w[n0 * k..][..d.len() * k], bias.map(|b| &b[n0..n0 + d.len()]), d)
            };
            if workers <= 1 {
                run(0, dst);
                continue;
            }
            let per = nf.div_ceil(item_count(workers, nf));
            parallel_chunks(dst, per, workers, &mut [], 0, |i, d, _| run(i * per, d));
        }
        return Ok(());
    }
    // GEMM with A = rows of x (packed MC at a time) and B = panels of W^T, each packed as
    // [K][NR_MAX] (zero-padded past N) and reused for every row of the chunk.
    let kern = Kernel::current();
    let packed_len = kern.packed_a_len(MC, k);
    let per_worker = packed_len + 2 * k * NR_MAX + 1;
    let run = |x_rows: &[f32], rows: usize, dst: &mut [f32], scratch: &mut [f32]| {
        let (packed, rest) = scratch.split_at_mut(packed_len);
        let (panel, tail) = rest.split_at_mut(k * NR_MAX);
        let mut r0 = 0;
        while r0 < rows {
            let count = MC.min(rows - r0);
            kern.pack_a(&x_rows[r0 * k..], k, count, k, packed);
            let out = &mut dst[r0 * nf..][..count * nf];
            let mut n0 = 0;
            while n0 < nf {
                let valid = NR_MAX.min(nf - n0);
                for j in 0..NR_MAX {
                    let col = panel[j..].iter_mut().step_by(NR_MAX);
                    if j < valid {
                        for (p, &v) in col.zip(&w[(n0 + j) * k..][..k]) {
                            *p = v;
                        }
                    } else {
                        col.for_each(|p| *p = 0.0);
                    }
                }
                let args =
                    GemmArgs { a: packed, m: count, k, b: panel, rows: Ld { ld: NR_MAX, k }, n: valid, bias: None };
                kern.gemm(args, tail, &mut Strided { out: &mut *out, ld: nf, col: n0 });
                n0 += valid;
            }
            if let Some(b) = bias {
                // The GEMM's bias is per row of A; a linear layer's is per column.
                for row in out.chunks_exact_mut(nf) {
                    for (o, &bb) in row.iter_mut().zip(b) {
                        *o += bb;
                    }
                }
            }
            r0 += count;
        }
    };
    with_scratch(per_worker * workers, |scratch| {
        if workers <= 1 {
            run(x, m, out, scratch);
            return;
        }
        let per = m.div_ceil(item_count(workers, m));
        parallel_chunks(out, per * nf, workers, scratch, per_worker, |i, dst, sc| {
            let rows = dst.len() / nf;
            run(&x[i * per * k..][..rows * k], rows, dst, sc)
        });
    });
    Ok(())
}

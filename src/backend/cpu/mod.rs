//! CPU kernels: GEMV (one activation row) and GEMM (a few hundred rows) for every weight format,
//! f32 accumulation, threads across output rows. The inner loops work on fixed 8-lane arrays so
//! the compiler vectorises them. [`crate::quant::reference_gemm`] is their plain f64 twin.

mod rows;

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::quant::MAX_LORC_RANK;
use crate::tensor::MatrixView;

pub use rows::{decode_row, prepare_x, row_dot, row_dot_prepared, PreparedX};

use std::cell::RefCell;

thread_local! {
    /// Per-thread activation scratch: grows to the largest K seen, then is reused, so steady-state
    /// products do not allocate.
    static X_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Below this many weight elements a product runs on the calling thread: spawning costs more.
const PARALLEL_THRESHOLD: usize = 1 << 18;

fn worker_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(64))
}

fn check_shapes(op: &'static str, w: &MatrixView, x_len: usize, y_len: usize, rows: usize) -> Result<()> {
    if x_len != rows * w.k {
        return Err(Error::shape(op, format!("x of {rows} x {} = {}", w.k, rows * w.k), x_len));
    }
    if y_len != rows * w.n {
        return Err(Error::shape(op, format!("y of {rows} x {} = {}", w.n, rows * w.n), y_len));
    }
    Ok(())
}

/// Most pieces a product is split into (a fixed array: splitting allocates nothing).
const MAX_PIECES: usize = 256;

/// One piece of the output: its first row and its values, taken once by whichever thread gets it.
type Piece<'a> = Mutex<Option<(usize, &'a mut [f32])>>;

/// Splits `out` (one value per output row, `per_row` values each) into contiguous pieces and
/// runs `work(rows, piece)` on each. Large products use the ops' persistent worker pool: about
/// four pieces per thread, taken in turn, so a late helper costs nothing but its own share.
fn for_row_chunks<F>(n: usize, k: usize, per_row: usize, out: &mut [f32], work: F)
where
    F: Fn(Range<usize>, &mut [f32]) + Sync,
{
    let threads = if n * k * per_row < PARALLEL_THRESHOLD { 1 } else { worker_count().min(n) };
    if threads <= 1 {
        work(0..n, out);
        return;
    }
    let pieces = (4 * threads).min(n).min(MAX_PIECES);
    let rows_per = n.div_ceil(pieces);
    let mut slots: heapless::Vec<Piece, MAX_PIECES> = heapless::Vec::new();
    for (i, chunk) in out.chunks_mut(rows_per * per_row).enumerate() {
        // At most `pieces` chunks, which fits.
        let _ = slots.push(Mutex::new(Some((i * rows_per, chunk))));
    }
    let next = AtomicUsize::new(0);
    let drain = || {
        while let Some(slot) = slots.get(next.fetch_add(1, Ordering::Relaxed)) {
            // Each slot is taken exactly once; the lock only moves the slice out.
            let piece = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((start, chunk)) = piece {
                work(start..start + chunk.len() / per_row, chunk);
            }
        }
    };
    crate::ops::worker_pool().run(threads - 1, &|_| drain(), drain);
}

/// y = W x (+ U (V^T x) when the matrix carries LoRC factors). `x` has k values, `y` n.
pub fn gemv(w: &MatrixView, x: &[f32], y: &mut [f32]) -> Result<()> {
    check_shapes("gemv", w, x.len(), y.len(), 1)?;
    X_SCRATCH.with(|buf| {
        let mut buf = buf.borrow_mut();
        let px = prepare_x(w.scheme, x, &mut buf);
        for_row_chunks(w.n, w.k, 1, y, |rows, out| {
            for (r, o) in rows.zip(out.iter_mut()) {
                *o = row_dot_prepared(w, r, &px);
            }
        });
    });
    if let Some((v, u)) = w.lorc_matrices() {
        let mut t = [0f32; MAX_LORC_RANK];
        let t = &mut t[..v.n];
        for (j, tj) in t.iter_mut().enumerate() {
            *tj = row_dot(&v, j, x);
        }
        for (r, yr) in y.iter_mut().enumerate() {
            *yr += row_dot(&u, r, t);
        }
    }
    Ok(())
}

/// Y = X W^T (+ LoRC): `x` is row-major [m, k], `y` row-major [m, n].
///
/// Each worker dequantises one weight row at a time into a scratch row and reuses it for all `m`
/// activation rows, so dequantisation costs O(n k), not O(m n k).
pub fn gemm(w: &MatrixView, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
    check_shapes("gemm", w, x.len(), y.len(), m)?;
    if m == 0 {
        return Ok(());
    }
    // Workers fill a transposed [n, m] buffer in contiguous row chunks, then it is scattered.
    let mut yt = vec![0f32; w.n * m];
    for_row_chunks(w.n, w.k, m, &mut yt, |rows, out| {
        let mut scratch = vec![0f32; w.k];
        for (r, o) in rows.zip(out.chunks_exact_mut(m)) {
            decode_row(w, r, &mut scratch);
            for (i, oi) in o.iter_mut().enumerate() {
                *oi = rows::dot(&scratch, &x[i * w.k..(i + 1) * w.k]);
            }
        }
    });
    if let Some((v, u)) = w.lorc_matrices() {
        let rank = v.n;
        let mut t = vec![0f32; m * rank];
        for i in 0..m {
            for j in 0..rank {
                t[i * rank + j] = row_dot(&v, j, &x[i * w.k..(i + 1) * w.k]);
            }
        }
        for r in 0..w.n {
            for i in 0..m {
                yt[r * m + i] += row_dot(&u, r, &t[i * rank..(i + 1) * rank]);
            }
        }
    }
    for r in 0..w.n {
        for i in 0..m {
            y[i * w.n + r] = yt[r * m + i];
        }
    }
    Ok(())
}

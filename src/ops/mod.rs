//! CPU operator library: the f32 ops the graph executor calls for YOLO-family detectors and small
//! transformers, each with ONNX semantics (opsets 13 to 21).
//!
//! Conventions shared by every op:
//! - tensors are f32, row-major (NCHW for images), passed as a slice plus its shape;
//! - outputs go to caller-provided slices (the executor plans all activation memory), and the op
//!   checks every length against the shapes first: a wrong shape is an [`Error`], never a panic;
//! - ops do not allocate on the calling thread once warm: [`conv2d`], [`matmul`] and [`linear`]
//!   keep a per-thread scratch buffer (packed weights, phase planes, GEMM tails) that grows to
//!   the largest layer once and is then reused. The exception: above [`PARALLEL_MACS`] an op
//!   splits its work over the persistent worker pool (`workers.rs`, up to [`max_threads`]), and
//!   the split itself (the work-item and scratch lists) still allocates a little per call; an
//!   executor that must not allocate calls [`set_max_threads`]`(1)`;
//! - the GEMM-based ops pick their SIMD kernel at run time (AVX2 + FMA on x86_64 when the CPU
//!   has it, else the baseline build; NEON on aarch64): [`kernel_name`] says which,
//!   [`force_portable_kernels`] pins the baseline for tests and comparisons;
//! - every op has a plain float64 twin in `tests/ops_cpu.rs` that states the math in the simplest
//!   loops, and a random-shape test that holds the op to it within [`crate::tol::Tol::F32`].
//!
//! | kestrel op | ONNX op | file |
//! |---|---|---|
//! | [`conv2d`] (fused bias + [`Activation`]) | `Conv` (2-D, groups, depthwise) | `conv.rs` |
//! | [`max_pool2d`], [`avg_pool2d`] | `MaxPool`, `AveragePool` (2-D) | `pool.rs` |
//! | [`global_avg_pool`], [`global_max_pool`] | `GlobalAveragePool`, `GlobalMaxPool` | `pool.rs` |
//! | [`resize`] | `Resize` (4-D, nearest / linear on H and W) | `resize.rs` |
//! | [`concat()`], [`split`], [`slice()`], [`transpose`] | `Concat`, `Split`, `Slice`, `Transpose` | `shape_ops.rs` |
//! | [`binary`] ([`add`], [`sub`], [`mul`], [`div`]) | `Add`, `Sub`, `Mul`, `Div` (broadcasting) | `elementwise.rs` |
//! | [`relu`], [`sigmoid`], [`silu`], [`elu`], [`gelu`], [`clipped_relu`], [`activation`] | `Relu`, `Sigmoid`, `Mul(x, Sigmoid(x))`, `Elu`, `Gelu` (exact), ProAct clipped ReLU, `LeakyRelu`, `HardSigmoid`, `HardSwish`, `Clip` | `activation.rs` |
//! | [`softmax`] | `Softmax` (opset 13: one axis) | `softmax.rs` |
//! | [`matmul`] | `MatMul` (batch broadcasting) | `matmul.rs` |
//! | [`linear`] | `Gemm` with `transB = 1` (x W^T + b) | `matmul.rs` |
//! | [`layer_norm`] | `LayerNormalization` | `norm.rs` |
//!
//! Reshape, Flatten, Squeeze and Unsqueeze move no data in row-major layout: the executor aliases
//! the buffer with the new shape.

mod activation;
mod conv;
mod elementwise;
mod gemm;
mod math;
mod matmul;
mod norm;
mod pool;
mod resize;
mod shape_ops;
mod softmax;

pub use activation::{
    activation, activation_inplace, clipped_relu, clipped_relu_inplace, elu, elu_inplace, gelu, gelu_inplace, relu,
    relu_inplace, sigmoid, sigmoid_inplace, silu, silu_inplace, Activation, ClipThreshold,
};
pub use conv::{conv2d, conv2d_output_shape, Conv2d};
pub use elementwise::{add, binary, div, mul, sub, BinaryOp};
pub use gemm::{force_portable_kernels, kernel_name};
pub use matmul::{linear, matmul, matmul_output_shape};
pub use norm::layer_norm;
pub use pool::{avg_pool2d, global_avg_pool, global_max_pool, max_pool2d, pool2d_output_shape, Pool2d};
pub(crate) use resize::{linear_taps, nearest_index, source_coord};
pub use resize::{resize, CoordTransform, NearestMode, Resize, ResizeMode};
pub(crate) use shape_ops::plan_slice;
pub use shape_ops::{concat, slice, slice_output_shape, split, transpose};
pub use softmax::softmax;

mod workers;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Largest rank the shape-generic ops (broadcasting, transpose, slice, batched matmul) accept;
/// index bookkeeping lives in fixed arrays of this size so the ops do not allocate.
pub const MAX_RANK: usize = 8;

/// Number of elements of a tensor of `shape` (1 for a scalar). Saturates instead of overflowing,
/// so an absurd shape can never match a real slice length.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
}

/// ONNX multidirectional (numpy) broadcasting of two shapes: align on the right; each pair of
/// dims must be equal or one of them 1.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let mut out = [0usize; MAX_RANK];
    let rank = broadcast_into("broadcast", a, b, &mut out)?;
    Ok(out[..rank].to_vec())
}

/// Broadcasts into a fixed array and returns the rank (no allocation).
pub(crate) fn broadcast_into(op: &'static str, a: &[usize], b: &[usize], out: &mut [usize; MAX_RANK]) -> Result<usize> {
    let rank = a.len().max(b.len());
    check_rank(op, rank)?;
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(Error::shape(op, format!("shapes broadcastable with {a:?}"), format!("{b:?}"))),
        };
    }
    Ok(rank)
}

/// Maps an ONNX axis (negative counts from the end) to an index in `0..rank`.
pub fn normalize_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(Error::InvalidArgument { reason: format!("axis {axis} is out of range for rank {rank}") });
    }
    Ok(a as usize)
}

pub(crate) fn check_rank(op: &'static str, rank: usize) -> Result<()> {
    if rank > MAX_RANK {
        return Err(Error::Unsupported { what: format!("{op} on rank {rank} (at most {MAX_RANK})") });
    }
    Ok(())
}

/// Checks that a slice holds exactly the elements of `shape`.
pub(crate) fn check_len(op: &'static str, what: &str, len: usize, shape: &[usize]) -> Result<()> {
    let n = numel(shape);
    if len != n {
        return Err(Error::shape(op, format!("{what} of shape {shape:?} ({n} values)"), format!("{len} values")));
    }
    Ok(())
}

/// Row-major strides of `shape`, in a fixed array.
pub(crate) fn strides_of(shape: &[usize]) -> [usize; MAX_RANK] {
    let mut s = [0usize; MAX_RANK];
    let mut acc = 1usize;
    for i in (0..shape.len()).rev() {
        s[i] = acc;
        acc = acc.saturating_mul(shape[i]);
    }
    s
}

/// (product of dims before `axis`, dim at `axis`, product of dims after `axis`).
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (numel(&shape[..axis]), shape[axis], numel(&shape[axis + 1..]))
}

static MAX_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Caps the worker threads the ops use (0 restores the default: every available core). The
/// executor sets this once, e.g. to leave a core to the control loop.
pub fn set_max_threads(n: usize) {
    MAX_THREADS.store(n, Ordering::Relaxed);
}

/// Worker threads the ops may use.
pub fn max_threads() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(64));
    match MAX_THREADS.load(Ordering::Relaxed) {
        0 => cores,
        n => n.min(cores),
    }
}

/// Below this many multiply-adds an op runs on the calling thread: waking the pool costs
/// microseconds, which a smaller op does not repay.
pub const PARALLEL_MACS: usize = 1 << 21;

/// Runs `work(item, scratch)` for every item on the calling thread and `scratches.len() - 1`
/// pool helpers (helper i uses `scratches[i + 1]`). Items are handed out one at a time from a
/// shared queue, so a helper that starts late (a busy core, a slow wake-up) takes fewer items
/// instead of holding the op up: the caller alone finishes whatever is left.
pub(crate) fn run_parallel<T: Send>(items: Vec<T>, scratches: Vec<&mut [f32]>, work: impl Fn(T, &mut [f32]) + Sync) {
    let queue = std::sync::Mutex::new(items.into_iter());
    let drain = |scratch: &mut [f32]| loop {
        // A poisoned lock means another worker panicked; the pool re-raises that panic.
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
        match next {
            Some(item) => work(item, scratch),
            None => break,
        }
    };
    let mut scratches = scratches.into_iter();
    let Some(own) = scratches.next() else { return };
    // Helper i takes scratch i: each slot is taken exactly once.
    let helper_scratch: Vec<std::sync::Mutex<Option<&mut [f32]>>> =
        scratches.map(|s| std::sync::Mutex::new(Some(s))).collect();
    let job = |i: usize| {
        let scratch = helper_scratch[i].lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(scratch) = scratch {
            drain(scratch);
        }
    };
    workers::Pool::global().run(helper_scratch.len(), &job, || drain(own));
}

/// The persistent worker pool the ops run on (also used by the weight-format GEMV).
pub(crate) fn worker_pool() -> &'static workers::Pool {
    workers::Pool::global()
}

/// Work items for `workers` threads: about four each, so late threads even out.
pub(crate) fn item_count(workers: usize, units: usize) -> usize {
    (4 * workers).min(units).max(1)
}

/// Workers worth using for `work` multiply-adds (or element operations), at most `units`.
pub(crate) fn workers_for(work: usize, units: usize) -> usize {
    if work < PARALLEL_MACS {
        1
    } else {
        max_threads().min(units).max(1)
    }
}

//! CPU operator library: the f32 ops the graph executor calls for YOLO-family detectors and small
//! transformers, each with ONNX semantics (opsets 13 to 21).
//!
//! Conventions shared by every op:
//! - tensors are f32, row-major (NCHW for images), passed as a slice plus its shape;
//! - outputs go to caller-provided slices (the executor plans all activation memory), and the op
//!   checks every length against the shapes first: a wrong shape is an [`Error`], never a panic;
//! - ops do not allocate once warm, on any thread: [`conv2d`], [`matmul`] and [`linear`] keep a
//!   per-thread scratch buffer (packed weights, phase planes, GEMM tails) that grows to the
//!   largest layer once and is then reused. Above [`PARALLEL_MACS`] an op splits its work over
//!   the persistent worker pool (`workers.rs`, up to [`max_threads`]) by item index: workers
//!   take indices from an atomic counter and write disjoint parts of the output
//!   ([`SharedMut`]), so no work list is built per call;
//! - the GEMM-based ops pick their SIMD kernel at run time (AVX-512F, else AVX2 + FMA on x86_64
//!   when the CPU has it, else the baseline build; NEON on aarch64): [`kernel_name`] says which,
//!   [`force_kernel`] pins one of [`CpuKernel::available`] for tests and comparisons;
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
//! | [`linear_attention`] (CARE), [`softmax_attention`] | (native ops, [B, H, N, D]) | `attention.rs` |
//! | [`DeltaConv2d`] (temporal delta state of one conv layer) | (stream mode of `Conv`) | `delta.rs` |
//!
//! Reshape, Flatten, Squeeze and Unsqueeze move no data in row-major layout: the executor aliases
//! the buffer with the new shape.

mod activation;
mod attention;
mod conv;
mod delta;
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
pub(crate) use attention::dims as attention_dims;
pub use attention::{linear_attention, softmax_attention, CARE_EPSILON};
pub use conv::{conv2d, conv2d_output_shape, conv2d_packed, Conv2d, PackedConvWeights};
pub use delta::{
    DeltaConv2d, DeltaLinear, DeltaScratch, DeltaStep, PROBE_EVERY as DELTA_PROBE_EVERY,
    PROBE_EVERY_MAX as DELTA_PROBE_EVERY_MAX,
};
pub use elementwise::{add, binary, div, mul, sub, BinaryOp};
pub use gemm::{force_kernel, kernel_name, Kernel as CpuKernel};
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

/// 0: use [`PARALLEL_MACS`].
static PARALLEL_THRESHOLD: AtomicUsize = AtomicUsize::new(0);

/// Sets the work (multiply-adds) from which an op splits over the worker pool; 0 restores
/// [`PARALLEL_MACS`]. A board with slow wake-ups may want it higher; tests set it low to run the
/// threaded paths on small models.
pub fn set_parallel_threshold(macs: usize) {
    PARALLEL_THRESHOLD.store(macs, Ordering::Relaxed);
}

/// A mutable slice that several workers write at once, each to its own part. The parts are not
/// split up front (that would allocate a list per call); instead every accessor is `unsafe` and
/// its caller promises that no two live borrows overlap.
pub(crate) struct SharedMut<'a, T = f32> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: a `SharedMut` is a `&mut [T]` handed to several threads; the disjointness its
// accessors demand makes that as safe as sending disjoint `&mut` sub-slices.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    pub(crate) fn new(data: &'a mut [T]) -> SharedMut<'a, T> {
        SharedMut { ptr: data.as_mut_ptr(), len: data.len(), _borrow: std::marker::PhantomData }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Elements `start..start + len` (bounds checked).
    ///
    /// # Safety
    /// No other borrow of an overlapping range, from this or another thread, may be live while
    /// the returned one is.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, start: usize, len: usize) -> &'a mut [T] {
        assert!(start <= self.len && len <= self.len - start, "range {start}+{len} of {}", self.len);
        // SAFETY: in bounds (checked above) of a slice borrowed mutably for 'a; exclusivity is
        // the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }

    /// Element `i` (bounds checked).
    ///
    /// # Safety
    /// As for [`SharedMut::range`]: no other thread may write element `i` meanwhile.
    #[inline]
    pub(crate) unsafe fn get(&self, i: usize) -> T
    where
        T: Copy,
    {
        assert!(i < self.len, "element {i} of {}", self.len);
        // SAFETY: in bounds; no concurrent write (the caller's promise).
        unsafe { self.ptr.add(i).read() }
    }

    /// Sets element `i` (bounds checked).
    ///
    /// # Safety
    /// As for [`SharedMut::range`]: no other thread may read or write element `i` meanwhile.
    #[inline]
    pub(crate) unsafe fn set(&self, i: usize, v: T) {
        assert!(i < self.len, "element {i} of {}", self.len);
        // SAFETY: in bounds; exclusive (the caller's promise).
        unsafe { self.ptr.add(i).write(v) }
    }
}

static PARALLEL_RUNS: AtomicUsize = AtomicUsize::new(0);

/// How many op calls have split their work over the worker pool so far (for tests that must know
/// the threaded paths ran, and for profiling).
pub fn parallel_runs() -> usize {
    PARALLEL_RUNS.load(Ordering::Relaxed)
}

/// Runs `work(item, scratch)` for every item in `0..items` on the calling thread and up to
/// `workers - 1` pool helpers; worker w works in `scratch[w * per_worker..][..per_worker]`
/// (`scratch` holds `workers * per_worker` floats). See [`parallel_items`]. Nothing is
/// allocated.
pub(crate) fn parallel_for(
    items: usize,
    workers: usize,
    scratch: &mut [f32],
    per_worker: usize,
    work: impl Fn(usize, &mut [f32]) + Sync,
) {
    let workers = workers.clamp(1, items.max(1));
    assert!(scratch.len() >= workers * per_worker, "scratch for {workers} workers");
    if workers == 1 {
        (0..items).for_each(|i| work(i, &mut scratch[..per_worker]));
        return;
    }
    let scratch = SharedMut::new(scratch);
    parallel_items(items, workers, |item, w| {
        // SAFETY: worker w is the only user of piece w (see `parallel_items`), and it runs one
        // item at a time.
        work(item, unsafe { scratch.range(w * per_worker, per_worker) })
    });
}

/// Runs `work(item, w)` for every item in `0..items` on the calling thread (w = 0) and up to
/// `workers - 1` pool helpers (w = 1, 2, ...); each w runs one item at a time, so per-worker
/// scratch indexed by w needs no lock. Items are handed out one at a time from an atomic
/// counter, so a helper that starts late (a busy core, a slow wake-up) takes fewer items
/// instead of holding the op up: the caller alone finishes whatever is left. Nothing is
/// allocated.
pub(crate) fn parallel_items(items: usize, workers: usize, work: impl Fn(usize, usize) + Sync) {
    let workers = workers.clamp(1, items.max(1));
    if workers == 1 {
        (0..items).for_each(|i| work(i, 0));
        return;
    }
    PARALLEL_RUNS.fetch_add(1, Ordering::Relaxed);
    let next = AtomicUsize::new(0);
    let drain = |w: usize| loop {
        let item = next.fetch_add(1, Ordering::Relaxed);
        if item >= items {
            break;
        }
        work(item, w);
    };
    // The pool calls each helper index once per job, so every w below is distinct.
    let helper = |h: usize| drain(h + 1);
    workers::Pool::global().run(workers - 1, &helper, || drain(0));
}

/// The most workers [`parallel_items`] can run at once: the caller and the pool's helpers.
pub(crate) fn pool_threads() -> usize {
    workers::Pool::global().threads()
}

/// [`parallel_for`] over the `chunk`-float pieces of `out` (the last may be shorter): `work`
/// gets the piece's index, the piece and the worker's scratch.
pub(crate) fn parallel_chunks(
    out: &mut [f32],
    chunk: usize,
    workers: usize,
    scratch: &mut [f32],
    per_worker: usize,
    work: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    let chunk = chunk.max(1);
    let items = out.len().div_ceil(chunk);
    let out = SharedMut::new(out);
    parallel_for(items, workers, scratch, per_worker, |i, sc| {
        let start = i * chunk;
        // SAFETY: item i is run once, and piece i is disjoint from every other piece.
        let piece = unsafe { out.range(start, chunk.min(out.len() - start)) };
        work(i, piece, sc)
    });
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
    let threshold = match PARALLEL_THRESHOLD.load(Ordering::Relaxed) {
        0 => PARALLEL_MACS,
        t => t,
    };
    if work < threshold {
        1
    } else {
        max_threads().min(units).max(1)
    }
}

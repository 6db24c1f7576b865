//! GPU (WGSL) versions of the graph ops in [`crate::ops`], for a graph executor that keeps every
//! activation in one arena buffer and records all dispatches at load time.
//!
//! At load, each constructor (`conv2d`, `binary`, ...) checks the shapes exactly as its CPU twin
//! does and returns prepared [`GpuStep`]s: pipeline, bind group, parameter buffer and workgroup
//! counts. At run, [`GpuStep::encode`] records them into the executor's compute pass; nothing is
//! allocated or compiled then. Each step is one dispatch; a constructor returns several when the
//! op is several dispatches (one per Concat input) and none when the output is empty.
//!
//! # Binding model, and why
//!
//! wgpu (wgpu-core 30, `track::invalid_resource_state`) tracks usage per *buffer*, not per
//! range: within one dispatch a buffer may be in any number of read-only states or exactly one
//! exclusive state, and `STORAGE_READ_WRITE` is exclusive. So the arena cannot be bound
//! read-only for the inputs and read_write for the output of the same dispatch, even when the
//! ranges are disjoint. Every kernel therefore binds:
//!
//! | binding | WGSL | what |
//! |---|---|---|
//! | 0 | `var<uniform> p: Params` | the op's parameters |
//! | 1 | `var<storage, read_write> dst: array<f32>` | the output's buffer (the arena), once |
//! | 2..4 | `var<storage, read> src0..src2` | up to three other buffers (constants) |
//! | 5 | `var<storage, read> aux` | this step's parameter buffer again: host-made tables |
//!
//! Every operand is passed as a (slot, element offset) pair in the parameters, and the shaders
//! read through one `load(slot, i)` (a uniform branch). Inputs in the output's buffer are read
//! through `dst`. Each buffer is bound over the smallest range that covers the operands in it,
//! starting at the offset rounded down to the device's storage-offset alignment, so views need
//! only be 4-byte aligned (the executor's 256-byte offsets are more than enough) and an arena
//! larger than the binding limit works as long as one op's operands fit in a binding. Unused
//! `src` slots bind the parameter buffer (read-only uses may share a buffer).
//!
//! An output may be the same range as an input (in-place activation, same-shape binary,
//! softmax, layer norm, a Concat input already in its block of the output: every element is read
//! before it is written, by the thread that writes it). Partial overlaps between an output and
//! an input would race and are not detected; the executor's memory plan does not produce them.
//!
//! Ordering: every step binds its output buffer read_write, so wgpu puts a barrier between
//! consecutive dispatches of one compute pass and each step sees what the steps before it
//! wrote. Each step owns a small parameter buffer, written with `queue.write_buffer` at load
//! (it reaches the GPU with the next submission).
//!
//! # Kernels
//!
//! | op | WGSL entry (file) | notes |
//! |---|---|---|
//! | [`conv2d`] | `conv2d`, `conv2d_direct` (op_gemm.wgsl) | implicit GEMM tiles; direct below 4 output channels per group (depthwise) |
//! | [`conv2d_packed`] | `conv2d`, `conv2d_direct` (op_gemm.wgsl + op_conv_packed.wgsl + op_conv_<format>.wgsl) | the same kernels, weights decoded from F16 / Q8 / Q4 / FP4 in place |
//! | [`matmul`], [`linear`] | `matmul` (op_gemm.wgsl) | batch broadcasting through per-dim strides |
//! | [`binary`] | `binary` (op_elementwise.wgsl) | broadcast collapsed on the host |
//! | [`activation`] | `activation` (op_elementwise.wgsl) | every [`crate::ops::Activation`] |
//! | [`max_pool2d`], [`avg_pool2d`], [`global_avg_pool`], [`global_max_pool`] | `pool2d`, `global_pool` (op_pool.wgsl) | |
//! | [`resize`] | `resize` (op_resize.wgsl) | source taps tabulated on the host in f64 |
//! | [`concat()`], [`split`], [`slice()`], [`transpose`], [`copy()`] | `gather` (op_gather.wgsl) | one strided copy |
//! | [`softmax`], [`layer_norm`] | `softmax_rows`, `softmax_strided`, `layer_norm` (op_rows.wgsl) | |

mod attention;
mod data;
mod elementwise;
mod gemm;
mod pool;
mod resize;
mod rows;

use std::sync::Arc;

use super::context::GpuContext;
use super::shaders;
use crate::error::{Error, Result};
use crate::ops::{numel, Activation, ClipThreshold};

pub use attention::{linear_attention, softmax_attention};
pub use data::{concat, copy, slice, split, transpose};
pub use elementwise::{activation, binary};
pub use gemm::{conv2d, conv2d_packed, linear, matmul, GemmTile, PackedWeights, GEMM_TILES};
pub use pool::{avg_pool2d, global_avg_pool, global_max_pool, max_pool2d};
pub use resize::resize;
pub use rows::{layer_norm, softmax};

/// The shader files these kernels are assembled from (each module is `op_common.wgsl` plus one
/// family file; the GEMM family once per tile shape with op_conv_f32.wgsl's weight reads, and
/// once more per tile shape and packed weight format with op_conv_packed.wgsl and the format's
/// decoder instead).
pub const SHADER_FILES: [&str; 14] = [
    "op_common.wgsl",
    "op_elementwise.wgsl",
    "op_gather.wgsl",
    "op_pool.wgsl",
    "op_resize.wgsl",
    "op_rows.wgsl",
    "op_attention.wgsl",
    "op_gemm.wgsl",
    "op_conv_f32.wgsl",
    "op_conv_packed.wgsl",
    "op_conv_f16.wgsl",
    "op_conv_q8.wgsl",
    "op_conv_q4.wgsl",
    "op_conv_fp4.wgsl",
];

/// A view of f32 data in a GPU buffer: a byte offset (a multiple of 4; the executor uses
/// multiples of 256) and the logical shape, row-major.
#[derive(Clone, Copy, Debug)]
pub struct GpuView<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub shape: &'a [usize],
}

impl<'a> GpuView<'a> {
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64, shape: &'a [usize]) -> Self {
        Self { buffer, offset, shape }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(self.shape)
    }

    /// Bytes the view covers.
    pub fn bytes(&self) -> u64 {
        self.numel() as u64 * 4
    }
}

/// One prepared dispatch: everything made at load, so encoding allocates nothing.
pub struct GpuStep {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
    /// The parameter block (and the aux tables after it); the bind group refers to it.
    _params: wgpu::Buffer,
    name: &'static str,
}

impl GpuStep {
    /// Records the dispatch into `pass`.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.groups[0], self.groups[1], self.groups[2]);
    }

    /// The kernel's entry point name (for profiles and logs).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The workgroup counts of the dispatch.
    pub fn workgroups(&self) -> [u32; 3] {
        self.groups
    }
}

impl std::fmt::Debug for GpuStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuStep").field("name", &self.name).field("groups", &self.groups).finish()
    }
}

/// A kernel module: `op_common.wgsl` plus one family file (and a generated header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Module {
    Elementwise,
    Gather,
    Pool,
    Resize,
    Rows,
    Attention,
    Gemm(GemmTile),
    /// The GEMM family plus the packed-weight conv kernels for one weight format.
    GemmPacked(GemmTile, gemm::PackedFormat),
}

impl Module {
    fn name(self) -> String {
        match self {
            Module::Elementwise => "op_elementwise".into(),
            Module::Gather => "op_gather".into(),
            Module::Pool => "op_pool".into(),
            Module::Resize => "op_resize".into(),
            Module::Rows => "op_rows".into(),
            Module::Attention => "op_attention".into(),
            Module::Gemm(t) => format!("op_gemm_{}x{}", t.bm, t.bn),
            Module::GemmPacked(t, f) => format!("op_gemm_{}x{}_{}", t.bm, t.bn, f.name()),
        }
    }

    fn source(self) -> String {
        let (header, bodies): (String, &[&str]) = match self {
            Module::Elementwise => (String::new(), &[shaders::OP_ELEMENTWISE]),
            Module::Gather => (String::new(), &[shaders::OP_GATHER]),
            Module::Pool => (String::new(), &[shaders::OP_POOL]),
            Module::Resize => (String::new(), &[shaders::OP_RESIZE]),
            Module::Rows => (String::new(), &[shaders::OP_ROWS]),
            Module::Attention => (String::new(), &[shaders::OP_ATTENTION]),
            Module::Gemm(t) => (
                format!("const BM: u32 = {}u;\nconst BN: u32 = {}u;\n", t.bm, t.bn),
                &[shaders::OP_GEMM, shaders::OP_CONV_F32],
            ),
            Module::GemmPacked(t, f) => return gemm::packed_source(&self.name(), t, f),
        };
        let header = format!("// {}\n{header}", self.name());
        [&[header.as_str(), shaders::OP_COMMON][..], bodies].concat().join("\n")
    }

    fn all() -> Vec<Module> {
        let mut v =
            vec![Module::Elementwise, Module::Gather, Module::Pool, Module::Resize, Module::Rows, Module::Attention];
        v.extend(GEMM_TILES.iter().map(|&t| Module::Gemm(t)));
        for f in gemm::PackedFormat::ALL {
            v.extend(GEMM_TILES.iter().map(|&t| Module::GemmPacked(t, f)));
        }
        v
    }
}

/// Every module these ops compile, as (name, WGSL source): for naga validation in tests.
pub fn modules() -> Vec<(String, String)> {
    Module::all().into_iter().map(|m| (m.name(), m.source())).collect()
}

/// Buffers besides the output's that one dispatch can bind (`src0`..`src2`; slot 4 of the
/// shaders' `load` is the step's own `aux`).
const MAX_OTHER_BUFFERS: usize = 3;

/// Threads per workgroup of every kernel.
const WG: u32 = 256;

/// An operand as the shaders see it: binding slot and element offset in that binding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Operand {
    slot: u32,
    off: u32,
}

/// A view registered with a [`Binder`]: which buffer and where.
#[derive(Clone, Copy, Debug)]
struct Ref {
    buf: usize,
    offset: u64,
    empty: bool,
}

/// Collects the buffers a dispatch touches: the output's first (bound read_write), then up to
/// three others (read-only), each over the union of its operands' byte ranges.
struct Binder<'a> {
    op: &'static str,
    y_offset: u64,
    ranges: Vec<(&'a wgpu::Buffer, u64, u64)>,
}

impl<'a> Binder<'a> {
    /// Starts with the output view, which must not be empty.
    fn new(op: &'static str, y: &GpuView<'a>) -> Result<Self> {
        check_view(op, "output", y)?;
        Ok(Self { op, y_offset: y.offset, ranges: vec![(y.buffer, y.offset, y.offset + y.bytes())] })
    }

    fn output(&self) -> Ref {
        Ref { buf: 0, offset: self.y_offset, empty: false }
    }

    /// Registers an input view (an empty one is never read and binds nothing).
    fn input(&mut self, what: &str, v: &GpuView<'a>) -> Result<Ref> {
        if v.numel() == 0 {
            return Ok(Ref { buf: 0, offset: 0, empty: true });
        }
        check_view(self.op, what, v)?;
        let (lo, hi) = (v.offset, v.offset + v.bytes());
        if let Some(i) = self.ranges.iter().position(|r| r.0 == v.buffer) {
            let r = &mut self.ranges[i];
            r.1 = r.1.min(lo);
            r.2 = r.2.max(hi);
            return Ok(Ref { buf: i, offset: lo, empty: false });
        }
        if self.ranges.len() > MAX_OTHER_BUFFERS {
            return Err(Error::Unsupported {
                what: format!("{}: inputs in more than {MAX_OTHER_BUFFERS} buffers besides the output's", self.op),
            });
        }
        self.ranges.push((v.buffer, lo, hi));
        Ok(Ref { buf: self.ranges.len() - 1, offset: lo, empty: false })
    }

    /// Fixes the bound ranges: starts rounded down to the storage-offset alignment.
    fn finish(self, ctx: &GpuContext) -> Result<Layout<'a>> {
        let align = u64::from(ctx.limits.min_storage_buffer_offset_alignment.max(4));
        // The shaders index in u32 and the strided copy in i32: bindings stay below 2^31 floats.
        let limit = ctx.limits.max_storage_buffer_binding_size.min(1 << 33);
        let mut ranges = Vec::with_capacity(self.ranges.len());
        for (buffer, lo, hi) in self.ranges {
            let start = lo / align * align;
            let size = hi - start;
            if size > limit {
                return Err(Error::Unsupported {
                    what: format!(
                        "{}: operands spanning {size} bytes of one buffer exceed the device's binding limit of {limit}",
                        self.op
                    ),
                });
            }
            ranges.push((buffer, start, size));
        }
        Ok(Layout { ranges })
    }
}

/// The bound ranges of a dispatch, and operand resolution against them.
struct Layout<'a> {
    ranges: Vec<(&'a wgpu::Buffer, u64, u64)>,
}

impl Layout<'_> {
    fn operand(&self, r: Ref) -> Operand {
        if r.empty {
            return Operand::default();
        }
        Operand { slot: r.buf as u32, off: ((r.offset - self.ranges[r.buf].1) / 4) as u32 }
    }
}

fn check_view(op: &'static str, what: &str, v: &GpuView) -> Result<()> {
    if !v.offset.is_multiple_of(4) {
        return Err(Error::InvalidArgument {
            reason: format!("{op}: {what} at byte offset {} is not 4-byte aligned", v.offset),
        });
    }
    let end = v.offset.checked_add(v.bytes());
    if end.is_none_or(|e| e > v.buffer.size()) {
        return Err(Error::shape(
            op,
            format!("{what} of shape {:?} within its buffer ({} bytes)", v.shape, v.buffer.size()),
            format!("bytes {}..{}", v.offset, v.offset.saturating_add(v.bytes())),
        ));
    }
    if v.numel() > u32::MAX as usize / 2 {
        return Err(Error::Unsupported { what: format!("{op}: {what} of {} elements (u32 indexing)", v.numel()) });
    }
    Ok(())
}

/// Element offset (in u32 words) where a step's aux data starts: right after its `P` block.
fn aux_start<P>() -> u32 {
    (std::mem::size_of::<P>() / 4) as u32
}

/// Builds the step: parameter buffer (params, then `aux`), pipeline from the cache, bind group.
fn make_step<P: bytemuck::Pod>(
    ctx: &GpuContext,
    module: Module,
    entry: &'static str,
    params: &P,
    aux: &[f32],
    layout: &Layout,
    groups: [u32; 3],
) -> Result<GpuStep> {
    let max = ctx.limits.max_compute_workgroups_per_dimension;
    if groups.iter().any(|&g| g > max) {
        return Err(Error::Unsupported {
            what: format!("{entry}: dispatch of {groups:?} workgroups (at most {max} per dimension)"),
        });
    }
    let pipeline = ctx.pipeline(&module.name(), || module.source(), entry, &[], false)?;
    let p_bytes = bytemuck::bytes_of(params);
    let mut bytes = Vec::with_capacity(p_bytes.len() + aux.len() * 4);
    bytes.extend_from_slice(p_bytes);
    bytes.extend_from_slice(bytemuck::cast_slice(aux));
    let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let params_buf = ctx.zeroed_buffer(entry, bytes.len() as u64, usage)?;
    ctx.queue.write_buffer(&params_buf, 0, &bytes);
    let bind_group = ctx.scoped(&format!("binding {entry} buffers"), || {
        let range = |i: usize| match layout.ranges.get(i) {
            Some(&(buffer, offset, size)) => {
                wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer, offset, size: wgpu::BufferSize::new(size) })
            }
            None => params_buf.as_entire_binding(),
        };
        let entries = [
            wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &params_buf,
                    offset: 0,
                    size: wgpu::BufferSize::new(p_bytes.len() as u64),
                }),
            },
            wgpu::BindGroupEntry { binding: 1, resource: range(0) },
            wgpu::BindGroupEntry { binding: 2, resource: range(1) },
            wgpu::BindGroupEntry { binding: 3, resource: range(2) },
            wgpu::BindGroupEntry { binding: 4, resource: range(3) },
            wgpu::BindGroupEntry { binding: 5, resource: params_buf.as_entire_binding() },
        ];
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    })?;
    Ok(GpuStep { pipeline, bind_group, groups, _params: params_buf, name: entry })
}

/// Workgroups for a grid-stride loop over `len` items: enough to fill any GPU, within the
/// per-dimension limit (the kernels loop over the rest).
fn grid_1d(ctx: &GpuContext, len: usize) -> [u32; 3] {
    let max = ctx.limits.max_compute_workgroups_per_dimension.max(1);
    let groups = len.div_ceil(WG as usize).clamp(1, max as usize) as u32;
    [groups, 1, 1]
}

/// Workgroups for one workgroup per row: a 2-D grid when rows exceed one dimension (the kernels
/// compute row = y * nx + x and skip the excess).
fn grid_rows(ctx: &GpuContext, rows: usize) -> [u32; 3] {
    let max = ctx.limits.max_compute_workgroups_per_dimension.max(1) as usize;
    let x = rows.clamp(1, max);
    [x as u32, rows.div_ceil(x).max(1) as u32, 1]
}

/// Packs up to 8 dims into two vec4s (the shaders' `array<vec4<u32>, 2>`).
fn pack8<T: Copy + Default>(v: &[T]) -> [[T; 4]; 2] {
    let mut out = [[T::default(); 4]; 2];
    for (i, &x) in v.iter().enumerate().take(8) {
        out[i / 4][i % 4] = x;
    }
    out
}

/// Mirrors `struct Act` in shaders/op_common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActParams {
    pub kind: u32,
    pub alpha: f32,
    pub beta: f32,
    /// aux element offset of per-channel clip thresholds, or [`NO_TABLE`].
    pub clip_off: u32,
}
const _: () = assert!(std::mem::size_of::<ActParams>() == 16);

/// `clip_off` when the clip threshold is one per layer (in `alpha`).
pub const NO_TABLE: u32 = u32::MAX;

// `ActParams::kind`: the ACT_* constants of op_common.wgsl.
const ACT_NONE: u32 = 0;
const ACT_RELU: u32 = 1;
const ACT_SIGMOID: u32 = 2;
const ACT_SILU: u32 = 3;
const ACT_ELU: u32 = 4;
const ACT_GELU: u32 = 5;
const ACT_CLIPPED_RELU: u32 = 6;
const ACT_LEAKY_RELU: u32 = 7;
const ACT_HARD_SIGMOID: u32 = 8;
const ACT_HARD_SWISH: u32 = 9;
const ACT_CLIP: u32 = 10;
const ACT_CLIPPED_SILU: u32 = 11;

/// Checks an activation as the CPU ops do (Clip bounds, per-channel threshold count against
/// `channels`) and encodes it; per-channel thresholds are appended to `aux`, which starts at
/// element `aux0` of the parameter buffer.
fn act_params(op: &'static str, a: &Activation, channels: usize, aux0: u32, aux: &mut Vec<f32>) -> Result<ActParams> {
    a.check_channels(op, channels)?;
    let p = |kind: u32, alpha: f32, beta: f32| ActParams { kind, alpha, beta, clip_off: NO_TABLE };
    Ok(match a {
        Activation::None => p(ACT_NONE, 0.0, 0.0),
        Activation::Relu => p(ACT_RELU, 0.0, 0.0),
        Activation::Sigmoid => p(ACT_SIGMOID, 0.0, 0.0),
        Activation::Silu => p(ACT_SILU, 0.0, 0.0),
        Activation::Elu { alpha } => p(ACT_ELU, *alpha, 0.0),
        Activation::Gelu => p(ACT_GELU, 0.0, 0.0),
        Activation::ClippedRelu(ClipThreshold::PerLayer(t)) => p(ACT_CLIPPED_RELU, *t, 0.0),
        Activation::ClippedRelu(ClipThreshold::PerChannel(ts)) => {
            let clip_off = aux0 + aux.len() as u32;
            aux.extend_from_slice(ts);
            ActParams { kind: ACT_CLIPPED_RELU, alpha: 0.0, beta: 0.0, clip_off }
        }
        Activation::ClippedSilu(ClipThreshold::PerLayer(t)) => p(ACT_CLIPPED_SILU, *t, 0.0),
        Activation::ClippedSilu(ClipThreshold::PerChannel(ts)) => {
            let clip_off = aux0 + aux.len() as u32;
            aux.extend_from_slice(ts);
            ActParams { kind: ACT_CLIPPED_SILU, alpha: 0.0, beta: 0.0, clip_off }
        }
        Activation::LeakyRelu { alpha } => p(ACT_LEAKY_RELU, *alpha, 0.0),
        Activation::HardSigmoid { alpha, beta } => p(ACT_HARD_SIGMOID, *alpha, *beta),
        Activation::HardSwish => p(ACT_HARD_SWISH, 0.0, 0.0),
        Activation::Clip { min, max } => {
            if min > max {
                return Err(Error::InvalidArgument { reason: format!("Clip min {min} is above max {max}") });
            }
            p(ACT_CLIP, *min, *max)
        }
    })
}

fn is_per_channel(a: &Activation) -> bool {
    a.is_per_channel()
}

/// Row-major strides of `shape`.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![0usize; shape.len()];
    let mut acc = 1usize;
    for i in (0..shape.len()).rev() {
        s[i] = acc;
        acc = acc.saturating_mul(shape[i]);
    }
    s
}

//! The GPU executor: the prepared steps as WGSL dispatches over one arena buffer, all created at
//! load. A run writes the inputs, submits one command buffer with one compute pass, and reads
//! the outputs back through a staging buffer.

use super::prepare::{prepare, Kind, Loc, Operand, Prepared};
use crate::backend::gpu::graph_ops::{self as gops, GpuStep, GpuView};
use crate::backend::gpu::GpuContext;
use crate::error::{Error, Result};
use crate::graph::{Graph, ValueId};

/// The buffer range an operand lives in.
fn operand_view<'a>(
    o: &'a Operand,
    arena: &'a wgpu::Buffer,
    consts: &'a [wgpu::Buffer],
    inputs: &'a [wgpu::Buffer],
) -> GpuView<'a> {
    match o.loc {
        Loc::Arena(off) => GpuView::new(arena, (off * 4) as u64, &o.shape),
        Loc::Const(c) => GpuView::new(&consts[c], 0, &o.shape),
        Loc::Input(i) => GpuView::new(&inputs[i], 0, &o.shape),
    }
}

/// A graph prepared for a GPU device.
pub struct GpuExecutor {
    steps: Vec<GpuStep>,
    arena: wgpu::Buffer,
    inputs: Vec<wgpu::Buffer>,
    input_shapes: Vec<Vec<usize>>,
    outputs: Vec<Operand>,
    staging: wgpu::Buffer,
    arena_bytes: usize,
    _consts: Vec<wgpu::Buffer>,
}

impl GpuExecutor {
    /// Prepares `g` on `ctx`: uploads the constants, allocates the arena and input buffers, and
    /// builds every dispatch. `weights` supplies f32 constants not held in the graph.
    pub fn new(ctx: &GpuContext, g: &Graph, weights: &dyn Fn(ValueId) -> Result<Vec<f32>>) -> Result<Self> {
        let p: Prepared = prepare(g, weights)?;
        let consts: Vec<wgpu::Buffer> =
            p.consts.iter().map(|c| ctx.storage_buffer("constant", bytemuck::cast_slice(c))).collect::<Result<_>>()?;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let arena = ctx.zeroed_buffer("activation arena", p.plan.arena_bytes.max(16) as u64, usage)?;
        let inputs: Vec<wgpu::Buffer> = p
            .input_shapes
            .iter()
            .map(|s| ctx.zeroed_buffer("graph input", (s.iter().product::<usize>() * 4) as u64, usage))
            .collect::<Result<_>>()?;
        let out_bytes = p.outputs.iter().map(|o| o.len * 4).max().unwrap_or(4).max(16);
        let staging = ctx.zeroed_buffer(
            "output read-back",
            out_bytes as u64,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let view = |o| operand_view(o, &arena, &consts, &inputs);
        let mut steps = Vec::new();
        for step in &p.steps {
            let (i, o) = (&step.inputs, &step.outputs);
            let made = match &step.kind {
                Kind::Conv(c) => gops::conv2d(ctx, view(&i[0]), view(&i[1]), i.get(2).map(view), c, view(&o[0])),
                Kind::Binary(op) => gops::binary(ctx, *op, view(&i[0]), view(&i[1]), view(&o[0])),
                Kind::Act(a) => gops::activation(ctx, view(&i[0]), a, view(&o[0])),
                Kind::MaxPool(pp) => gops::max_pool2d(ctx, view(&i[0]), pp, view(&o[0])),
                Kind::AvgPool(pp) => gops::avg_pool2d(ctx, view(&i[0]), pp, view(&o[0])),
                Kind::GlobalAvgPool => gops::global_avg_pool(ctx, view(&i[0]), view(&o[0])),
                Kind::Resize(r) => gops::resize(ctx, view(&i[0]), r, view(&o[0])),
                Kind::Concat(axis) => {
                    let parts: Vec<GpuView> = i.iter().map(view).collect();
                    gops::concat(ctx, &parts, *axis, view(&o[0]))
                }
                Kind::Split { axis, .. } => {
                    let outs: Vec<GpuView> = o.iter().map(view).collect();
                    gops::split(ctx, view(&i[0]), *axis, &outs)
                }
                Kind::Slice { starts, ends, axes, steps } => {
                    gops::slice(ctx, view(&i[0]), starts, ends, Some(axes), Some(steps), view(&o[0]))
                }
                Kind::Transpose(perm) => gops::transpose(ctx, view(&i[0]), perm, view(&o[0])),
                Kind::Copy => gops::copy(ctx, view(&i[0]), view(&o[0])),
                Kind::Softmax(axis) => gops::softmax(ctx, view(&i[0]), *axis, view(&o[0])),
                Kind::MatMul => gops::matmul(ctx, view(&i[0]), view(&i[1]), view(&o[0])),
                Kind::Linear => {
                    // `linear` reads W as [N, K]: the executor stored it so (transposed at load).
                    let w_shape = [o[0].shape[1], i[0].shape[1]];
                    let w = GpuView { shape: &w_shape, ..view(&i[1]) };
                    gops::linear(ctx, view(&i[0]), w, i.get(2).map(view), view(&o[0]))
                }
                Kind::LayerNorm { axis, epsilon } => {
                    gops::layer_norm(ctx, view(&i[0]), *axis, view(&i[1]), i.get(2).map(view), *epsilon, view(&o[0]))
                }
                Kind::ChannelAffine { .. } => Err(Error::Unsupported {
                    what: "an unfused BatchNormalization on the GPU (fold it into a Conv)".into(),
                }),
            };
            let made = made.map_err(|e| Error::GraphNode {
                node: step.name.clone(),
                op: step.kind.name().into(),
                reason: e.to_string(),
            })?;
            steps.extend(made);
        }
        Ok(Self {
            steps,
            arena,
            inputs,
            input_shapes: p.input_shapes,
            outputs: p.outputs,
            staging,
            arena_bytes: p.plan.arena_bytes,
            _consts: consts,
        })
    }

    pub fn input_shapes(&self) -> &[Vec<usize>] {
        &self.input_shapes
    }

    pub fn num_outputs(&self) -> usize {
        self.outputs.len()
    }

    pub fn output_shape(&self, i: usize) -> &[usize] {
        &self.outputs[i].shape
    }

    /// Peak activation memory (the arena), in bytes.
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// Dispatches per run.
    pub fn dispatches(&self) -> usize {
        self.steps.len()
    }

    /// Writes the inputs and records every dispatch into one compute pass of `enc`.
    pub fn encode(&self, ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, inputs: &[&[f32]]) -> Result<()> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::shape("run", format!("{} inputs", self.inputs.len()), inputs.len()));
        }
        for (i, (buf, data)) in self.inputs.iter().zip(inputs).enumerate() {
            let want: usize = self.input_shapes[i].iter().product();
            if data.len() != want {
                return Err(Error::shape("run", format!("input {i} of {:?}", self.input_shapes[i]), data.len()));
            }
            ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(data));
        }
        let mut pass =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("graph"), timestamp_writes: None });
        for s in &self.steps {
            s.encode(&mut pass);
        }
        Ok(())
    }

    /// Runs the graph: upload, one submission, wait.
    pub fn run(&self, ctx: &GpuContext, inputs: &[&[f32]]) -> Result<()> {
        ctx.check_alive()?;
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("graph run") });
        self.encode(ctx, &mut enc, inputs)?;
        ctx.queue.submit([enc.finish()]);
        ctx.wait()
    }

    /// Reads output `i` of the last run into `out`.
    pub fn read_output(&self, ctx: &GpuContext, i: usize, out: &mut [f32]) -> Result<()> {
        let o = &self.outputs[i];
        if out.len() != o.len {
            return Err(Error::shape("read_output", format!("{} values", o.len), out.len()));
        }
        let Loc::Arena(off) = o.loc else {
            return Err(Error::Unsupported { what: "a graph output that is a constant or an input".into() });
        };
        let bytes = (o.len * 4) as u64;
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read output") });
        enc.copy_buffer_to_buffer(&self.arena, (off * 4) as u64, &self.staging, 0, bytes);
        ctx.queue.submit([enc.finish()]);
        // `read_f32` copies from a buffer's start: stage through our staging buffer directly.
        ctx.read_mapped(&self.staging, out)
    }

    /// Prepares the graph of a .kpak file on `ctx` (quantized weights dequantized at load for
    /// now: the graph kernels read f32 weights).
    pub fn from_kpak(ctx: &GpuContext, pak: &crate::format::Kpak) -> Result<Self> {
        let g = pak.graph().ok_or_else(|| Error::Unsupported { what: "running a .kpak without a graph".into() })?;
        Self::new(ctx, g, &|id| super::cpu::kpak_weights(pak, g, id))
    }
}

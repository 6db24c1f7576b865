//! The GPU executor: the prepared steps as WGSL dispatches over one arena buffer, all created at
//! load. A run writes the inputs, submits one command buffer with one compute pass, and reads
//! the outputs back through a staging buffer.

use std::cell::Cell;
use std::collections::HashMap;
use std::ops::Range;

use super::delta::{DeltaLayerStats, DeltaOptions, DeltaStats};
use super::prepare::{prepare, prepare_deferring, Kind, Loc, Operand, Prepared};
use crate::backend::gpu::graph_ops::{self as gops, GpuStep, GpuView, PackedWeights};
use crate::backend::gpu::{GpuContext, GpuDeltaConv2d};
use crate::error::{Error, Result};
use crate::graph::{Graph, ValueId};
use crate::tensor::MatrixView;

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

/// The GPU executor's stream state in delta mode.
struct GpuDelta {
    /// Per prepared step: its delta layer, if it has one.
    layers: Vec<Option<GpuDeltaConv2d>>,
    /// Per delta layer (in step order): multiply-adds of the scatter per fired entry, taken as
    /// the dense conv's per input entry (exact on average; entries near a border or skipped by
    /// a stride reach fewer outputs).
    macs_per_fired: Vec<f64>,
    /// The delta layers' fired counters, copied here after each frame and read in one mapping.
    counters: wgpu::Buffer,
    stats: std::cell::RefCell<DeltaStats>,
    last_key: Cell<bool>,
    keyframe_interval: usize,
    since_key: Cell<Option<usize>>,
    frames: Cell<u64>,
    keyframes: Cell<u64>,
}

impl GpuDelta {
    /// Adds the last frame's fired counts (copied into `counters` by the frame's submission).
    fn account(&self, ctx: &GpuContext) -> Result<()> {
        let n = self.macs_per_fired.len();
        let mut raw = vec![0f32; n];
        ctx.read_mapped(&self.counters, &mut raw)?;
        let key = self.last_key.get();
        let mut stats = self.stats.borrow_mut();
        for ((l, &per), c) in stats.layers.iter_mut().zip(&self.macs_per_fired).zip(raw) {
            if key {
                l.fired += l.inputs;
                l.macs += l.dense_macs;
                l.dense_frames += 1;
            } else {
                let fired = c.to_bits() as u64;
                l.fired += fired;
                l.macs += (fired as f64 * per).round() as u64;
            }
        }
        Ok(())
    }

    /// Starts a frame: whether it is a keyframe.
    fn begin(&self) -> bool {
        let key = match self.since_key.get() {
            None => true,
            Some(n) => self.keyframe_interval > 0 && n + 1 >= self.keyframe_interval,
        };
        self.since_key.set(Some(if key { 0 } else { self.since_key.get().map_or(0, |n| n + 1) }));
        self.frames.set(self.frames.get() + 1);
        self.keyframes.set(self.keyframes.get() + u64::from(key));
        self.last_key.set(key);
        key
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
    packed_convs: usize,
    dense_macs: u64,
    /// Per prepared step: its dispatches in `steps`.
    ranges: Vec<Range<usize>>,
    /// Stream state in delta mode (see [`GpuExecutor::enable_delta`]).
    delta: Option<GpuDelta>,
    _consts: Vec<wgpu::Buffer>,
    _packed: Vec<(wgpu::Buffer, wgpu::Buffer)>,
}

impl GpuExecutor {
    /// Prepares `g` on `ctx`: uploads the constants, allocates the arena and input buffers, and
    /// builds every dispatch. `weights` supplies f32 constants not held in the graph.
    pub fn new(ctx: &GpuContext, g: &Graph, weights: &dyn Fn(ValueId) -> Result<Vec<f32>>) -> Result<Self> {
        Self::with_packed(ctx, g, weights, &|_| None)
    }

    /// As [`GpuExecutor::new`], with conv weights that `packed` returns kept in their packed
    /// format (uploaded as they are, decoded by the conv kernel).
    pub fn with_packed<'m>(
        ctx: &GpuContext,
        g: &Graph,
        weights: &dyn Fn(ValueId) -> Result<Vec<f32>>,
        packed: &dyn Fn(ValueId) -> Option<MatrixView<'m>>,
    ) -> Result<Self> {
        let p: Prepared = prepare_deferring(g, weights, &|id| packed(id).is_some())?;
        // Packed conv weights: their const slot maps to (scheme, main, aux).
        let mut packed_slots: HashMap<usize, (crate::tensor::Scheme, wgpu::Buffer, wgpu::Buffer)> = HashMap::new();
        for step in &p.steps {
            if let (Kind::Conv(_), Some(w)) = (&step.kind, step.inputs.get(1)) {
                if let Loc::Const(c) = w.loc {
                    if p.consts[c].is_empty() && !packed_slots.contains_key(&c) {
                        let m = packed(p.const_ids[c]).ok_or_else(|| Error::Unsupported {
                            what: format!("node '{}': its packed weights could not be found", step.name),
                        })?;
                        let main = ctx.storage_buffer("packed weights", bytemuck::cast_slice(m.main))?;
                        let aux = ctx.storage_buffer("packed scales", bytemuck::cast_slice(m.aux))?;
                        packed_slots.insert(c, (m.scheme, main, aux));
                    }
                }
            }
        }
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
        let mut ranges = Vec::with_capacity(p.steps.len());
        let mut packed_convs = 0;
        for step in &p.steps {
            let (i, o) = (&step.inputs, &step.outputs);
            let made = match &step.kind {
                Kind::Conv(c) => match i[1].loc {
                    Loc::Const(slot) if packed_slots.contains_key(&slot) => {
                        let (scheme, main, aux) = &packed_slots[&slot];
                        let s = &i[1].shape;
                        let w = PackedWeights { scheme: *scheme, main, aux, shape: [s[0], s[1], s[2], s[3]] };
                        packed_convs += 1;
                        gops::conv2d_packed(ctx, view(&i[0]), w, i.get(2).map(view), c, view(&o[0]))
                    }
                    _ => gops::conv2d(ctx, view(&i[0]), view(&i[1]), i.get(2).map(view), c, view(&o[0])),
                },
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
                Kind::LinearAttention => {
                    gops::linear_attention(ctx, view(&i[0]), view(&i[1]), view(&i[2]), view(&o[0]))
                }
                Kind::Linear(transposed) => {
                    // `linear` reads W as [N, K]: as stored, or the copy transposed at load.
                    let w_shape = [o[0].shape[1], i[0].shape[1]];
                    let w = match transposed {
                        Some(c) => GpuView::new(&consts[*c], 0, &w_shape),
                        None => GpuView { shape: &w_shape, ..view(&i[1]) },
                    };
                    gops::linear(ctx, view(&i[0]), w, i.get(2).map(view), view(&o[0]))
                }
                Kind::LayerNorm { axis, epsilon } => {
                    gops::layer_norm(ctx, view(&i[0]), *axis, view(&i[1]), i.get(2).map(view), *epsilon, view(&o[0]))
                }
                Kind::ChannelAffine { scale, shift } => {
                    // Two broadcast elementwise ops: y = x * scale, then y = y + shift, with the
                    // per-channel constants shaped [C, 1, ...] against x's [N, C, ...].
                    let x = &i[0].shape;
                    let per_channel: Vec<usize> =
                        x.iter().enumerate().skip(1).map(|(d, &n)| if d == 1 { n } else { 1 }).collect();
                    let (sv, bv) = (
                        GpuView::new(&consts[*scale], 0, &per_channel),
                        GpuView::new(&consts[*shift], 0, &per_channel),
                    );
                    gops::binary(ctx, crate::ops::BinaryOp::Mul, view(&i[0]), sv, view(&o[0])).and_then(|mut a| {
                        a.extend(gops::binary(ctx, crate::ops::BinaryOp::Add, view(&o[0]), bv, view(&o[0]))?);
                        Ok(a)
                    })
                }
            };
            let made = made.map_err(|e| Error::GraphNode {
                node: step.name.clone(),
                op: step.kind.name().into(),
                reason: e.to_string(),
            })?;
            ranges.push(steps.len()..steps.len() + made.len());
            steps.extend(made);
        }
        Ok(Self {
            dense_macs: p.steps.iter().map(super::prepare::Step::macs).sum(),
            ranges,
            delta: None,
            steps,
            arena,
            inputs,
            input_shapes: p.input_shapes,
            outputs: p.outputs,
            staging,
            arena_bytes: p.plan.arena_bytes,
            packed_convs,
            _consts: consts,
            _packed: packed_slots.into_values().map(|(_, m, a)| (m, a)).collect(),
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

    /// Convolutions that read packed (f16 / q8 / q4 / fp4) weights directly.
    pub fn packed_convs(&self) -> usize {
        self.packed_convs
    }

    /// Multiply-adds of one run (conv, linear and matmul steps).
    pub fn dense_macs(&self) -> u64 {
        self.dense_macs
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
        let Some(d) = &self.delta else {
            for s in &self.steps {
                s.encode(&mut pass);
            }
            return Ok(());
        };
        let key = d.begin();
        for (layer, range) in d.layers.iter().zip(&self.ranges) {
            match layer {
                Some(l) if key => l.encode_keyframe(&mut pass),
                Some(l) => l.encode_step(&mut pass),
                None => self.steps[range.clone()].iter().for_each(|s| s.encode(&mut pass)),
            }
        }
        Ok(())
    }

    /// Runs the following frames in delta mode: every conv with constant weights and an
    /// activation the delta kernel has (none, ReLU, sigmoid, SiLU) keeps a temporal state on the
    /// GPU (`GpuDeltaConv2d`) and adds only the inputs that moved by theta or more; the other
    /// steps run dense. Keyframes come on the first frame and every `keyframe_interval` frames.
    /// `g` and `weights` must be what this executor was made from (the delta layers need f32
    /// weights; packed convs keep theirs packed). Unlike the CPU executor's, this mode has no
    /// per-layer dense fallback or scene-cut detection (they would need the fired counts on the
    /// host mid-frame), and thresholds are fixed: scene-relative ones need the activations.
    pub fn enable_delta(
        &mut self,
        ctx: &GpuContext,
        g: &Graph,
        weights: &dyn Fn(ValueId) -> Result<Vec<f32>>,
        opts: &DeltaOptions,
    ) -> Result<()> {
        if opts.relative.is_some() {
            return Err(Error::Unsupported {
                what: "scene-relative delta thresholds on the GPU (give one theta, or per-layer delta.theta)".into(),
            });
        }
        let p = prepare(g, weights)?;
        if p.steps.len() != self.ranges.len() {
            return Err(Error::InvalidArgument {
                reason: "enable_delta: the graph is not the one this executor was made from".into(),
            });
        }
        let mut layers = Vec::with_capacity(p.steps.len());
        let mut stats = DeltaStats::default();
        let mut macs_per_fired = Vec::new();
        for step in &p.steps {
            let (i, o) = (&step.inputs, &step.outputs);
            let constant = |op: Option<&Operand>| match op {
                Some(Operand { loc: Loc::Const(c), len, .. }) => Some(Some(&p.consts[*c][..*len])),
                Some(_) => None,
                None => Some(None),
            };
            let layer = match (&step.kind, constant(i.get(1)), constant(i.get(2))) {
                (Kind::Conv(c), Some(Some(w)), Some(bias)) => {
                    let x = operand_view(&i[0], &self.arena, &self._consts, &self.inputs);
                    let out = operand_view(&o[0], &self.arena, &self._consts, &self.inputs);
                    match GpuDeltaConv2d::on_views(ctx, x, w, &i[1].shape, bias, c, opts.theta_of(&step.name), out) {
                        Ok(l) => Some(l),
                        // An activation the delta kernel lacks: this conv stays dense.
                        Err(Error::Unsupported { .. }) => None,
                        Err(e) => {
                            return Err(Error::GraphNode {
                                node: step.name.clone(),
                                op: step.kind.name().into(),
                                reason: e.to_string(),
                            })
                        }
                    }
                }
                _ => None,
            };
            match &layer {
                Some(l) => {
                    macs_per_fired.push(step.macs() as f64 / l.input_len().max(1) as f64);
                    let t = opts.theta_of(&step.name);
                    stats.layers.push(DeltaLayerStats {
                        name: step.name.clone(),
                        theta: t.iter().sum::<f32>() / t.len() as f32,
                        reads_input: i.iter().any(|o| matches!(o.loc, Loc::Input(_))),
                        inputs: l.input_len() as u64,
                        dense_macs: step.macs(),
                        ..DeltaLayerStats::default()
                    });
                }
                None => stats.other_macs_per_frame += step.macs(),
            }
            layers.push(layer);
        }
        let counters = ctx.zeroed_buffer(
            "delta counters read-back",
            (macs_per_fired.len().max(4) * 4) as u64,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        self.delta = Some(GpuDelta {
            macs_per_fired,
            counters,
            stats: std::cell::RefCell::new(stats),
            last_key: Cell::new(false),
            layers,
            keyframe_interval: opts.keyframe_interval,
            since_key: Cell::new(None),
            frames: Cell::new(0),
            keyframes: Cell::new(0),
        });
        Ok(())
    }

    /// (frames, keyframes) since delta mode was enabled.
    pub fn delta_frames(&self) -> Option<(u64, u64)> {
        self.delta.as_ref().map(|d| (d.frames.get(), d.keyframes.get()))
    }

    /// Per delta layer: (node index in the prepared steps, fired entries in the last frame,
    /// input entries). Reads every layer's counter back: for reports, not for the hot path.
    pub fn delta_fired(&self, ctx: &GpuContext) -> Result<Vec<(usize, usize, usize)>> {
        let Some(d) = &self.delta else { return Ok(Vec::new()) };
        d.layers
            .iter()
            .enumerate()
            .filter_map(|(si, l)| l.as_ref().map(|l| (si, l)))
            .map(|(si, l)| Ok((si, l.fired(ctx)?, l.input_len())))
            .collect()
    }

    /// Makes the next frame a keyframe.
    pub fn reset_delta(&self) {
        if let Some(d) = &self.delta {
            d.since_key.set(None);
        }
    }

    /// Runs the graph: upload, one submission, wait.
    pub fn run(&self, ctx: &GpuContext, inputs: &[&[f32]]) -> Result<()> {
        ctx.check_alive()?;
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("graph run") });
        self.encode(ctx, &mut enc, inputs)?;
        if let Some(d) = &self.delta {
            for (k, l) in d.layers.iter().flatten().enumerate() {
                enc.copy_buffer_to_buffer(l.counter(), 0, &d.counters, (k * 4) as u64, 4);
            }
        }
        ctx.queue.submit([enc.finish()]);
        ctx.wait()?;
        if let Some(d) = &self.delta {
            d.account(ctx)?;
        }
        Ok(())
    }

    /// [`GpuExecutor::run`] then [`GpuExecutor::read_output`] in one submission: the copy to
    /// the read-back buffer is recorded after the graph, so a frame costs one submit and one
    /// wait instead of two of each (the detector's path, every control period).
    pub fn run_and_read(&self, ctx: &GpuContext, inputs: &[&[f32]], i: usize, out: &mut [f32]) -> Result<()> {
        ctx.check_alive()?;
        let o = &self.outputs[i];
        if out.len() != o.len {
            return Err(Error::shape("read_output", format!("{} values", o.len), out.len()));
        }
        let Loc::Arena(off) = o.loc else {
            return Err(Error::Unsupported { what: "a graph output that is a constant or an input".into() });
        };
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("graph run") });
        self.encode(ctx, &mut enc, inputs)?;
        if let Some(d) = &self.delta {
            for (k, l) in d.layers.iter().flatten().enumerate() {
                enc.copy_buffer_to_buffer(l.counter(), 0, &d.counters, (k * 4) as u64, 4);
            }
        }
        enc.copy_buffer_to_buffer(&self.arena, (off * 4) as u64, &self.staging, 0, (o.len * 4) as u64);
        ctx.queue.submit([enc.finish()]);
        ctx.read_mapped(&self.staging, out)?;
        if let Some(d) = &self.delta {
            d.account(ctx)?;
        }
        Ok(())
    }

    /// Totals of the delta stream (None when not in delta mode). MACs of a delta step are its
    /// fired entries times the dense conv's multiply-adds per input entry.
    pub fn delta_stats(&self) -> Option<DeltaStats> {
        self.delta.as_ref().map(|d| {
            let mut s = d.stats.borrow().clone();
            (s.frames, s.keyframes) = (d.frames.get(), d.keyframes.get());
            s
        })
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

    /// Prepares the graph of a .kpak file on `ctx`. Packed conv weights (f16, q8, q4, fp4) stay
    /// packed: uploaded from the mapping as they are and decoded by the conv kernel. Convs that
    /// read a graph input directly, and LoRC-corrected weights, get dequantized f32 weights.
    pub fn from_kpak(ctx: &GpuContext, pak: &crate::format::Kpak) -> Result<Self> {
        let g = pak.graph().ok_or_else(|| Error::Unsupported { what: "running a .kpak without a graph".into() })?;
        let packable = packable_conv_weights(g, pak);
        Self::with_packed(ctx, g, &|id| super::cpu::kpak_weights(pak, g, id), &|id| {
            packable.contains(&id).then(|| pak.matrix(&g.values[id].name).ok()).flatten()
        })
    }
}

/// Constants of `g` that are conv weights stored packed in `pak` and can stay packed on the GPU:
/// read only as conv weights, by convs whose input is not a graph input (the packed kernel binds
/// the input through the arena), without LoRC factors.
fn packable_conv_weights(g: &Graph, pak: &crate::format::Kpak) -> Vec<ValueId> {
    let mut out = Vec::new();
    for &id in g.constants.keys() {
        let Ok(t) = pak.tensor(&g.values[id].name) else { continue };
        if t.scheme == crate::tensor::Scheme::F32 || t.lorc_rank > 0 || g.values[id].shape.len() != 4 {
            continue;
        }
        let readers: Vec<&crate::graph::Node> = g.nodes.iter().filter(|n| n.inputs.contains(&Some(id))).collect();
        let ok = !readers.is_empty()
            && readers.iter().all(|n| {
                n.op == "Conv"
                    && n.inputs.get(1) == Some(&Some(id))
                    && !n.inputs[0].is_some_and(|x| g.inputs.contains(&x))
            });
        if ok {
            out.push(id);
        }
    }
    out
}

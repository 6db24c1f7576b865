//! The CPU executor: the graph's prepared steps over one activation arena.

use super::delta::{DeltaMode, DeltaOptions, DeltaStats, Layer};
use super::prepare::{prepare, Kind, Loc, Operand, Step, MAX_FANOUT};
use crate::error::{Error, Result};
use crate::graph::plan::MemoryPlan;
use crate::graph::{Graph, ValueId};
use crate::ops;

/// A graph prepared for the CPU.
pub struct CpuExecutor {
    steps: Vec<Step>,
    arena: Vec<f32>,
    consts: Vec<Vec<f32>>,
    /// Per step: the conv weights packed for the GEMM kernel at load (convs with constant
    /// weights), so a run does not repack them.
    packed: Vec<Option<ops::PackedConvWeights>>,
    inputs: Vec<Vec<f32>>,
    input_shapes: Vec<Vec<usize>>,
    outputs: Vec<Operand>,
    plan: MemoryPlan,
    /// Seconds spent in each step over the runs since profiling was enabled (empty when off).
    profile: Vec<f64>,
    /// Stream state when running in delta mode (see [`CpuExecutor::enable_delta`]).
    delta: Option<Box<DeltaMode>>,
    /// Per step: the largest value of each output channel since
    /// [`CpuExecutor::record_activation_max`] (empty when off, or for steps without a ReLU or
    /// SiLU): the statistics `kestrel calibrate-clip` sets ProAct thresholds from.
    act_max: Vec<Vec<f32>>,
}

impl CpuExecutor {
    /// Prepares `g`. `weights` supplies f32 data for constants whose data is not in the graph
    /// (graphs read from a .kpak keep weights in the tensor table).
    pub fn new(g: &Graph, weights: &dyn Fn(ValueId) -> Result<Vec<f32>>) -> Result<Self> {
        let p = prepare(g, weights)?;
        let inputs = p.input_shapes.iter().map(|s| vec![0.0; s.iter().product()]).collect();
        let packed = p
            .steps
            .iter()
            .map(|step| match (&step.kind, step.inputs.get(1)) {
                (Kind::Conv(conv), Some(Operand { loc: Loc::Const(c), len, shape })) => {
                    ops::PackedConvWeights::new(&p.consts[*c][..*len], shape, conv.group).map(Some)
                }
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            packed,
            steps: p.steps,
            arena: vec![0.0; p.plan.arena_bytes / 4],
            consts: p.consts,
            inputs,
            input_shapes: p.input_shapes,
            outputs: p.outputs,
            plan: p.plan,
            profile: Vec::new(),
            delta: None,
            act_max: Vec::new(),
        })
    }

    /// Runs the following frames in delta mode (module `delta`): every conv and linear step
    /// with constant weights keeps a temporal state and computes only what changed. The first
    /// frame is a keyframe. Replaces any earlier delta state.
    pub fn enable_delta(&mut self, opts: DeltaOptions) -> Result<()> {
        let mut layers = Vec::with_capacity(self.steps.len());
        let mut reads_input = Vec::with_capacity(self.steps.len());
        let mut other_macs = 0;
        for step in &self.steps {
            let mut layer = self.delta_layer(step)?;
            if let Some(l) = &mut layer {
                l.set_thetas(opts.theta_of(&step.name)).map_err(|e| Error::GraphNode {
                    node: step.name.clone(),
                    op: step.kind.name().into(),
                    reason: e.to_string(),
                })?;
            }
            let reads = step.inputs.iter().any(|o| matches!(o.loc, Loc::Input(_)));
            if let Some(Layer::Conv(c)) = &mut layer {
                c.set_cost_model(opts.cost_model);
                // A camera layer's scan is what sees a scene cut: it never skips one.
                c.set_scan_always(reads);
            }
            if layer.is_none() {
                other_macs += step.macs();
            }
            layers.push(layer);
            reads_input.push(reads);
        }
        let names: Vec<&str> = self.steps.iter().map(|s| s.name.as_str()).collect();
        // (channels, values per channel per image) of each step's first input.
        let input_layout = self
            .steps
            .iter()
            .map(|s| {
                let shape = s.inputs.first().map_or(&[][..], |o| &o.shape[..]);
                (shape.get(1).copied().unwrap_or(1).max(1), shape.iter().skip(2).product::<usize>().max(1))
            })
            .collect();
        self.delta = Some(Box::new(DeltaMode::new(opts, layers, reads_input, input_layout, &names, other_macs)?));
        Ok(())
    }

    /// The delta state of `step`, if it is a conv or linear step with constant weights.
    fn delta_layer(&self, step: &Step) -> Result<Option<Layer>> {
        let constant = |o: Option<&Operand>| match o {
            Some(Operand { loc: Loc::Const(c), len, .. }) => Some(Some(&self.consts[*c][..*len])),
            Some(_) => None,
            None => Some(None),
        };
        let (i, o) = (&step.inputs, &step.outputs);
        Ok(match &step.kind {
            Kind::Conv(p) => match (constant(i.get(1)), constant(i.get(2))) {
                (Some(Some(w)), Some(bias)) => {
                    Some(Layer::Conv(Box::new(ops::DeltaConv2d::new(&i[0].shape, w, &i[1].shape, bias, p, 0.0)?)))
                }
                _ => None,
            },
            Kind::Linear(transposed) if i[0].shape.len() == 2 => {
                let w = match transposed {
                    Some(c) => Some(Some(&self.consts[*c][..])),
                    None => constant(i.get(1)),
                };
                match (w, constant(i.get(2))) {
                    (Some(Some(w)), Some(bias)) => {
                        let ([rows, k], n) = ([i[0].shape[0], i[0].shape[1]], o[0].shape[1]);
                        Some(Layer::Linear(ops::DeltaLinear::new(rows, w, n, k, bias, 0.0)?))
                    }
                    _ => None,
                }
            }
            _ => None,
        })
    }

    /// Per delta layer (node name): the root mean square of its reference input per input
    /// channel (axis 1), the scale its thresholds are relative to (`kestrel calibrate-delta`).
    pub fn delta_input_rms(&self) -> Vec<(String, Vec<f32>)> {
        let Some(d) = &self.delta else { return Vec::new() };
        self.steps
            .iter()
            .zip(&d.layers)
            .filter_map(|(s, l)| l.as_ref().map(|l| (s, l.reference_input())))
            .map(|(s, x)| {
                let shape = &s.inputs[0].shape;
                let c = shape.get(1).copied().unwrap_or(1).max(1);
                let inner: usize = shape.iter().skip(2).product::<usize>().max(1);
                let mut ms = vec![0.0f64; c];
                super::delta::channel_mean_squares(x, inner, &mut ms);
                (s.name.clone(), ms.iter().map(|t| t.sqrt() as f32).collect())
            })
            .collect()
    }

    /// Starts (or stops) recording the largest value of each output channel of every ReLU or
    /// SiLU step (fused into a conv or on its own), over the runs that follow.
    pub fn record_activation_max(&mut self, on: bool) {
        let clippable = |a: &ops::Activation| {
            use ops::Activation::*;
            matches!(a, Relu | Silu | ClippedRelu(_) | ClippedSilu(_))
        };
        self.act_max = if on {
            self.steps
                .iter()
                .map(|s| match &s.kind {
                    Kind::Conv(p) if clippable(&p.activation) => Some(()),
                    Kind::Act(a) if clippable(a) => Some(()),
                    _ => None,
                })
                .zip(&self.steps)
                .map(|(c, s)| match c {
                    Some(()) => vec![f32::NEG_INFINITY; s.outputs[0].shape.get(1).copied().unwrap_or(1).max(1)],
                    None => Vec::new(),
                })
                .collect()
        } else {
            Vec::new()
        };
    }

    /// (step name, largest value per output channel) recorded since
    /// [`CpuExecutor::record_activation_max`].
    pub fn activation_max(&self) -> Vec<(String, Vec<f32>)> {
        self.steps
            .iter()
            .zip(&self.act_max)
            .filter(|(_, m)| !m.is_empty())
            .map(|(s, m)| (s.name.clone(), m.clone()))
            .collect()
    }

    /// Back to dense runs.
    pub fn disable_delta(&mut self) {
        self.delta = None;
    }

    /// Totals of the delta stream (None when not in delta mode).
    pub fn delta_stats(&self) -> Option<&DeltaStats> {
        self.delta.as_deref().map(|d| &d.stats)
    }

    /// Zeroes the delta totals (the stream state is kept).
    pub fn reset_delta_stats(&mut self) {
        if let Some(d) = &mut self.delta {
            d.reset_stats();
        }
    }

    /// Makes the next frame a keyframe (a new clip, a camera that restarted).
    pub fn reset_delta(&mut self) {
        if let Some(d) = &mut self.delta {
            d.reset();
        }
    }

    /// Multiply-adds of one dense run (conv, linear and matmul steps).
    pub fn dense_macs(&self) -> u64 {
        self.steps.iter().map(Step::macs).sum()
    }

    /// Starts (or stops) accumulating the time spent in each step.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = if on { vec![0.0; self.steps.len()] } else { Vec::new() };
    }

    /// (node name, op, seconds) per step, accumulated since profiling was enabled.
    pub fn profile(&self) -> Vec<(String, String, f64)> {
        self.steps.iter().zip(&self.profile).map(|(s, &t)| (s.name.clone(), s.kind.name().to_string(), t)).collect()
    }

    /// Peak activation memory, in bytes.
    pub fn arena_bytes(&self) -> usize {
        self.plan.arena_bytes
    }

    pub fn input_shapes(&self) -> &[Vec<usize>] {
        &self.input_shapes
    }

    /// Output `i` of the last run.
    pub fn output(&self, i: usize) -> &[f32] {
        let o = &self.outputs[i];
        self.slice(o.loc, o.len)
    }

    pub fn output_shape(&self, i: usize) -> &[usize] {
        &self.outputs[i].shape
    }

    pub fn num_outputs(&self) -> usize {
        self.outputs.len()
    }

    fn slice(&self, loc: Loc, len: usize) -> &[f32] {
        match loc {
            Loc::Arena(off) => &self.arena[off..off + len],
            Loc::Const(c) => &self.consts[c][..len],
            Loc::Input(i) => &self.inputs[i][..len],
        }
    }

    /// Runs the graph on `inputs` (one slice per graph input, in order).
    pub fn run(&mut self, inputs: &[&[f32]]) -> Result<()> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::shape("run", format!("{} inputs", self.inputs.len()), inputs.len()));
        }
        for (i, (dst, src)) in self.inputs.iter_mut().zip(inputs).enumerate() {
            if dst.len() != src.len() {
                return Err(Error::shape("run", format!("input {i} of {:?}", self.input_shapes[i]), src.len()));
            }
            dst.copy_from_slice(src);
        }
        let arena_len = self.arena.len();
        let base = self.arena.as_mut_ptr();
        let profiling = !self.profile.is_empty();
        let mut frame = self.delta.as_mut().map(|d| d.begin());
        for (si, step) in self.steps.iter().enumerate() {
            let started = profiling.then(std::time::Instant::now);
            let get = |o: &Operand| -> &[f32] {
                match o.loc {
                    // SAFETY: offsets and lengths come from the memory plan, which keeps every
                    // value inside the arena; inputs of a step are only read while the step runs.
                    Loc::Arena(off) => {
                        debug_assert!(off + o.len <= arena_len);
                        unsafe { std::slice::from_raw_parts(base.add(off), o.len) }
                    }
                    Loc::Const(c) => &self.consts[c][..o.len],
                    Loc::Input(i) => &self.inputs[i][..o.len],
                }
            };
            let put = |o: &Operand| -> &mut [f32] {
                match o.loc {
                    // SAFETY: the memory plan gives values that are alive at the same step
                    // disjoint arena ranges (tests/graph_plan.rs checks this property), and a
                    // step's inputs and outputs are all alive at that step, so this slice aliases
                    // no other slice in use. Outputs are always arena values.
                    Loc::Arena(off) => {
                        debug_assert!(off + o.len <= arena_len);
                        unsafe { std::slice::from_raw_parts_mut(base.add(off), o.len) }
                    }
                    _ => unreachable!("node outputs are planned into the arena"),
                }
            };
            let (i, o) = (&step.inputs, &step.outputs);
            let delta_step = match (&mut self.delta, &mut frame) {
                (Some(d), Some(f)) if d.layers[si].is_some() => Some((d, f)),
                _ => None,
            };
            let result = match (&step.kind, delta_step) {
                (_, Some((d, f))) => d.run(si, get(&i[0]), f, put(&o[0])),
                (kind, None) => match kind {
                    Kind::Conv(p) => {
                        let bias = i.get(2).map(get);
                        match &self.packed[si] {
                            Some(w) => ops::conv2d_packed(get(&i[0]), &i[0].shape, w, bias, p, put(&o[0])),
                            None => ops::conv2d(get(&i[0]), &i[0].shape, get(&i[1]), &i[1].shape, bias, p, put(&o[0])),
                        }
                    }
                    Kind::Binary(op) => ops::binary(*op, get(&i[0]), &i[0].shape, get(&i[1]), &i[1].shape, put(&o[0])),
                    Kind::Act(a) => ops::activation(get(&i[0]), &i[0].shape, a, put(&o[0])),
                    Kind::MaxPool(p) => ops::max_pool2d(get(&i[0]), &i[0].shape, p, put(&o[0])),
                    Kind::AvgPool(p) => ops::avg_pool2d(get(&i[0]), &i[0].shape, p, put(&o[0])),
                    Kind::GlobalAvgPool => ops::global_avg_pool(get(&i[0]), &i[0].shape, put(&o[0])),
                    Kind::Resize(p) => ops::resize(get(&i[0]), &i[0].shape, &o[0].shape, p, put(&o[0])),
                    Kind::Concat(axis) => {
                        let mut parts: heapless::Vec<(&[f32], &[usize]), MAX_FANOUT> = heapless::Vec::new();
                        for x in i {
                            let _ = parts.push((get(x), &x.shape));
                        }
                        ops::concat(&parts, *axis, put(&o[0]))
                    }
                    Kind::Split { axis, sizes } => {
                        let mut outs: heapless::Vec<&mut [f32], MAX_FANOUT> = heapless::Vec::new();
                        for x in o {
                            let _ = outs.push(put(x));
                        }
                        ops::split(get(&i[0]), &i[0].shape, *axis, sizes, &mut outs)
                    }
                    Kind::Slice { starts, ends, axes, steps } => {
                        ops::slice(get(&i[0]), &i[0].shape, starts, ends, Some(axes), Some(steps), put(&o[0]))
                    }
                    Kind::Transpose(perm) => ops::transpose(get(&i[0]), &i[0].shape, perm, put(&o[0])),
                    Kind::Copy => {
                        put(&o[0]).copy_from_slice(get(&i[0]));
                        Ok(())
                    }
                    Kind::Softmax(axis) => ops::softmax(get(&i[0]), &i[0].shape, *axis, put(&o[0])),
                    Kind::MatMul => ops::matmul(get(&i[0]), &i[0].shape, get(&i[1]), &i[1].shape, put(&o[0])),
                    Kind::LinearAttention => ops::linear_attention(
                        get(&i[0]),
                        &i[0].shape,
                        get(&i[1]),
                        &i[1].shape,
                        get(&i[2]),
                        &i[2].shape,
                        put(&o[0]),
                    ),
                    Kind::Linear(transposed) => {
                        let w_shape = [o[0].shape[1], i[0].shape[1]];
                        let w = match transposed {
                            Some(c) => &self.consts[*c][..],
                            None => get(&i[1]),
                        };
                        ops::linear(get(&i[0]), &i[0].shape, w, &w_shape, i.get(2).map(get), put(&o[0]))
                    }
                    Kind::LayerNorm { axis, epsilon } => ops::layer_norm(
                        get(&i[0]),
                        &i[0].shape,
                        *axis,
                        get(&i[1]),
                        i.get(2).map(get),
                        *epsilon,
                        put(&o[0]),
                    ),
                    Kind::ChannelAffine { scale, shift } => {
                        let (scale, shift) = (&self.consts[*scale], &self.consts[*shift]);
                        let x = get(&i[0]);
                        let y = put(&o[0]);
                        let c = i[0].shape.get(1).copied().unwrap_or(1);
                        let inner: usize = i[0].shape.iter().skip(2).product();
                        for (idx, (yv, &xv)) in y.iter_mut().zip(x).enumerate() {
                            let ch = (idx / inner.max(1)) % c.max(1);
                            *yv = xv * scale[ch] + shift[ch];
                        }
                        Ok(())
                    }
                },
            };
            result.map_err(|e| Error::GraphNode {
                node: step.name.clone(),
                op: step.kind.name().into(),
                reason: e.to_string(),
            })?;
            if let Some(d) = self.delta.as_mut().filter(|d| d.exact[si]) {
                d.ran_exact(si);
            }
            if let Some(max) = self.act_max.get_mut(si).filter(|m| !m.is_empty()) {
                let o = &o[0];
                let y = match o.loc {
                    // SAFETY: as `put`: the step's output range, read after the step wrote it.
                    Loc::Arena(off) => unsafe { std::slice::from_raw_parts(base.add(off), o.len) },
                    _ => unreachable!("node outputs are planned into the arena"),
                };
                let c = max.len();
                let inner = (o.len / o.shape.first().copied().unwrap_or(1).max(1) / c).max(1);
                for (i, &v) in y.iter().enumerate() {
                    let ch = (i / inner) % c;
                    if v > max[ch] {
                        max[ch] = v;
                    }
                }
            }
            if let Some(t) = started {
                self.profile[si] += t.elapsed().as_secs_f64();
            }
        }
        Ok(())
    }
}

impl CpuExecutor {
    /// Prepares the graph of a .kpak file. Quantized weights are dequantized once, here: the CPU
    /// convolutions run on f32 weights (the GPU reads the packed formats directly).
    pub fn from_kpak(pak: &crate::format::Kpak) -> Result<Self> {
        let g = pak.graph().ok_or_else(|| Error::Unsupported {
            what: "running a .kpak without a graph (a weights-only file)".into(),
        })?;
        Self::new(g, &|id| kpak_weights(pak, g, id))
    }
}

/// The f32 values of constant `id` of `g` from the tensor table (dequantized if packed).
pub fn kpak_weights(pak: &crate::format::Kpak, g: &Graph, id: ValueId) -> Result<Vec<f32>> {
    let name = &g.values[id].name;
    let t = pak.tensor(name)?;
    if t.scheme.is_quantized() || t.lorc_rank > 0 {
        let m = pak.matrix(name)?;
        let mut w = crate::quant::dequantize(&m);
        if let Some(correction) = crate::quant::lorc_dense(&m) {
            w.iter_mut().zip(correction).for_each(|(a, b)| *a += b);
        }
        Ok(w.into_iter().map(|v| v as f32).collect())
    } else {
        pak.tensor_f32(name)
    }
}

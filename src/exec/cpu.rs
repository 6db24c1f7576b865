//! The CPU executor: the graph's nodes as prepared steps over one activation arena.

use crate::error::{Error, Result};
use crate::graph::infer::{slice_spec, window_params, Window};
use crate::graph::plan::{plan_activation_memory, MemoryPlan};
use crate::graph::{ConstData, Graph, Node, ValueId};
use crate::ops::{self, Activation, BinaryOp, Conv2d, Pool2d};

/// Most inputs of a Concat and outputs of a Split a step handles without allocating.
const MAX_FANOUT: usize = 32;

/// Where a value's floats live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    /// Offset in floats into the arena.
    Arena(usize),
    Const(usize),
    Input(usize),
}

#[derive(Clone, Debug)]
struct Operand {
    loc: Loc,
    len: usize,
    shape: Vec<usize>,
}

#[derive(Clone, Debug)]
enum Kind {
    Conv(Conv2d),
    Binary(BinaryOp),
    Act(Activation),
    MaxPool(Pool2d),
    AvgPool(Pool2d),
    GlobalAvgPool,
    Resize(ops::Resize),
    Concat(i64),
    Split {
        axis: i64,
        sizes: Vec<usize>,
    },
    Slice {
        starts: Vec<i64>,
        ends: Vec<i64>,
        axes: Vec<i64>,
        steps: Vec<i64>,
    },
    Transpose(Vec<usize>),
    /// Reshape, Flatten, Squeeze, Unsqueeze, Identity: the same floats.
    Copy,
    Softmax(i64),
    MatMul,
    /// y = x W^T + b with W [N, K] (Gemm; transposed at load when transB = 0).
    Linear,
    LayerNorm {
        axis: i64,
        epsilon: f32,
    },
    /// y = x * scale[c] + shift[c] on axis 1 (an unfused BatchNormalization).
    ChannelAffine {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Conv(_) => "Conv",
            Kind::Binary(_) => "Binary",
            Kind::Act(_) => "Activation",
            Kind::MaxPool(_) => "MaxPool",
            Kind::AvgPool(_) => "AveragePool",
            Kind::GlobalAvgPool => "GlobalAveragePool",
            Kind::Resize(_) => "Resize",
            Kind::Concat(_) => "Concat",
            Kind::Split { .. } => "Split",
            Kind::Slice { .. } => "Slice",
            Kind::Transpose(_) => "Transpose",
            Kind::Copy => "Reshape",
            Kind::Softmax(_) => "Softmax",
            Kind::MatMul => "MatMul",
            Kind::Linear => "Gemm",
            Kind::LayerNorm { .. } => "LayerNormalization",
            Kind::ChannelAffine { .. } => "BatchNormalization",
        }
    }
}

#[derive(Clone, Debug)]
struct Step {
    name: String,
    kind: Kind,
    inputs: Vec<Operand>,
    outputs: Vec<Operand>,
}

/// A graph prepared for the CPU.
pub struct CpuExecutor {
    steps: Vec<Step>,
    arena: Vec<f32>,
    consts: Vec<Vec<f32>>,
    inputs: Vec<Vec<f32>>,
    input_shapes: Vec<Vec<usize>>,
    outputs: Vec<Operand>,
    plan: MemoryPlan,
    /// Seconds spent in each step over the runs since profiling was enabled (empty when off).
    profile: Vec<f64>,
}

fn node_err(node: &Node, reason: impl Into<String>) -> Error {
    Error::GraphNode { node: node.name.clone(), op: node.op.clone(), reason: reason.into() }
}

fn act_from_attr(node: &Node) -> Result<Activation> {
    Ok(match node.string("activation", "none")? {
        "none" => Activation::None,
        "relu" => Activation::Relu,
        "sigmoid" => Activation::Sigmoid,
        "silu" => Activation::Silu,
        other => return Err(node_err(node, format!("unknown fused activation '{other}'"))),
    })
}

fn pool_params(node: &Node, w: &Window) -> Result<Pool2d> {
    Ok(Pool2d {
        kernel: [w.kernel[0], w.kernel[1]],
        strides: [w.strides[0], w.strides[1]],
        pads: [w.pads[0], w.pads[1], w.pads[2], w.pads[3]],
        dilations: [w.dilations[0], w.dilations[1]],
        ceil_mode: node.int("ceil_mode", 0)? != 0,
        count_include_pad: node.int("count_include_pad", 0)? != 0,
    })
}

impl CpuExecutor {
    /// Prepares `g`. `weights` supplies f32 data for constants whose data is not in the graph
    /// (graphs read from a .kpak keep weights in the tensor table).
    pub fn new(g: &Graph, weights: &dyn Fn(ValueId) -> Result<Vec<f32>>) -> Result<Self> {
        let plan = plan_activation_memory(g);
        let mut consts = Vec::new();
        let mut const_slot = vec![None; g.values.len()];
        let mut ids: Vec<ValueId> = g.constants.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let data = match &g.constants[&id] {
                ConstData::F32(v) if !v.is_empty() || g.values[id].numel() == 0 => v.clone(),
                ConstData::F32(_) => weights(id)?,
                ConstData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            };
            if data.len() != g.values[id].numel() {
                return Err(Error::InvalidTensor {
                    tensor: g.values[id].name.clone(),
                    reason: format!("has {} values for shape {:?}", data.len(), g.values[id].shape),
                });
            }
            const_slot[id] = Some(consts.len());
            consts.push(data);
        }
        let operand = |v: ValueId| -> Result<Operand> {
            let loc = if let Some(off) = plan.offset(v) {
                Loc::Arena(off / 4)
            } else if let Some(c) = const_slot[v] {
                Loc::Const(c)
            } else if let Some(i) = g.inputs.iter().position(|&x| x == v) {
                Loc::Input(i)
            } else {
                return Err(Error::Unsupported { what: format!("value '{}' has no storage", g.values[v].name) });
            };
            Ok(Operand { loc, len: g.values[v].numel(), shape: g.values[v].shape.clone() })
        };
        let mut steps = Vec::with_capacity(g.nodes.len());
        let mut unsupported = Vec::new();
        for node in &g.nodes {
            let kind = match Self::kind(g, node, &mut consts, &const_slot) {
                Ok(k) => k,
                Err(Error::Unsupported { what }) => {
                    unsupported.push(format!("{} (node '{}': {what})", node.op, node.name));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let inputs = node.inputs.iter().flatten().map(|&v| operand(v)).collect::<Result<Vec<_>>>()?;
            let outputs = node.outputs.iter().map(|&v| operand(v)).collect::<Result<Vec<_>>>()?;
            if inputs.len() > MAX_FANOUT || outputs.len() > MAX_FANOUT {
                unsupported
                    .push(format!("{} (node '{}': more than {MAX_FANOUT} inputs or outputs)", node.op, node.name));
                continue;
            }
            steps.push(Step { name: node.name.clone(), kind, inputs, outputs });
        }
        if !unsupported.is_empty() {
            return Err(Error::UnsupportedOps { count: unsupported.len(), ops: unsupported.join("; ") });
        }
        let inputs: Vec<Vec<f32>> = g.inputs.iter().map(|&v| vec![0.0; g.values[v].numel()]).collect();
        let input_shapes = g.inputs.iter().map(|&v| g.values[v].shape.clone()).collect();
        let outputs = g.outputs.iter().map(|&v| operand(v)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            steps,
            arena: vec![0.0; plan.arena_bytes / 4],
            consts,
            inputs,
            input_shapes,
            outputs,
            plan,
            profile: Vec::new(),
        })
    }

    /// The prepared step of one node. May rewrite constants (Gemm weights are transposed).
    fn kind(g: &Graph, node: &Node, consts: &mut [Vec<f32>], slot: &[Option<usize>]) -> Result<Kind> {
        let shape = |i: usize| -> Result<&Vec<usize>> { Ok(&g.values[node.input(i)?].shape) };
        let unsupported = |what: String| Err(Error::Unsupported { what });
        Ok(match node.op.as_str() {
            "Conv" => {
                let w = shape(1)?;
                let win = window_params(node, 2, Some(w[2..].to_vec()))?;
                Kind::Conv(Conv2d {
                    strides: [win.strides[0], win.strides[1]],
                    pads: [win.pads[0], win.pads[1], win.pads[2], win.pads[3]],
                    dilations: [win.dilations[0], win.dilations[1]],
                    group: node.int("group", 1)? as usize,
                    activation: act_from_attr(node)?,
                })
            }
            "Add" => Kind::Binary(BinaryOp::Add),
            "Sub" => Kind::Binary(BinaryOp::Sub),
            "Mul" => Kind::Binary(BinaryOp::Mul),
            "Div" => Kind::Binary(BinaryOp::Div),
            "Relu" => Kind::Act(Activation::Relu),
            "Sigmoid" => Kind::Act(Activation::Sigmoid),
            "Silu" => Kind::Act(Activation::Silu),
            "Elu" => Kind::Act(Activation::Elu { alpha: node.float("alpha", 1.0)? }),
            "Gelu" => match node.string("approximate", "none")? {
                "none" => Kind::Act(Activation::Gelu),
                other => return unsupported(format!("Gelu approximation '{other}'")),
            },
            "HardSigmoid" => {
                Kind::Act(Activation::HardSigmoid { alpha: node.float("alpha", 0.2)?, beta: node.float("beta", 0.5)? })
            }
            "HardSwish" => Kind::Act(Activation::HardSwish),
            "MaxPool" => {
                if node.outputs.len() > 1 {
                    return unsupported("MaxPool with an indices output".into());
                }
                Kind::MaxPool(pool_params(node, &window_params(node, 2, None)?)?)
            }
            "AveragePool" => Kind::AvgPool(pool_params(node, &window_params(node, 2, None)?)?),
            "GlobalAveragePool" => Kind::GlobalAvgPool,
            "Resize" => {
                let x = shape(0)?;
                let out = &g.values[node.outputs[0]].shape;
                if x.len() != 4 || x[..2] != out[..2] {
                    return unsupported(format!("Resize from {x:?} to {out:?} (only H and W of NCHW)"));
                }
                let scales = match node.inputs.get(2).copied().flatten().map(|i| g.constant(i)) {
                    Some(Some(ConstData::F32(s))) if s.len() == 4 => Some([s[2], s[3]]),
                    _ => None,
                };
                Kind::Resize(ops::Resize {
                    mode: ops::ResizeMode::from_onnx(node.string("mode", "nearest")?)?,
                    coord: ops::CoordTransform::from_onnx(
                        node.string("coordinate_transformation_mode", "half_pixel")?,
                    )?,
                    nearest: ops::NearestMode::from_onnx(node.string("nearest_mode", "round_prefer_floor")?)?,
                    scales,
                })
            }
            "Concat" => Kind::Concat(node.int("axis", 0)?),
            "Split" => {
                let axis = node.int("axis", 0)?;
                let a = crate::graph::infer::norm_axis(node, axis, shape(0)?.len())?;
                Kind::Split { axis, sizes: node.outputs.iter().map(|&o| g.values[o].shape[a]).collect() }
            }
            "Slice" => {
                let x = shape(0)?;
                let spec = slice_spec(g, node, x)?;
                let axes: Vec<i64> = (0..x.len() as i64).collect();
                Kind::Slice {
                    starts: spec.iter().map(|s| s.0).collect(),
                    // The clamped end; for negative steps an end of -1 means "through index 0",
                    // which ONNX spells as a large negative number.
                    ends: spec.iter().map(|s| if s.1 < 0 { i64::MIN / 2 } else { s.1 }).collect(),
                    axes,
                    steps: spec.iter().map(|s| s.2).collect(),
                }
            }
            "Transpose" => {
                let rank = shape(0)?.len();
                Kind::Transpose(match node.ints("perm")? {
                    Some(p) => p.iter().map(|&x| x as usize).collect(),
                    None => (0..rank).rev().collect(),
                })
            }
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity" => Kind::Copy,
            "Softmax" => Kind::Softmax(node.int("axis", -1)?),
            "MatMul" => Kind::MatMul,
            "Gemm" => {
                let (alpha, beta) = (node.float("alpha", 1.0)?, node.float("beta", 1.0)?);
                if node.int("transA", 0)? != 0 || alpha != 1.0 || beta != 1.0 {
                    return unsupported("Gemm with transA, alpha or beta other than the defaults".into());
                }
                let w = node.input(1)?;
                let Some(c) = slot[w] else { return unsupported("Gemm with non-constant weights".into()) };
                if node.int("transB", 0)? == 0 {
                    // Stored [K, N]: transpose once to the [N, K] rows `linear` reads.
                    let s = &g.values[w].shape;
                    let (k, n) = (s[0], s[1]);
                    let src = consts[c].clone();
                    for i in 0..n {
                        for j in 0..k {
                            consts[c][i * k + j] = src[j * n + i];
                        }
                    }
                }
                Kind::Linear
            }
            "LayerNormalization" => {
                Kind::LayerNorm { axis: node.int("axis", -1)?, epsilon: node.float("epsilon", 1e-5)? }
            }
            "BatchNormalization" => {
                let eps = node.float("epsilon", 1e-5)?;
                let p = |i: usize| g.const_f32(node, i);
                let (s, b, m, v) = (p(1)?, p(2)?, p(3)?, p(4)?);
                let scale: Vec<f32> = (0..s.len()).map(|c| s[c] / (v[c] + eps).sqrt()).collect();
                let shift = (0..s.len()).map(|c| b[c] - m[c] * scale[c]).collect();
                Kind::ChannelAffine { scale, shift }
            }
            other => return unsupported(format!("no CPU kernel for {other}")),
        })
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
            let result = match &step.kind {
                Kind::Conv(p) => {
                    let bias = i.get(2).map(get);
                    ops::conv2d(get(&i[0]), &i[0].shape, get(&i[1]), &i[1].shape, bias, p, put(&o[0]))
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
                Kind::Linear => {
                    let w_shape = [o[0].shape[1], i[0].shape[1]];
                    ops::linear(get(&i[0]), &i[0].shape, get(&i[1]), &w_shape, i.get(2).map(get), put(&o[0]))
                }
                Kind::LayerNorm { axis, epsilon } => {
                    ops::layer_norm(get(&i[0]), &i[0].shape, *axis, get(&i[1]), i.get(2).map(get), *epsilon, put(&o[0]))
                }
                Kind::ChannelAffine { scale, shift } => {
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
            };
            result.map_err(|e| Error::GraphNode {
                node: step.name.clone(),
                op: step.kind.name().into(),
                reason: e.to_string(),
            })?;
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
        Self::new(g, &|id| {
            let name = &g.values[id].name;
            let t = pak.tensor(name)?;
            if t.scheme.is_quantized() {
                let m = pak.matrix(name)?;
                Ok(crate::quant::dequantize(&m).into_iter().map(|v| v as f32).collect())
            } else {
                pak.tensor_f32(name)
            }
        })
    }
}

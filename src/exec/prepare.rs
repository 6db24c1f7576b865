//! Backend-independent preparation of a graph: each node becomes a [`Step`] with its parameters
//! parsed and checked, and each value gets a location (arena offset, constant or graph input)
//! from the memory plan. The CPU and GPU executors both start from a [`Prepared`] graph.

use crate::error::{Error, Result};
use crate::graph::infer::{slice_spec, window_params, Window};
use crate::graph::plan::{plan_activation_memory, MemoryPlan};
use crate::graph::{ConstData, Graph, Node, ValueId};
use crate::ops::{self, Activation, BinaryOp, ClipThreshold, Conv2d, Pool2d};

/// Most inputs of a Concat and outputs of a Split a step handles without allocating.
pub(crate) const MAX_FANOUT: usize = 32;

/// Where a value's floats live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    /// Offset in floats into the arena.
    Arena(usize),
    Const(usize),
    Input(usize),
}

#[derive(Clone, Debug)]
pub(crate) struct Operand {
    pub loc: Loc,
    pub len: usize,
    pub shape: Vec<usize>,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
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
    /// CARE linear attention (q, k, v: [B, H, N, D], [B, H, N, D], [B, H, N, Dv]).
    LinearAttention,
    /// y = x W^T + b with W [N, K]. A Gemm whose W is stored [K, N] (transB = 0) reads a
    /// transposed copy made at load, in the constant slot given here (the original may have
    /// other readers).
    Linear(Option<usize>),
    LayerNorm {
        axis: i64,
        epsilon: f32,
    },
    /// y = x * scale[c] + shift[c] on axis 1 (an unfused BatchNormalization): the constant
    /// slots of scale and shift ([C] each), folded from the statistics at load.
    ChannelAffine {
        scale: usize,
        shift: usize,
    },
}

impl Kind {
    pub(crate) fn name(&self) -> &'static str {
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
            Kind::LinearAttention => "LinearAttention",
            Kind::MatMul => "MatMul",
            Kind::Linear(_) => "Gemm",
            Kind::LayerNorm { .. } => "LayerNormalization",
            Kind::ChannelAffine { .. } => "BatchNormalization",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub name: String,
    pub kind: Kind,
    pub inputs: Vec<Operand>,
    pub outputs: Vec<Operand>,
}

/// A graph ready for an executor: steps, constants, and where every value lives.
pub(crate) struct Prepared {
    pub steps: Vec<Step>,
    pub consts: Vec<Vec<f32>>,
    /// The value id of each constant slot.
    pub const_ids: Vec<ValueId>,
    pub input_shapes: Vec<Vec<usize>>,
    pub outputs: Vec<Operand>,
    pub plan: MemoryPlan,
}

fn node_err(node: &Node, reason: impl Into<String>) -> Error {
    Error::GraphNode { node: node.name.clone(), op: node.op.clone(), reason: reason.into() }
}

fn act_from_attr(node: &Node) -> Result<Activation> {
    let act = match node.string("activation", "none")? {
        "none" => Activation::None,
        "relu" => Activation::Relu,
        "sigmoid" => Activation::Sigmoid,
        "silu" => Activation::Silu,
        other => return Err(node_err(node, format!("unknown fused activation '{other}'"))),
    };
    clipped(node, act)
}

/// `act` with the ProAct clip thresholds the node carries (`kestrel calibrate-clip`): the
/// per-channel `clip_channels` where present, else the per-layer `clip`.
fn clipped(node: &Node, act: Activation) -> Result<Activation> {
    let threshold = match (node.attr(crate::graph::clip::ATTR_CHANNELS), node.attr(crate::graph::clip::ATTR_LAYER)) {
        (Some(crate::graph::Attr::Floats(t)), _) => ClipThreshold::PerChannel(t.clone()),
        (None, Some(crate::graph::Attr::Float(t))) => ClipThreshold::PerLayer(*t),
        (None, None) => return Ok(act),
        (c, l) => return Err(node_err(node, format!("clip thresholds of the wrong type: {c:?} {l:?}"))),
    };
    Ok(match act {
        Activation::Relu => Activation::ClippedRelu(threshold),
        Activation::Silu => Activation::ClippedSilu(threshold),
        other => return Err(node_err(node, format!("clip thresholds on {other:?}: only ReLU and SiLU are clipped"))),
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

/// Prepares `g`. `weights` supplies f32 data for constants whose data is not in the graph
/// (graphs read from a .kpak keep weights in the tensor table).
pub(crate) fn prepare(g: &Graph, weights: &dyn Fn(ValueId) -> Result<Vec<f32>>) -> Result<Prepared> {
    prepare_deferring(g, weights, &|_| false)
}

/// As [`prepare`], but the constants for which `deferred` is true are not loaded: their slot
/// holds no data, and the executor provides them itself (the GPU keeps packed conv weights
/// packed).
pub(crate) fn prepare_deferring(
    g: &Graph,
    weights: &dyn Fn(ValueId) -> Result<Vec<f32>>,
    deferred: &dyn Fn(ValueId) -> bool,
) -> Result<Prepared> {
    let plan = plan_activation_memory(g);
    let mut consts = Vec::new();
    let mut const_ids = Vec::new();
    let mut const_slot = vec![None; g.values.len()];
    let mut ids: Vec<ValueId> = g.constants.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        const_ids.push(id);
        if deferred(id) {
            const_slot[id] = Some(consts.len());
            consts.push(Vec::new());
            continue;
        }
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
        let kind = match kind(g, node, &mut consts, &const_slot) {
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
            unsupported.push(format!("{} (node '{}': more than {MAX_FANOUT} inputs or outputs)", node.op, node.name));
            continue;
        }
        steps.push(Step { name: node.name.clone(), kind, inputs, outputs });
    }
    if !unsupported.is_empty() {
        return Err(Error::UnsupportedOps { count: unsupported.len(), ops: unsupported.join("; ") });
    }
    let input_shapes = g.inputs.iter().map(|&v| g.values[v].shape.clone()).collect();
    let outputs = g.outputs.iter().map(|&v| operand(v)).collect::<Result<Vec<_>>>()?;
    Ok(Prepared { steps, consts, const_ids, input_shapes, outputs, plan })
}

/// The prepared step of one node. May rewrite constants (Gemm weights are transposed).
fn kind(g: &Graph, node: &Node, consts: &mut Vec<Vec<f32>>, slot: &[Option<usize>]) -> Result<Kind> {
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
        "Relu" => Kind::Act(clipped(node, Activation::Relu)?),
        "Sigmoid" => Kind::Act(Activation::Sigmoid),
        "Silu" => Kind::Act(clipped(node, Activation::Silu)?),
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
                coord: ops::CoordTransform::from_onnx(node.string("coordinate_transformation_mode", "half_pixel")?)?,
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
        "LinearAttention" => Kind::LinearAttention,
        "MatMul" => Kind::MatMul,
        "Gemm" => {
            let (alpha, beta) = (node.float("alpha", 1.0)?, node.float("beta", 1.0)?);
            if node.int("transA", 0)? != 0 || alpha != 1.0 || beta != 1.0 {
                return unsupported("Gemm with transA, alpha or beta other than the defaults".into());
            }
            let w = node.input(1)?;
            let Some(c) = slot[w] else { return unsupported("Gemm with non-constant weights".into()) };
            if node.int("transB", 0)? != 0 {
                return Ok(Kind::Linear(None));
            }
            // Stored [K, N]: a transposed copy in the [N, K] rows `linear` reads.
            let s = &g.values[w].shape;
            let (k, n) = (s[0], s[1]);
            let src = &consts[c];
            if src.len() != k * n {
                return unsupported("Gemm with weights held packed".into());
            }
            let t: Vec<f32> = (0..n * k).map(|idx| src[(idx % k) * n + idx / k]).collect();
            consts.push(t);
            Kind::Linear(Some(consts.len() - 1))
        }
        "LayerNormalization" => Kind::LayerNorm { axis: node.int("axis", -1)?, epsilon: node.float("epsilon", 1e-5)? },
        "BatchNormalization" => {
            let eps = node.float("epsilon", 1e-5)?;
            // Graphs read from a .kpak hold their constants in the tensor table: read the
            // loaded slots, not the graph.
            let p = |i: usize| -> Result<&[f32]> {
                let id = node.input(i)?;
                slot[id]
                    .map(|c| &consts[c][..])
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| node.error(format!("input {i} must be a constant f32 tensor")))
            };
            let (s, b, m, v) = (p(1)?, p(2)?, p(3)?, p(4)?);
            if [b.len(), m.len(), v.len()] != [s.len(); 3] {
                return Err(node.error("scale, bias, mean and variance must have one value per channel"));
            }
            let scale: Vec<f32> = (0..s.len()).map(|c| s[c] / (v[c] + eps).sqrt()).collect();
            let shift: Vec<f32> = (0..s.len()).map(|c| b[c] - m[c] * scale[c]).collect();
            consts.push(scale);
            consts.push(shift);
            Kind::ChannelAffine { scale: consts.len() - 2, shift: consts.len() - 1 }
        }
        other => return unsupported(format!("no CPU kernel for {other}")),
    })
}

impl Step {
    /// Multiply-adds of one dense run of this step (0 for ops that do none).
    pub(crate) fn macs(&self) -> u64 {
        let (i, o) = (&self.inputs, &self.outputs);
        let out: usize = o.first().map_or(0, |o| o.len);
        (match &self.kind {
            Kind::Conv(_) => out * i[1].shape[1..].iter().product::<usize>(),
            Kind::Linear(_) | Kind::MatMul => out * i[0].shape.last().copied().unwrap_or(0),
            // phi(K)^T V and phi(Q) (KV): two products of N x D x Dv per head.
            Kind::LinearAttention => 2 * out * i[0].shape.last().copied().unwrap_or(0),
            _ => 0,
        }) as u64
    }
}

//! Shape inference and constant folding, node by node in topological order.
//!
//! Every op the importer accepts has a shape rule here (ONNX semantics, opsets 13 to 21). Integer
//! subgraphs (Shape -> Gather -> Concat -> Reshape chains, which exporters emit for shape
//! arithmetic) are evaluated at import and disappear: kestrel graphs carry no shape computation.

use super::{Attr, ConstData, ElemType, Graph, Node};
use crate::error::{Error, Result};

/// What inference produced for a node's outputs.
pub enum Inferred {
    /// Output shapes and element types; the node runs.
    Shapes(Vec<(Vec<usize>, ElemType)>),
    /// Every output is a constant: the node is folded away.
    Constants(Vec<(Vec<usize>, ConstData)>),
}

fn err(node: &Node, reason: impl Into<String>) -> Error {
    Error::GraphNode { node: node.name.clone(), op: node.op.clone(), reason: reason.into() }
}

/// Normalises a possibly negative axis for a tensor of `rank`.
pub fn norm_axis(node: &Node, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    // A scalar has no axis (found by fuzzing: a Split of a rank-0 value indexed its shape).
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(err(node, format!("axis {axis} is out of range for rank {rank}")))
    }
}

/// ONNX multidirectional broadcasting (the ops' rule), with the error naming the node.
pub fn broadcast(node: &Node, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    crate::ops::broadcast_shape(a, b).map_err(|_| err(node, format!("shapes {a:?} and {b:?} do not broadcast")))
}

/// Output extent of a convolution or pooling window along one axis.
/// Output extent of a convolution or pooling window along one axis. In ceil mode a last window
/// that would start inside the end padding is dropped (ONNX's rule since opset 22, which ONNX
/// Runtime and PyTorch apply throughout).
#[allow(clippy::too_many_arguments)]
pub fn window_out(
    node: &Node,
    input: usize,
    kernel: usize,
    stride: usize,
    pad_begin: usize,
    pad_end: usize,
    dilation: usize,
    ceil: bool,
) -> Result<usize> {
    // Saturating: attributes come from files and may be absurd; absurd values fail the fit test.
    let pad = pad_begin.saturating_add(pad_end);
    let span = dilation.saturating_mul(kernel.max(1) - 1).saturating_add(1);
    let padded = input.saturating_add(pad);
    if padded < span || stride == 0 {
        return Err(err(
            node,
            format!("window {kernel} (dilation {dilation}) does not fit input {input} with padding {pad}"),
        ));
    }
    let steps = padded - span;
    if !ceil {
        return Ok(steps / stride + 1);
    }
    let out = steps.div_ceil(stride) + 1;
    Ok(if (out - 1).saturating_mul(stride) >= input.saturating_add(pad_begin) { out - 1 } else { out })
}

fn shape_of(g: &Graph, node: &Node, i: usize) -> Result<Vec<usize>> {
    Ok(g.values[node.input(i)?].shape.clone())
}

fn usize_list(node: &Node, v: &[i64], what: &str) -> Result<Vec<usize>> {
    v.iter().map(|&x| usize::try_from(x).map_err(|_| err(node, format!("{what} {x} is negative")))).collect()
}

/// Spatial window parameters of a Conv or pooling node, for its trailing spatial axes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// ONNX order: all begins, then all ends.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
}

/// Reads a node's window attributes (`kernel` is the weights' kernel for Conv).
pub fn window_params(node: &Node, spatial: usize, kernel: Option<Vec<usize>>) -> Result<Window> {
    let kernel = match (node.ints("kernel_shape")?, kernel) {
        (Some(k), _) => usize_list(node, k, "kernel size")?,
        (None, Some(k)) => k,
        (None, None) => return Err(err(node, "kernel_shape is required")),
    };
    let list = |name: &str, len: usize, default: usize| -> Result<Vec<usize>> {
        match node.ints(name)? {
            Some(v) if v.len() == len => usize_list(node, v, name),
            Some(v) => Err(err(node, format!("{name} has {} entries, expected {len}", v.len()))),
            None => Ok(vec![default; len]),
        }
    };
    if kernel.len() != spatial {
        return Err(err(node, format!("kernel_shape {kernel:?} does not match {spatial} spatial axes")));
    }
    match node.string("auto_pad", "NOTSET")? {
        "NOTSET" | "VALID" => {}
        other => return Err(err(node, format!("auto_pad {other} is not supported; export with explicit pads"))),
    }
    Ok(Window {
        strides: list("strides", spatial, 1)?,
        pads: list("pads", 2 * spatial, 0)?,
        dilations: list("dilations", spatial, 1)?,
        kernel,
    })
}

/// Elements of `shape`, or an error naming the node when they overflow or pass the tensor limit.
pub fn checked_numel(node: &Node, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n as u64 <= crate::format::MAX_ELEMENTS)
        .ok_or_else(|| err(node, format!("shape {shape:?} has too many elements")))
}

/// Infers one node's outputs, folding it when its inputs are constant and the op is foldable.
/// Every output shape is held to the element limit, so later code can multiply dims freely.
pub fn infer(g: &Graph, node: &Node) -> Result<Inferred> {
    let inferred = infer_unchecked(g, node)?;
    match &inferred {
        Inferred::Shapes(v) => v.iter().try_for_each(|(s, _)| checked_numel(node, s).map(drop))?,
        Inferred::Constants(v) => v.iter().try_for_each(|(s, _)| checked_numel(node, s).map(drop))?,
    }
    Ok(inferred)
}

fn infer_unchecked(g: &Graph, node: &Node) -> Result<Inferred> {
    let f32_out = |shape: Vec<usize>| Ok(Inferred::Shapes(vec![(shape, ElemType::F32)]));
    let all_const = node.inputs.iter().flatten().all(|&i| g.constant(i).is_some());
    match node.op.as_str() {
        // ---- shape arithmetic: always folded ----
        "Shape" => {
            let s = shape_of(g, node, 0)?;
            let rank = s.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
            let (start, end) = (clamp(node.int("start", 0)?), clamp(node.int("end", rank)?));
            let v: Vec<i64> = s[start..end.max(start)].iter().map(|&d| d as i64).collect();
            Ok(Inferred::Constants(vec![(vec![v.len()], ConstData::I64(v))]))
        }
        "Gather" | "Unsqueeze" | "Squeeze" | "Concat" | "Cast" | "Reshape" | "Slice" | "Range" | "Equal" | "Where"
        | "ConstantOfShape" | "Add" | "Sub" | "Mul" | "Div" | "Floor" | "Ceil" | "Sqrt"
            if all_const && fold_supported(g, node) =>
        {
            fold(g, node).map(Inferred::Constants)
        }
        // ---- elementwise ----
        "Add" | "Sub" | "Mul" | "Div" => {
            let (a, b) = (shape_of(g, node, 0)?, shape_of(g, node, 1)?);
            f32_out(broadcast(node, &a, &b)?)
        }
        "Relu" | "Sigmoid" | "Silu" | "Elu" | "Gelu" | "Tanh" | "HardSigmoid" | "HardSwish" | "Identity"
        | "Softmax" | "LayerNormalization" | "BatchNormalization" | "Clip" | "Erf" | "Sqrt" | "Neg" | "Exp" => {
            let s = shape_of(g, node, 0)?;
            if node.op == "Softmax" {
                norm_axis(node, node.int("axis", -1)?, s.len())?;
            }
            f32_out(s)
        }
        // ---- convolution and pooling ----
        "Conv" => {
            let x = shape_of(g, node, 0)?;
            let w = shape_of(g, node, 1)?;
            if x.len() != 4 || w.len() != 4 {
                return Err(err(node, format!("only 2-D convolution is supported (input {x:?}, weights {w:?})")));
            }
            let group = node.int("group", 1)? as usize;
            if group == 0 || x[1] != w[1] * group || w[0] % group != 0 {
                return Err(err(node, format!("input {x:?}, weights {w:?} and group {group} do not agree")));
            }
            let Window { kernel: k, strides: s, pads: p, dilations: d } =
                window_params(node, 2, Some(w[2..].to_vec()))?;
            if k != w[2..] {
                return Err(err(node, format!("kernel_shape {k:?} differs from the weights {w:?}")));
            }
            let h = window_out(node, x[2], k[0], s[0], p[0], p[2], d[0], false)?;
            let wd = window_out(node, x[3], k[1], s[1], p[1], p[3], d[1], false)?;
            f32_out(vec![x[0], w[0], h, wd])
        }
        "MaxPool" | "AveragePool" => {
            let x = shape_of(g, node, 0)?;
            if x.len() != 4 {
                return Err(err(node, format!("only 2-D pooling is supported (input {x:?})")));
            }
            let Window { kernel: k, strides: s, pads: p, dilations: d } = window_params(node, 2, None)?;
            let ceil = node.int("ceil_mode", 0)? != 0;
            let h = window_out(node, x[2], k[0], s[0], p[0], p[2], d[0], ceil)?;
            let w = window_out(node, x[3], k[1], s[1], p[1], p[3], d[1], ceil)?;
            f32_out(vec![x[0], x[1], h, w])
        }
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = shape_of(g, node, 0)?;
            if x.len() < 3 {
                return Err(err(node, format!("input {x:?} has no spatial axes")));
            }
            f32_out([&x[..2], &vec![1; x.len() - 2][..]].concat())
        }
        "Resize" => {
            let x = shape_of(g, node, 0)?;
            // Inputs: X, roi, scales, sizes (opset 13+); one of scales / sizes is given.
            let sizes = node.inputs.get(3).copied().flatten().and_then(|i| match g.constant(i) {
                Some(ConstData::I64(v)) if !v.is_empty() => Some(v.clone()),
                _ => None,
            });
            let out = if let Some(s) = sizes {
                usize_list(node, &s, "size")?
            } else {
                let scales = match node.inputs.get(2).copied().flatten().map(|i| g.constant(i)) {
                    Some(Some(ConstData::F32(v))) => v.clone(),
                    _ => return Err(err(node, "needs constant scales or sizes")),
                };
                if scales.len() != x.len() {
                    return Err(err(node, format!("{} scales for a rank-{} input", scales.len(), x.len())));
                }
                x.iter().zip(&scales).map(|(&d, &s)| (d as f64 * s as f64).floor() as usize).collect()
            };
            if out.len() != x.len() || out.contains(&0) {
                return Err(err(node, format!("output size {out:?} is invalid for input {x:?}")));
            }
            f32_out(out)
        }
        // ---- layout ----
        "Concat" => {
            let first = shape_of(g, node, 0)?;
            let axis = norm_axis(node, node.int("axis", 0)?, first.len())?;
            let mut out = first.clone();
            out[axis] = 0;
            for i in 0..node.inputs.len() {
                let s = shape_of(g, node, i)?;
                if s.len() != first.len() || s.iter().enumerate().any(|(a, &d)| a != axis && d != first[a]) {
                    return Err(err(node, format!("input {i} shape {s:?} does not match {first:?} off axis {axis}")));
                }
                out[axis] += s[axis];
            }
            f32_out(out)
        }
        "Split" => {
            let x = shape_of(g, node, 0)?;
            let axis = norm_axis(node, node.int("axis", 0)?, x.len())?;
            let n = node.outputs.len();
            let sizes: Vec<usize> = match node.inputs.get(1).copied().flatten() {
                Some(_) => usize_list(node, g.const_i64(node, 1)?, "split size")?,
                None => match node.ints("split")? {
                    Some(v) => usize_list(node, v, "split size")?,
                    None => {
                        // Equal parts (opset 18 num_outputs: the last part may be smaller).
                        let part = x[axis].div_ceil(n.max(1));
                        (0..n).map(|i| part.min(x[axis].saturating_sub(i * part))).collect()
                    }
                },
            };
            if sizes.len() != n || sizes.iter().sum::<usize>() != x[axis] {
                return Err(err(
                    node,
                    format!("split sizes {sizes:?} do not cover axis {axis} of {x:?} in {n} outputs"),
                ));
            }
            let shapes = sizes.iter().map(|&s| {
                let mut o = x.clone();
                o[axis] = s;
                (o, ElemType::F32)
            });
            Ok(Inferred::Shapes(shapes.collect()))
        }
        "Transpose" => {
            let x = shape_of(g, node, 0)?;
            let perm: Vec<usize> = match node.ints("perm")? {
                Some(p) => usize_list(node, p, "permutation entry")?,
                None => (0..x.len()).rev().collect(),
            };
            let mut seen = vec![false; x.len()];
            if perm.len() != x.len() || perm.iter().any(|&p| p >= x.len() || std::mem::replace(&mut seen[p], true)) {
                return Err(err(node, format!("perm {perm:?} is not a permutation of rank {}", x.len())));
            }
            f32_out(perm.iter().map(|&p| x[p]).collect())
        }
        "Reshape" => {
            let x = shape_of(g, node, 0)?;
            let target = g.const_i64(node, 1)?;
            f32_out(reshape_target(node, &x, target, node.int("allowzero", 0)? != 0)?)
        }
        "Flatten" => {
            let x = shape_of(g, node, 0)?;
            let axis = norm_axis(node, node.int("axis", 1)?, x.len() + 1)?;
            f32_out(vec![x[..axis].iter().product(), x[axis..].iter().product()])
        }
        "Squeeze" | "Unsqueeze" => {
            let x = shape_of(g, node, 0)?;
            let axes: Vec<i64> = match node.inputs.get(1).copied().flatten() {
                Some(_) => g.const_i64(node, 1)?.to_vec(),
                None => node.ints("axes")?.map(<[i64]>::to_vec).unwrap_or_default(),
            };
            f32_out(squeeze_shape(node, &x, &axes)?)
        }
        "Slice" => {
            let x = shape_of(g, node, 0)?;
            let spec = slice_spec(g, node, &x)?;
            f32_out(spec.iter().map(|&(_, _, _, len)| len).collect())
        }
        // ---- attention ----
        "LinearAttention" => {
            let (q, k, v) = (shape_of(g, node, 0)?, shape_of(g, node, 1)?, shape_of(g, node, 2)?);
            crate::ops::attention_dims("LinearAttention", &q, &k, &v).map_err(|e| err(node, e.to_string()))?;
            f32_out([&q[..3], &v[3..]].concat())
        }
        // ---- linear algebra ----
        "MatMul" => {
            let (a, b) = (shape_of(g, node, 0)?, shape_of(g, node, 1)?);
            if a.len() < 2 || b.len() < 2 || a[a.len() - 1] != b[b.len() - 2] {
                return Err(err(node, format!("shapes {a:?} and {b:?} do not multiply")));
            }
            let batch = broadcast(node, &a[..a.len() - 2], &b[..b.len() - 2])?;
            f32_out([batch, vec![a[a.len() - 2], b[b.len() - 1]]].concat())
        }
        "Gemm" => {
            let (a, b) = (shape_of(g, node, 0)?, shape_of(g, node, 1)?);
            let (ta, tb) = (node.int("transA", 0)? != 0, node.int("transB", 0)? != 0);
            if a.len() != 2 || b.len() != 2 {
                return Err(err(node, format!("Gemm needs matrices, got {a:?} and {b:?}")));
            }
            let (m, ka) = if ta { (a[1], a[0]) } else { (a[0], a[1]) };
            let (kb, n) = if tb { (b[1], b[0]) } else { (b[0], b[1]) };
            if ka != kb {
                return Err(err(node, format!("inner dimensions {ka} and {kb} differ")));
            }
            f32_out(vec![m, n])
        }
        other => Err(err(node, format!("no shape rule for op {other}"))),
    }
}

/// ONNX Reshape target: 0 copies the input dimension (unless allowzero), -1 is inferred.
pub fn reshape_target(node: &Node, x: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let numel = checked_numel(node, x)?;
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                out.push(1);
            }
            0 if !allowzero => {
                out.push(*x.get(i).ok_or_else(|| err(node, format!("0 at axis {i} has no input axis")))?)
            }
            t if t >= 0 => out.push(t as usize),
            _ => return Err(err(node, format!("invalid reshape target {target:?}"))),
        }
    }
    let known = checked_numel(node, &out)?;
    if let Some(i) = infer_at {
        if known == 0 || numel % known != 0 {
            return Err(err(node, format!("cannot reshape {x:?} to {target:?}")));
        }
        out[i] = numel / known;
    }
    if checked_numel(node, &out)? != numel {
        return Err(err(node, format!("cannot reshape {x:?} ({numel} elements) to {target:?}")));
    }
    Ok(out)
}

fn squeeze_shape(node: &Node, x: &[usize], axes: &[i64]) -> Result<Vec<usize>> {
    if node.op == "Unsqueeze" {
        let rank = x.len() + axes.len();
        let mut axes: Vec<usize> = axes.iter().map(|&a| norm_axis(node, a, rank)).collect::<Result<_>>()?;
        axes.sort_unstable();
        let mut out = Vec::with_capacity(rank);
        let mut src = x.iter();
        for i in 0..rank {
            if axes.binary_search(&i).is_ok() {
                out.push(1);
            } else {
                out.push(*src.next().ok_or_else(|| err(node, "repeated axes"))?);
            }
        }
        return Ok(out);
    }
    let axes: Vec<usize> = axes.iter().map(|&a| norm_axis(node, a, x.len())).collect::<Result<_>>()?;
    Ok(x.iter()
        .enumerate()
        .filter(|&(i, &d)| if axes.is_empty() { d != 1 } else { !axes.contains(&i) })
        .map(|(_, &d)| d)
        .collect())
}

/// Per axis: (start, end, step, length) after ONNX clamping.
pub fn slice_spec(g: &Graph, node: &Node, x: &[usize]) -> Result<Vec<(i64, i64, i64, usize)>> {
    let starts = g.const_i64(node, 1)?;
    let ends = g.const_i64(node, 2)?;
    let axes: Vec<i64> = match node.inputs.get(3).copied().flatten() {
        Some(_) => g.const_i64(node, 3)?.to_vec(),
        None => (0..starts.len() as i64).collect(),
    };
    let steps: Vec<i64> = match node.inputs.get(4).copied().flatten() {
        Some(_) => g.const_i64(node, 4)?.to_vec(),
        None => vec![1; starts.len()],
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(err(node, "starts, ends, axes and steps differ in length"));
    }
    let mut spec: Vec<(i64, i64, i64, usize)> = x.iter().map(|&d| (0, d as i64, 1, d)).collect();
    for i in 0..starts.len() {
        let a = norm_axis(node, axes[i], x.len())?;
        let dim = x[a] as i64;
        let step = steps[i];
        if step == 0 {
            return Err(err(node, "slice step 0"));
        }
        let fix = |v: i64| if v < 0 { v + dim } else { v };
        let (s, e) = if step > 0 {
            (fix(starts[i]).clamp(0, dim), fix(ends[i]).clamp(0, dim))
        } else {
            (fix(starts[i]).clamp(0, dim - 1), fix(ends[i]).clamp(-1, dim - 1))
        };
        let (span, stride) =
            if step > 0 { ((e - s).max(0) as u64, step as u64) } else { ((s - e).max(0) as u64, step.unsigned_abs()) };
        let len = span.div_ceil(stride);
        spec[a] = (s, e, step, len as usize);
    }
    Ok(spec)
}

fn fold_supported(g: &Graph, node: &Node) -> bool {
    // Float arithmetic on constants folds too (e.g. anchor grids computed in the graph).
    node.inputs.iter().flatten().all(|&i| matches!(g.constant(i), Some(ConstData::I64(_)) | Some(ConstData::F32(_))))
}

/// Evaluates a node whose inputs are all constant.
fn fold(g: &Graph, node: &Node) -> Result<Vec<(Vec<usize>, ConstData)>> {
    let shape = |i: usize| -> Result<Vec<usize>> { Ok(g.values[node.input(i)?].shape.clone()) };
    let data = |i: usize| -> Result<&ConstData> {
        let v = node.input(i)?;
        let d = g.constant(v).ok_or_else(|| err(node, format!("input {i} is not constant")))?;
        // Folding indexes the data by the value's shape: they must agree (found by fuzzing: a
        // GRAPH section whose constant had no data for its scalar shape).
        let len = match d {
            ConstData::F32(x) => x.len(),
            ConstData::I64(x) => x.len(),
        };
        let shape = &g.values[v].shape;
        if shape.iter().try_fold(1usize, |n, &dim| n.checked_mul(dim)) != Some(len) {
            return Err(err(node, format!("input {i}: a constant of {len} values for shape {shape:?}")));
        }
        Ok(d)
    };
    let ints = |i: usize| -> Result<Vec<i64>> {
        match data(i)? {
            ConstData::I64(v) => Ok(v.clone()),
            ConstData::F32(v) => Ok(v.iter().map(|&f| f as i64).collect()),
        }
    };
    let floats = |i: usize| -> Result<Vec<f32>> {
        match data(i)? {
            ConstData::F32(v) => Ok(v.clone()),
            ConstData::I64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
        }
    };
    let is_int = |i: usize| -> Result<bool> { Ok(matches!(data(i)?, ConstData::I64(_))) };
    let one = |s: Vec<usize>, d: ConstData| Ok(vec![(s, d)]);
    match node.op.as_str() {
        "Cast" => {
            let to = node.int("to", 1)?;
            match to {
                1 | 10 | 11 => one(shape(0)?, ConstData::F32(floats(0)?)),
                6 | 7 | 9 => one(shape(0)?, ConstData::I64(ints(0)?)),
                t => Err(err(node, format!("cannot fold a cast to type {t}"))),
            }
        }
        "Unsqueeze" | "Squeeze" | "Reshape" => {
            let s = shape(0)?;
            let out = match node.op.as_str() {
                "Reshape" => reshape_target(node, &s, g.const_i64(node, 1)?, node.int("allowzero", 0)? != 0)?,
                _ => {
                    let axes: Vec<i64> = match node.inputs.get(1).copied().flatten() {
                        Some(_) => ints(1)?,
                        None => node.ints("axes")?.map(<[i64]>::to_vec).unwrap_or_default(),
                    };
                    squeeze_shape(node, &s, &axes)?
                }
            };
            one(out, data(0)?.clone())
        }
        "Gather" => {
            let s = shape(0)?;
            let axis = norm_axis(node, node.int("axis", 0)?, s.len())?;
            let idx = ints(1)?;
            let idx_shape = shape(1)?;
            let outer: usize = s[..axis].iter().product();
            let inner: usize = s[axis + 1..].iter().product();
            let dim = s[axis] as i64;
            let mut picks = Vec::with_capacity(idx.len());
            for &i in &idx {
                let j = if i < 0 { i + dim } else { i };
                if !(0..dim).contains(&j) {
                    return Err(err(node, format!("index {i} out of range for axis of {dim}")));
                }
                picks.push(j as usize);
            }
            let gather = |src: &dyn Fn(usize) -> ConstVal| -> Vec<ConstVal> {
                let mut out = Vec::with_capacity(outer * picks.len() * inner);
                for o in 0..outer {
                    for &p in &picks {
                        for i in 0..inner {
                            out.push(src((o * s[axis] + p) * inner + i));
                        }
                    }
                }
                out
            };
            let out_shape = [&s[..axis], &idx_shape[..], &s[axis + 1..]].concat();
            let d = match data(0)? {
                ConstData::I64(v) => {
                    ConstData::I64(gather(&|i| ConstVal::I(v[i])).into_iter().map(ConstVal::int).collect())
                }
                ConstData::F32(v) => {
                    ConstData::F32(gather(&|i| ConstVal::F(v[i])).into_iter().map(ConstVal::float).collect())
                }
            };
            one(out_shape, d)
        }
        "Concat" => {
            let first = shape(0)?;
            let axis = norm_axis(node, node.int("axis", 0)?, first.len())?;
            if first.len() != 1 || axis != 0 {
                return Err(err(node, "only 1-D constant concatenation is folded"));
            }
            if (0..node.inputs.len()).all(|i| is_int(i).unwrap_or(false)) {
                let v: Vec<i64> = (0..node.inputs.len()).map(ints).collect::<Result<Vec<_>>>()?.concat();
                one(vec![v.len()], ConstData::I64(v))
            } else {
                let v: Vec<f32> = (0..node.inputs.len()).map(floats).collect::<Result<Vec<_>>>()?.concat();
                one(vec![v.len()], ConstData::F32(v))
            }
        }
        "Slice" => {
            let s = shape(0)?;
            if s.len() != 1 {
                return Err(err(node, "only 1-D constant slices are folded"));
            }
            let spec = slice_spec(g, node, &s)?;
            let (start, _, step, len) = spec[0];
            let pick = |i: usize| (start + i as i64 * step) as usize;
            let d = match data(0)? {
                ConstData::I64(v) => ConstData::I64((0..len).map(|i| v[pick(i)]).collect()),
                ConstData::F32(v) => ConstData::F32((0..len).map(|i| v[pick(i)]).collect()),
            };
            one(vec![len], d)
        }
        "ConstantOfShape" => {
            let dims = usize_list(node, &ints(0)?, "dimension")?;
            let n = checked_numel(node, &dims)?;
            if n > 1 << 24 {
                return Err(err(node, format!("constant of {n} elements is too large to fold")));
            }
            let fill = match node.attr("value") {
                Some(Attr::Floats(v)) if v.len() == 1 => ConstData::F32(vec![v[0]; n]),
                Some(Attr::Ints(v)) if v.len() == 1 => ConstData::I64(vec![v[0]; n]),
                None => ConstData::F32(vec![0.0; n]),
                Some(other) => return Err(err(node, format!("unsupported fill value {other:?}"))),
            };
            one(dims, fill)
        }
        "Range" => {
            let (start, limit, delta) = (floats(0)?, floats(1)?, floats(2)?);
            let (s, l, d) = (start[0] as f64, limit[0] as f64, delta[0] as f64);
            if d == 0.0 {
                return Err(err(node, "Range with delta 0"));
            }
            let n = ((l - s) / d).ceil().max(0.0) as usize;
            if n > 1 << 24 {
                return Err(err(node, "Range too large to fold"));
            }
            if is_int(0)? {
                one(vec![n], ConstData::I64((0..n).map(|i| start[0] as i64 + i as i64 * delta[0] as i64).collect()))
            } else {
                one(vec![n], ConstData::F32((0..n).map(|i| (s + i as f64 * d) as f32).collect()))
            }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Equal" => {
            let (sa, sb) = (shape(0)?, shape(1)?);
            let out = broadcast(node, &sa, &sb)?;
            let n = checked_numel(node, &out)?;
            let index = |s: &[usize], flat: usize| -> usize {
                // Map an output index to a broadcast input index.
                let mut rem = flat;
                let mut idx = 0;
                let mut stride = 1;
                for (axis, &d) in out.iter().enumerate().rev() {
                    let coord = rem % d;
                    rem /= d;
                    let ia = axis as isize - (out.len() as isize - s.len() as isize);
                    if ia >= 0 {
                        let sd = s[ia as usize];
                        idx += if sd == 1 { 0 } else { coord * stride };
                        stride *= sd;
                    }
                }
                idx
            };
            if is_int(0)? && is_int(1)? {
                let (a, b) = (ints(0)?, ints(1)?);
                let v: Result<Vec<i64>> = (0..n)
                    .map(|i| {
                        let (x, y) = (a[index(&sa, i)], b[index(&sb, i)]);
                        Ok(match node.op.as_str() {
                            "Add" => x.wrapping_add(y),
                            "Sub" => x.wrapping_sub(y),
                            "Mul" => x.wrapping_mul(y),
                            "Equal" => (x == y) as i64,
                            _ => x.checked_div(y).ok_or_else(|| err(node, "integer division by zero"))?,
                        })
                    })
                    .collect();
                one(out, ConstData::I64(v?))
            } else {
                if node.op == "Equal" {
                    return Err(err(node, "float equality is not folded"));
                }
                let (a, b) = (floats(0)?, floats(1)?);
                let v = (0..n)
                    .map(|i| {
                        let (x, y) = (a[index(&sa, i)], b[index(&sb, i)]);
                        match node.op.as_str() {
                            "Add" => x + y,
                            "Sub" => x - y,
                            "Mul" => x * y,
                            _ => x / y,
                        }
                    })
                    .collect();
                one(out, ConstData::F32(v))
            }
        }
        "Floor" | "Ceil" | "Sqrt" => {
            let v = floats(0)?
                .into_iter()
                .map(|x| match node.op.as_str() {
                    "Floor" => x.floor(),
                    "Ceil" => x.ceil(),
                    _ => x.sqrt(),
                })
                .collect();
            one(shape(0)?, ConstData::F32(v))
        }
        other => Err(err(node, format!("cannot fold {other}"))),
    }
}

/// A scalar of either constant type, for shared folding code.
#[derive(Clone, Copy)]
enum ConstVal {
    I(i64),
    F(f32),
}

impl ConstVal {
    fn int(self) -> i64 {
        match self {
            ConstVal::I(v) => v,
            ConstVal::F(v) => v as i64,
        }
    }
    fn float(self) -> f32 {
        match self {
            ConstVal::I(v) => v as f32,
            ConstVal::F(v) => v,
        }
    }
}

/// Checks a graph read from a file: every node's outputs have the shapes and element types its
/// op's rule gives for its inputs. Executors can then index shapes without re-checking them.
/// Constants whose data an op's rule reads (resize scales) must be present in `g`.
pub fn validate(g: &Graph) -> Result<()> {
    for node in &g.nodes {
        if node.inputs.iter().flatten().chain(&node.outputs).any(|&v| v >= g.values.len()) {
            return Err(err(node, "refers to a value that does not exist"));
        }
        match infer(g, node)? {
            Inferred::Shapes(shapes) => {
                if shapes.len() != node.outputs.len() {
                    return Err(err(
                        node,
                        format!("has {} outputs, its op gives {}", node.outputs.len(), shapes.len()),
                    ));
                }
                for (&o, (shape, elem)) in node.outputs.iter().zip(shapes) {
                    let v = &g.values[o];
                    if v.shape != shape || v.elem != elem {
                        return Err(err(
                            node,
                            format!(
                                "output '{}' is recorded as {:?} {:?}, its inputs give {elem:?} {shape:?}",
                                v.name, v.elem, v.shape
                            ),
                        ));
                    }
                }
            }
            Inferred::Constants(_) => return Err(err(node, "computes a constant; a packed graph has these folded")),
        }
    }
    Ok(())
}

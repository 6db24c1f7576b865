//! ONNX -> graph IR: values get static shapes, integer shape arithmetic is folded away, and
//! every op that kestrel cannot run is reported at once, by op type and node name.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use super::infer::{infer, Inferred};
use super::{Attr, ConstData, ElemType, Graph, Node, ValueId};
use crate::error::{Error, Result};
use crate::import::onnx::{self as ox, AttrValue, DataType};

/// Opsets of the default domain the importer accepts.
pub const OPSETS: RangeInclusive<i64> = 13..=21;

/// Ops that run (on at least the CPU backend).
pub const RUNNABLE_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Concat",
    "Conv",
    "Div",
    "Elu",
    "Flatten",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "MatMul",
    "MaxPool",
    "Mul",
    "Relu",
    "Reshape",
    "Resize",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Squeeze",
    "Sub",
    "Transpose",
    "Unsqueeze",
];

/// kestrel's own ops, in the `kestrel` domain: what PyTorch exports through a custom symbolic
/// (tools/care.py), run natively rather than as a pattern of standard ops.
/// - `LinearAttention(q, k, v)`: CARE's linear attention over [B, H, N, D] q and k and
///   [B, H, N, Dv] v (PAPERS.md section 1; `ops::linear_attention`).
pub const KESTREL_OPS: &[&str] = &["LinearAttention"];

/// The ONNX domain of [`KESTREL_OPS`].
pub const KESTREL_DOMAIN: &str = "kestrel";

/// Ops accepted only when their inputs are constant: they are evaluated at import.
pub const FOLD_ONLY_OPS: &[&str] =
    &["Cast", "Ceil", "Constant", "ConstantOfShape", "Equal", "Floor", "Gather", "Range", "Shape", "Sqrt"];

fn tensor_const(t: &ox::Tensor) -> Result<(Vec<usize>, ConstData)> {
    let dims: Vec<usize> =
        t.dims.iter().map(|&d| usize::try_from(d)).collect::<std::result::Result<_, _>>().map_err(|_| {
            Error::OnnxTensor { tensor: t.name.clone(), reason: format!("has negative dims {:?}", t.dims) }
        })?;
    let data = match t.data_type {
        DataType::Float | DataType::Float16 | DataType::Double => ConstData::F32(t.to_f32()?),
        DataType::Int64 | DataType::Int32 | DataType::Int8 | DataType::Uint8 | DataType::Bool => {
            ConstData::I64(t.to_i64()?)
        }
        DataType::Other(code) => {
            return Err(Error::OnnxTensor {
                tensor: t.name.clone(),
                reason: format!("has unsupported element type {code}"),
            })
        }
    };
    Ok((dims, data))
}

fn elem_of(d: &ConstData) -> ElemType {
    match d {
        ConstData::F32(_) => ElemType::F32,
        ConstData::I64(_) => ElemType::I64,
    }
}

fn convert_attr(node: &ox::Node, a: &ox::Attribute) -> Result<Attr> {
    let bad = |reason: String| Error::OnnxNode { node: node.name.clone(), op: node.op_type.clone(), reason };
    Ok(match &a.value {
        AttrValue::Int(v) => Attr::Int(*v),
        AttrValue::Float(v) => Attr::Float(*v),
        AttrValue::Ints(v) => Attr::Ints(v.clone()),
        AttrValue::Floats(v) => Attr::Floats(v.clone()),
        AttrValue::String(s) => {
            Attr::Str(String::from_utf8(s.clone()).map_err(|_| bad(format!("attribute '{}' is not UTF-8", a.name)))?)
        }
        // ConstantOfShape's fill value: a one-element tensor.
        AttrValue::Tensor(t) => match tensor_const(t)?.1 {
            ConstData::F32(v) => Attr::Floats(v),
            ConstData::I64(v) => Attr::Ints(v),
        },
        other => return Err(bad(format!("attribute '{}' is {}, which is not supported", a.name, other.kind()))),
    })
}

/// The constant a `Constant` node defines.
fn constant_node(node: &ox::Node) -> Result<(Vec<usize>, ConstData)> {
    let a = node.attributes.first().ok_or_else(|| Error::OnnxNode {
        node: node.name.clone(),
        op: node.op_type.clone(),
        reason: "has no value".into(),
    })?;
    Ok(match (&a.name[..], &a.value) {
        ("value", AttrValue::Tensor(t)) => tensor_const(t)?,
        ("value_float", AttrValue::Float(v)) => (vec![], ConstData::F32(vec![*v])),
        ("value_floats", AttrValue::Floats(v)) => (vec![v.len()], ConstData::F32(v.clone())),
        ("value_int", AttrValue::Int(v)) => (vec![], ConstData::I64(vec![*v])),
        ("value_ints", AttrValue::Ints(v)) => (vec![v.len()], ConstData::I64(v.clone())),
        (name, _) => {
            return Err(Error::OnnxNode {
                node: node.name.clone(),
                op: node.op_type.clone(),
                reason: format!("constant attribute '{name}' is not supported"),
            })
        }
    })
}

/// Builds the graph of an ONNX model.
pub fn import(model: &ox::Model) -> Result<Graph> {
    let opset = model
        .opset()
        .ok_or_else(|| Error::Unsupported { what: "an ONNX model without a default-domain opset".into() })?;
    if !OPSETS.contains(&opset) {
        return Err(Error::Unsupported {
            what: format!("ONNX opset {opset} (kestrel imports opsets {} to {})", OPSETS.start(), OPSETS.end()),
        });
    }
    let og = &model.graph;

    // Every unsupported op at once, grouped by type, so a user sees the whole list in one run.
    let mut unsupported: Vec<(String, Vec<&str>)> = Vec::new();
    for n in &og.nodes {
        let standard = n.domain.is_empty() || n.domain == "ai.onnx";
        let known = if standard {
            RUNNABLE_OPS.contains(&n.op_type.as_str()) || FOLD_ONLY_OPS.contains(&n.op_type.as_str())
        } else {
            n.domain == KESTREL_DOMAIN && KESTREL_OPS.contains(&n.op_type.as_str())
        };
        if !known {
            let op = if n.domain.is_empty() { n.op_type.clone() } else { format!("{}.{}", n.domain, n.op_type) };
            match unsupported.iter_mut().find(|(o, _)| *o == op) {
                Some((_, nodes)) => nodes.push(&n.name),
                None => unsupported.push((op, vec![&n.name])),
            }
        }
    }
    if !unsupported.is_empty() {
        let count = unsupported.iter().map(|(_, n)| n.len()).sum();
        let ops = unsupported
            .iter()
            .map(|(op, nodes)| {
                let shown: Vec<String> = nodes.iter().take(3).map(|n| format!("'{n}'")).collect();
                let more = if nodes.len() > 3 { format!(" and {} more", nodes.len() - 3) } else { String::new() };
                format!("{op} x{} (nodes {}{more})", nodes.len(), shown.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::UnsupportedOps { count, ops });
    }

    let mut g = Graph::default();
    let mut ids: HashMap<String, ValueId> = HashMap::new();
    for t in &og.initializers {
        let (dims, data) = tensor_const(t)?;
        let id = g.add_value(&t.name, elem_of(&data), dims);
        g.constants.insert(id, data);
        ids.insert(t.name.clone(), id);
    }
    for v in &og.inputs {
        if ids.contains_key(&v.name) {
            continue; // old exporters list initializers as inputs too
        }
        let shape = v.static_shape().ok_or_else(|| Error::Unsupported {
            what: format!(
                "graph input '{}' has a dynamic or unknown shape {:?}; export with static shapes",
                v.name, v.shape
            ),
        })?;
        if v.elem_type != 1 {
            return Err(Error::Unsupported {
                what: format!("graph input '{}' has element type {} (only float32 inputs)", v.name, v.elem_type),
            });
        }
        let id = g.add_value(&v.name, ElemType::F32, shape);
        g.inputs.push(id);
        ids.insert(v.name.clone(), id);
    }

    for on in &og.nodes {
        if on.op_type == "Constant" {
            let (dims, data) = constant_node(on)?;
            let name = on.outputs.first().cloned().unwrap_or_default();
            let id = g.add_value(&name, elem_of(&data), dims);
            g.constants.insert(id, data);
            ids.insert(name, id);
            continue;
        }
        let mut inputs = Vec::with_capacity(on.inputs.len());
        for name in &on.inputs {
            if name.is_empty() {
                inputs.push(None);
                continue;
            }
            let id = *ids.get(name).ok_or_else(|| Error::OnnxNode {
                node: on.name.clone(),
                op: on.op_type.clone(),
                reason: format!("reads '{name}', which no earlier node or initializer defines"),
            })?;
            inputs.push(Some(id));
        }
        // Trailing omitted inputs carry no meaning.
        while inputs.last() == Some(&None) {
            inputs.pop();
        }
        let attrs =
            on.attributes.iter().map(|a| Ok((a.name.clone(), convert_attr(on, a)?))).collect::<Result<Vec<_>>>()?;
        let outputs: Vec<ValueId> = on.outputs.iter().map(|o| g.add_value(o, ElemType::F32, vec![])).collect();
        for (o, &id) in on.outputs.iter().zip(&outputs) {
            ids.insert(o.clone(), id);
        }
        let node = Node { name: on.name.clone(), op: on.op_type.clone(), inputs, outputs, attrs };
        match infer(&g, &node)? {
            Inferred::Shapes(shapes) => {
                for (&id, (shape, elem)) in node.outputs.iter().zip(shapes) {
                    g.values[id].shape = shape;
                    g.values[id].elem = elem;
                }
                g.nodes.push(node);
            }
            Inferred::Constants(consts) => {
                for (&id, (shape, data)) in node.outputs.iter().zip(consts) {
                    g.values[id].shape = shape;
                    g.values[id].elem = elem_of(&data);
                    g.constants.insert(id, data);
                }
            }
        }
        if FOLD_ONLY_OPS.contains(&on.op_type.as_str())
            && g.nodes.last().is_some_and(|n| n.name == on.name && n.op == on.op_type)
        {
            return Err(Error::OnnxNode {
                node: on.name.clone(),
                op: on.op_type.clone(),
                reason: "runs only on constant inputs (shape arithmetic); this one depends on the model input".into(),
            });
        }
    }
    for v in &og.outputs {
        let id = *ids
            .get(&v.name)
            .ok_or_else(|| Error::Unsupported { what: format!("graph output '{}' is never produced", v.name) })?;
        g.outputs.push(id);
    }
    Ok(g)
}

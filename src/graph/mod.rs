//! The graph IR: values with static shapes, nodes in topological order, constants.
//!
//! Nodes are generic (an op name and typed attributes) so the IR can be stored, read back and
//! extended without a format change for every op; each backend interprets the ops it knows and
//! reports the ones it does not. Shapes are fixed when the graph is built (batch 1 is the case
//! that matters on a robot), and [`infer`] checks them node by node.

pub mod clip;
pub mod codec;
pub mod infer;
pub mod onnx;
pub mod pack;
pub mod passes;
pub mod plan;

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Index of a value in [`Graph::values`].
pub type ValueId = usize;

/// Element type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    /// Shapes, indices, axes: folded away before execution in the graphs kestrel runs.
    I64,
}

/// A tensor flowing through the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub name: String,
    pub elem: ElemType,
    pub shape: Vec<usize>,
}

impl Value {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Constant data of a value (weights, biases, folded shapes).
#[derive(Clone, Debug, PartialEq)]
pub enum ConstData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl ConstData {
    pub fn len(&self) -> usize {
        match self {
            ConstData::F32(v) => v.len(),
            ConstData::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A node attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
}

/// One operator application. `inputs` entries are None for omitted optional inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    /// ONNX op type for imported ops (`Conv`, `Resize`, ...); fused ops keep their base name and
    /// carry the fusion in attributes (`activation`).
    pub op: String,
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
    pub attrs: Vec<(String, Attr)>,
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn set_attr(&mut self, name: &str, value: Attr) {
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => self.attrs.push((name.to_string(), value)),
        }
    }

    pub(crate) fn error(&self, reason: impl Into<String>) -> Error {
        Error::GraphNode { node: self.name.clone(), op: self.op.clone(), reason: reason.into() }
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64> {
        match self.attr(name) {
            None => Ok(default),
            Some(Attr::Int(v)) => Ok(*v),
            Some(other) => Err(self.error(format!("attribute '{name}' should be an integer, found {other:?}"))),
        }
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32> {
        match self.attr(name) {
            None => Ok(default),
            Some(Attr::Float(v)) => Ok(*v),
            Some(other) => Err(self.error(format!("attribute '{name}' should be a float, found {other:?}"))),
        }
    }

    pub fn ints(&self, name: &str) -> Result<Option<&[i64]>> {
        match self.attr(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v)),
            Some(other) => Err(self.error(format!("attribute '{name}' should be a list of integers, found {other:?}"))),
        }
    }

    pub fn string<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str> {
        match self.attr(name) {
            None => Ok(default),
            Some(Attr::Str(s)) => Ok(s),
            Some(other) => Err(self.error(format!("attribute '{name}' should be a string, found {other:?}"))),
        }
    }

    /// Input `i`, which must be present.
    pub fn input(&self, i: usize) -> Result<ValueId> {
        self.inputs.get(i).copied().flatten().ok_or_else(|| self.error(format!("input {i} is missing")))
    }
}

/// A static graph.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    pub constants: HashMap<ValueId, ConstData>,
}

impl Graph {
    /// Adds a value and returns its id.
    pub fn add_value(&mut self, name: &str, elem: ElemType, shape: Vec<usize>) -> ValueId {
        self.values.push(Value { name: name.to_string(), elem, shape });
        self.values.len() - 1
    }

    pub fn constant(&self, id: ValueId) -> Option<&ConstData> {
        self.constants.get(&id)
    }

    /// The f32 data of a constant input of `node`.
    pub fn const_f32(&self, node: &Node, i: usize) -> Result<&[f32]> {
        match self.constant(node.input(i)?) {
            Some(ConstData::F32(v)) => Ok(v),
            _ => Err(node.error(format!("input {i} must be a constant f32 tensor"))),
        }
    }

    /// The i64 data of a constant input of `node`.
    pub fn const_i64(&self, node: &Node, i: usize) -> Result<&[i64]> {
        match self.constant(node.input(i)?) {
            Some(ConstData::I64(v)) => Ok(v),
            _ => Err(node.error(format!("input {i} must be a constant integer tensor"))),
        }
    }

    /// Node index producing each value (None for inputs and constants).
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &o in &n.outputs {
                p[o] = Some(i);
            }
        }
        p
    }

    /// Number of nodes reading each value (graph outputs count as readers).
    pub fn use_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.values.len()];
        for n in &self.nodes {
            for &i in n.inputs.iter().flatten() {
                c[i] += 1;
            }
        }
        for &o in &self.outputs {
            c[o] += 1;
        }
        c
    }

    /// Op types with their node counts, sorted by name.
    pub fn op_histogram(&self) -> Vec<(String, usize)> {
        let mut h: HashMap<&str, usize> = HashMap::new();
        for n in &self.nodes {
            *h.entry(n.op.as_str()).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = h.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        v.sort();
        v
    }
}

//! ONNX models, decoded straight from the protobuf wire format (onnx.proto, IR version 3 and
//! later): the graph, its nodes and attributes, initializers, value shapes, opset imports and
//! metadata. Field numbers below are onnx.proto's.
//!
//! Decoding is total: any byte string gives a model or an [`Error::OnnxParse`] naming the offset,
//! never a panic, and nothing is allocated beyond what the input's own bytes back.

mod wire;

use crate::error::{Error, Result};
use wire::{parse_error, Reader, Wire};

/// Subgraphs (If/Loop bodies) nest at most this deep.
const MAX_GRAPH_DEPTH: usize = 16;

/// An ONNX model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub ir_version: i64,
    /// (domain, version); the default domain is "" (or "ai.onnx").
    pub opsets: Vec<(String, i64)>,
    pub producer_name: String,
    pub producer_version: String,
    /// metadata_props: ultralytics writes names, stride, imgsz, task here.
    pub metadata: Vec<(String, String)>,
    pub graph: Graph,
}

impl Model {
    /// Decodes a model from its protobuf bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let mut m = Model::default();
        let mut graph = None;
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => m.ir_version = varint_field(&mut r, field, wire, "ModelProto")? as i64,
                2 => m.producer_name = string_field(&mut r, field, wire, "ModelProto")?,
                3 => m.producer_version = string_field(&mut r, field, wire, "ModelProto")?,
                7 => {
                    r.expect(field, wire, Wire::Len, "ModelProto")?;
                    graph = Some(Graph::decode(&mut r.message()?, 0)?);
                }
                8 => {
                    r.expect(field, wire, Wire::Len, "ModelProto")?;
                    m.opsets.push(decode_opset(&mut r.message()?)?);
                }
                14 => {
                    r.expect(field, wire, Wire::Len, "ModelProto")?;
                    m.metadata.push(decode_string_pair(&mut r.message()?)?);
                }
                _ => r.skip(wire)?,
            }
        }
        m.graph = graph.ok_or_else(|| parse_error(0, "the model has no graph"))?;
        Ok(m)
    }

    /// Reads and decodes an .onnx file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::decode(&bytes)
    }

    /// The opset version of the default domain.
    pub fn opset(&self) -> Option<i64> {
        self.opsets.iter().find(|(d, _)| d.is_empty() || d == "ai.onnx").map(|&(_, v)| v)
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A graph: nodes in topological order, weights, and the typed inputs and outputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    /// Shapes of intermediate values, where the exporter recorded them.
    pub value_info: Vec<ValueInfo>,
}

impl Graph {
    fn decode(r: &mut Reader, depth: usize) -> Result<Self> {
        if depth > MAX_GRAPH_DEPTH {
            return Err(parse_error(r.offset(), format!("subgraphs nest deeper than {MAX_GRAPH_DEPTH}")));
        }
        let mut g = Graph::default();
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => {
                    r.expect(field, wire, Wire::Len, "GraphProto")?;
                    g.nodes.push(Node::decode(&mut r.message()?, depth)?);
                }
                2 => g.name = string_field(r, field, wire, "GraphProto")?,
                5 => {
                    r.expect(field, wire, Wire::Len, "GraphProto")?;
                    g.initializers.push(Tensor::decode(&mut r.message()?)?);
                }
                11..=13 => {
                    r.expect(field, wire, Wire::Len, "GraphProto")?;
                    let v = ValueInfo::decode(&mut r.message()?)?;
                    match field {
                        11 => g.inputs.push(v),
                        12 => g.outputs.push(v),
                        _ => g.value_info.push(v),
                    }
                }
                _ => r.skip(wire)?,
            }
        }
        Ok(g)
    }

    pub fn initializer(&self, name: &str) -> Option<&Tensor> {
        self.initializers.iter().find(|t| t.name == name)
    }
}

/// One operator application.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    /// Value names; an empty name is an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
}

impl Node {
    fn decode(r: &mut Reader, depth: usize) -> Result<Self> {
        let mut n = Node::default();
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => n.inputs.push(string_field(r, field, wire, "NodeProto")?),
                2 => n.outputs.push(string_field(r, field, wire, "NodeProto")?),
                3 => n.name = string_field(r, field, wire, "NodeProto")?,
                4 => n.op_type = string_field(r, field, wire, "NodeProto")?,
                7 => n.domain = string_field(r, field, wire, "NodeProto")?,
                5 => {
                    r.expect(field, wire, Wire::Len, "NodeProto")?;
                    n.attributes.push(Attribute::decode(&mut r.message()?, depth)?);
                }
                _ => r.skip(wire)?,
            }
        }
        Ok(n)
    }

    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|a| a.name == name).map(|a| &a.value)
    }

    /// An integer attribute, or `default` when absent.
    pub fn attr_int(&self, name: &str, default: i64) -> Result<i64> {
        match self.attr(name) {
            None => Ok(default),
            Some(AttrValue::Int(v)) => Ok(*v),
            Some(other) => Err(self.attr_type_error(name, "an integer", other)),
        }
    }

    /// A float attribute, or `default` when absent.
    pub fn attr_float(&self, name: &str, default: f32) -> Result<f32> {
        match self.attr(name) {
            None => Ok(default),
            Some(AttrValue::Float(v)) => Ok(*v),
            Some(other) => Err(self.attr_type_error(name, "a float", other)),
        }
    }

    /// An integer-list attribute, or None when absent.
    pub fn attr_ints(&self, name: &str) -> Result<Option<&[i64]>> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Ints(v)) => Ok(Some(v)),
            Some(other) => Err(self.attr_type_error(name, "a list of integers", other)),
        }
    }

    /// A string attribute, or `default` when absent.
    pub fn attr_string<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str> {
        match self.attr(name) {
            None => Ok(default),
            Some(AttrValue::String(s)) => std::str::from_utf8(s).map_err(|_| Error::OnnxNode {
                node: self.name.clone(),
                op: self.op_type.clone(),
                reason: format!("attribute '{name}' is not UTF-8"),
            }),
            Some(other) => Err(self.attr_type_error(name, "a string", other)),
        }
    }

    fn attr_type_error(&self, name: &str, want: &str, got: &AttrValue) -> Error {
        Error::OnnxNode {
            node: self.name.clone(),
            op: self.op_type.clone(),
            reason: format!("attribute '{name}' should be {want}, found {}", got.kind()),
        }
    }
}

/// A named attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
}

/// An attribute's value (AttributeProto's `type` selects the field).
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(Tensor),
    Graph(Box<Graph>),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
    /// A type the importer does not use (sparse tensors, type protos, lists of graphs...).
    Other(i64),
}

impl AttrValue {
    pub fn kind(&self) -> &'static str {
        match self {
            AttrValue::Float(_) => "a float",
            AttrValue::Int(_) => "an integer",
            AttrValue::String(_) => "a string",
            AttrValue::Tensor(_) => "a tensor",
            AttrValue::Graph(_) => "a graph",
            AttrValue::Floats(_) => "a list of floats",
            AttrValue::Ints(_) => "a list of integers",
            AttrValue::Strings(_) => "a list of strings",
            AttrValue::Other(_) => "an unsupported attribute type",
        }
    }
}

impl Attribute {
    fn decode(r: &mut Reader, depth: usize) -> Result<Self> {
        let at = r.offset();
        let mut name = String::new();
        let mut ty = 0i64;
        let (mut f, mut i, mut s, mut t, mut g) = (None, None, None, None, None);
        let (mut floats, mut ints, mut strings) = (Vec::new(), Vec::new(), Vec::new());
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => name = string_field(r, field, wire, "AttributeProto")?,
                20 => ty = varint_field(r, field, wire, "AttributeProto")? as i64,
                2 => {
                    r.expect(field, wire, Wire::Fixed32, "AttributeProto")?;
                    f = Some(f32::from_bits(r.fixed32()?));
                }
                3 => i = Some(varint_field(r, field, wire, "AttributeProto")? as i64),
                4 => {
                    r.expect(field, wire, Wire::Len, "AttributeProto")?;
                    s = Some(r.len_bytes()?.to_vec());
                }
                5 => {
                    r.expect(field, wire, Wire::Len, "AttributeProto")?;
                    t = Some(Tensor::decode(&mut r.message()?)?);
                }
                6 => {
                    r.expect(field, wire, Wire::Len, "AttributeProto")?;
                    g = Some(Graph::decode(&mut r.message()?, depth + 1)?);
                }
                7 => r.push_floats(wire, &mut floats)?,
                8 => r.push_varints(wire, &mut ints)?,
                9 => {
                    r.expect(field, wire, Wire::Len, "AttributeProto")?;
                    strings.push(r.len_bytes()?.to_vec());
                }
                _ => r.skip(wire)?,
            }
        }
        let missing = || parse_error(at, format!("attribute '{name}' of type {ty} has no value"));
        let value = match ty {
            1 => AttrValue::Float(f.ok_or_else(missing)?),
            2 => AttrValue::Int(i.ok_or_else(missing)?),
            3 => AttrValue::String(s.ok_or_else(missing)?),
            4 => AttrValue::Tensor(t.ok_or_else(missing)?),
            5 => AttrValue::Graph(Box::new(g.ok_or_else(missing)?)),
            6 => AttrValue::Floats(floats),
            7 => AttrValue::Ints(ints),
            8 => AttrValue::Strings(strings),
            other => AttrValue::Other(other),
        };
        Ok(Attribute { name, value })
    }
}

/// ONNX element types used by the importer (TensorProto.DataType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Float,
    Uint8,
    Int8,
    Int32,
    Int64,
    Bool,
    Float16,
    Double,
    /// Any other code (strings, complex, bfloat16, ...).
    Other(i32),
}

impl DataType {
    pub fn from_code(code: i32) -> Self {
        match code {
            1 => Self::Float,
            2 => Self::Uint8,
            3 => Self::Int8,
            6 => Self::Int32,
            7 => Self::Int64,
            9 => Self::Bool,
            10 => Self::Float16,
            11 => Self::Double,
            c => Self::Other(c),
        }
    }

    /// Bytes per element in raw_data, where fixed.
    pub fn size(self) -> Option<usize> {
        match self {
            Self::Float | Self::Int32 => Some(4),
            Self::Uint8 | Self::Int8 | Self::Bool => Some(1),
            Self::Int64 | Self::Double => Some(8),
            Self::Float16 => Some(2),
            Self::Other(_) => None,
        }
    }
}

/// A constant tensor (initializer or attribute).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: DataType,
    /// raw_data, when the exporter used it (little-endian elements).
    pub raw: Vec<u8>,
    pub floats: Vec<f32>,
    pub int32s: Vec<i64>,
    pub int64s: Vec<i64>,
    pub doubles: Vec<f64>,
    /// Set when the values live in an external file (not supported: reported at use).
    pub external: bool,
}

impl Tensor {
    fn decode(r: &mut Reader) -> Result<Self> {
        let mut t = Tensor {
            name: String::new(),
            dims: Vec::new(),
            data_type: DataType::Other(0),
            raw: Vec::new(),
            floats: Vec::new(),
            int32s: Vec::new(),
            int64s: Vec::new(),
            doubles: Vec::new(),
            external: false,
        };
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => r.push_varints(wire, &mut t.dims)?,
                2 => t.data_type = DataType::from_code(varint_field(r, field, wire, "TensorProto")? as i32),
                4 => r.push_floats(wire, &mut t.floats)?,
                5 => r.push_varints(wire, &mut t.int32s)?,
                7 => r.push_varints(wire, &mut t.int64s)?,
                8 => t.name = string_field(r, field, wire, "TensorProto")?,
                9 => {
                    r.expect(field, wire, Wire::Len, "TensorProto")?;
                    t.raw = r.len_bytes()?.to_vec();
                }
                10 => r.push_doubles(wire, &mut t.doubles)?,
                14 => t.external = varint_field(r, field, wire, "TensorProto")? == 1,
                _ => r.skip(wire)?,
            }
        }
        Ok(t)
    }

    /// Number of elements (1 for a scalar), or an error for negative or overflowing dims.
    pub fn numel(&self) -> Result<usize> {
        self.dims.iter().try_fold(1usize, |acc, &d| {
            usize::try_from(d)
                .ok()
                .and_then(|d| acc.checked_mul(d))
                .ok_or_else(|| self.error(format!("invalid dims {:?}", self.dims)))
        })
    }

    fn error(&self, reason: String) -> Error {
        Error::OnnxTensor { tensor: self.name.clone(), reason }
    }

    fn check_len(&self, got: usize, numel: usize) -> Result<()> {
        if got == numel {
            Ok(())
        } else {
            Err(self.error(format!("has {got} values for dims {:?} ({numel} elements)", self.dims)))
        }
    }

    fn raw_elems<const N: usize>(&self, numel: usize) -> Result<impl Iterator<Item = [u8; N]> + '_> {
        if self.raw.len() != numel * N {
            return Err(self.error(format!(
                "raw_data is {} bytes, dims {:?} need {}",
                self.raw.len(),
                self.dims,
                numel * N
            )));
        }
        Ok(self.raw.chunks_exact(N).map(|c| c.try_into().expect("chunk of N")))
    }

    /// The values as f32 (float, float16 and double tensors).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        if self.external {
            return Err(self.error("stores its data in an external file, which is not supported".into()));
        }
        let n = self.numel()?;
        let has_raw = !self.raw.is_empty() || n == 0;
        let out: Vec<f32> = match self.data_type {
            DataType::Float if has_raw => self.raw_elems::<4>(n)?.map(f32::from_le_bytes).collect(),
            DataType::Float => self.floats.clone(),
            DataType::Float16 if has_raw => {
                self.raw_elems::<2>(n)?.map(|b| half::f16::from_le_bytes(b).to_f32()).collect()
            }
            // float16 values stored in int32_data, one per element (low 16 bits).
            DataType::Float16 => self.int32s.iter().map(|&v| half::f16::from_bits(v as u16).to_f32()).collect(),
            DataType::Double if has_raw => self.raw_elems::<8>(n)?.map(|b| f64::from_le_bytes(b) as f32).collect(),
            DataType::Double => self.doubles.iter().map(|&v| v as f32).collect(),
            other => return Err(self.error(format!("has element type {other:?}, expected a float type"))),
        };
        self.check_len(out.len(), n)?;
        Ok(out)
    }

    /// The values as i64 (integer and bool tensors: shapes, axes, indices).
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        if self.external {
            return Err(self.error("stores its data in an external file, which is not supported".into()));
        }
        let n = self.numel()?;
        let has_raw = !self.raw.is_empty() || n == 0;
        let out: Vec<i64> = match self.data_type {
            DataType::Int64 if has_raw => self.raw_elems::<8>(n)?.map(i64::from_le_bytes).collect(),
            DataType::Int64 => self.int64s.clone(),
            DataType::Int32 if has_raw => self.raw_elems::<4>(n)?.map(|b| i32::from_le_bytes(b) as i64).collect(),
            DataType::Int8 if has_raw => self.raw_elems::<1>(n)?.map(|b| b[0] as i8 as i64).collect(),
            DataType::Uint8 | DataType::Bool if has_raw => self.raw_elems::<1>(n)?.map(|b| b[0] as i64).collect(),
            DataType::Int32 | DataType::Int8 | DataType::Uint8 | DataType::Bool => {
                self.int32s.iter().map(|&v| v as i32 as i64).collect()
            }
            other => return Err(self.error(format!("has element type {other:?}, expected an integer type"))),
        };
        self.check_len(out.len(), n)?;
        Ok(out)
    }
}

/// One dimension of a value's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    /// A named (dynamic) dimension, e.g. "batch".
    Param(String),
    Unknown,
}

/// A graph input, output or intermediate with its element type and shape, where known.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    /// TensorProto.DataType code (0 when not a tensor or not given).
    pub elem_type: i32,
    pub shape: Option<Vec<Dim>>,
}

impl ValueInfo {
    fn decode(r: &mut Reader) -> Result<Self> {
        let mut v = ValueInfo::default();
        while let Some((field, wire)) = r.key()? {
            match field {
                1 => v.name = string_field(r, field, wire, "ValueInfoProto")?,
                2 => {
                    r.expect(field, wire, Wire::Len, "ValueInfoProto")?;
                    let mut ty = r.message()?;
                    // TypeProto: field 1 is tensor_type.
                    while let Some((field, wire)) = ty.key()? {
                        if field == 1 {
                            ty.expect(field, wire, Wire::Len, "TypeProto")?;
                            decode_tensor_type(&mut ty.message()?, &mut v)?;
                        } else {
                            ty.skip(wire)?;
                        }
                    }
                }
                _ => r.skip(wire)?,
            }
        }
        Ok(v)
    }

    /// The shape when every dimension is fixed.
    pub fn static_shape(&self) -> Option<Vec<usize>> {
        self.shape
            .as_ref()?
            .iter()
            .map(|d| if let Dim::Fixed(v) = d { usize::try_from(*v).ok() } else { None })
            .collect()
    }
}

fn decode_tensor_type(r: &mut Reader, v: &mut ValueInfo) -> Result<()> {
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => v.elem_type = varint_field(r, field, wire, "TypeProto.Tensor")? as i32,
            2 => {
                r.expect(field, wire, Wire::Len, "TypeProto.Tensor")?;
                let mut shape_r = r.message()?;
                let mut dims = Vec::new();
                while let Some((field, wire)) = shape_r.key()? {
                    if field != 1 {
                        shape_r.skip(wire)?;
                        continue;
                    }
                    shape_r.expect(field, wire, Wire::Len, "TensorShapeProto")?;
                    let mut d = shape_r.message()?;
                    let mut dim = Dim::Unknown;
                    while let Some((field, wire)) = d.key()? {
                        match field {
                            1 => dim = Dim::Fixed(varint_field(&mut d, field, wire, "Dimension")? as i64),
                            2 => dim = Dim::Param(string_field(&mut d, field, wire, "Dimension")?),
                            _ => d.skip(wire)?,
                        }
                    }
                    dims.push(dim);
                }
                v.shape = Some(dims);
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(())
}

fn decode_opset(r: &mut Reader) -> Result<(String, i64)> {
    let (mut domain, mut version) = (String::new(), 0);
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => domain = string_field(r, field, wire, "OperatorSetIdProto")?,
            2 => version = varint_field(r, field, wire, "OperatorSetIdProto")? as i64,
            _ => r.skip(wire)?,
        }
    }
    Ok((domain, version))
}

fn decode_string_pair(r: &mut Reader) -> Result<(String, String)> {
    let (mut key, mut value) = (String::new(), String::new());
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => key = string_field(r, field, wire, "StringStringEntryProto")?,
            2 => value = string_field(r, field, wire, "StringStringEntryProto")?,
            _ => r.skip(wire)?,
        }
    }
    Ok((key, value))
}

fn varint_field(r: &mut Reader, field: u32, wire: Wire, message: &str) -> Result<u64> {
    r.expect(field, wire, Wire::Varint, message)?;
    r.varint()
}

fn string_field(r: &mut Reader, field: u32, wire: Wire, message: &str) -> Result<String> {
    r.expect(field, wire, Wire::Len, message)?;
    r.string()
}

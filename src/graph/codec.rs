//! The GRAPH section of a .kpak file: values (name, element type, shape), graph inputs and
//! outputs, and nodes (name, op, inputs, outputs, attributes). docs/FORMAT.md section 7a is the
//! specification. Constant f32 values are tensors of the same name in the tensor table; small
//! integer constants (reshape targets, slice bounds) are stored inline.

use super::{Attr, ConstData, ElemType, Graph, Node};
use crate::error::{Error, Result};

pub const MAX_VALUES: u32 = 1 << 20;
pub const MAX_NODES: u32 = 1 << 20;
pub const MAX_NODE_IO: usize = 255;
pub const MAX_ATTRS: u16 = 256;
pub const MAX_ATTR_LEN: u32 = 1 << 16;
/// Inline integer constants are small by nature; larger ones are refused.
pub const MAX_INLINE_I64: u64 = 1 << 16;
const NONE: u32 = u32::MAX;

const FLAG_CONST: u8 = 1;
const FLAG_INLINE_I64: u8 = 2;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Encodes the graph structure. Every f32 constant must be written as a tensor of the same name.
pub fn encode(g: &Graph) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for n in [g.values.len(), g.nodes.len(), g.inputs.len(), g.outputs.len()] {
        out.extend_from_slice(&(n as u32).to_le_bytes());
    }
    for (id, v) in g.values.iter().enumerate() {
        if v.name.len() > u16::MAX as usize || v.shape.len() > crate::format::MAX_RANK {
            return Err(Error::InvalidArgument { reason: format!("value '{}' has too long a name or rank", v.name) });
        }
        put_str(&mut out, &v.name);
        out.push(match v.elem {
            ElemType::F32 => 1,
            ElemType::I64 => 2,
        });
        out.push(v.shape.len() as u8);
        let inline = matches!(g.constant(id), Some(ConstData::I64(_)));
        let flags = if g.constant(id).is_some() { FLAG_CONST } else { 0 } | if inline { FLAG_INLINE_I64 } else { 0 };
        out.push(flags);
        out.push(0);
        for &d in &v.shape {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        if let Some(ConstData::I64(data)) = g.constant(id) {
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            for x in data {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    for &id in g.inputs.iter().chain(&g.outputs) {
        out.extend_from_slice(&(id as u32).to_le_bytes());
    }
    for n in &g.nodes {
        put_str(&mut out, &n.name);
        put_str(&mut out, &n.op);
        if n.inputs.len() > MAX_NODE_IO || n.outputs.len() > MAX_NODE_IO || n.attrs.len() > MAX_ATTRS as usize {
            return Err(Error::InvalidArgument {
                reason: format!("node '{}' has too many inputs, outputs or attributes", n.name),
            });
        }
        out.push(n.inputs.len() as u8);
        out.push(n.outputs.len() as u8);
        out.extend_from_slice(&(n.attrs.len() as u16).to_le_bytes());
        for i in &n.inputs {
            out.extend_from_slice(&i.map_or(NONE, |v| v as u32).to_le_bytes());
        }
        for &o in &n.outputs {
            out.extend_from_slice(&(o as u32).to_le_bytes());
        }
        for (k, a) in &n.attrs {
            put_str(&mut out, k);
            match a {
                Attr::Int(v) => {
                    out.push(1);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Attr::Float(v) => {
                    out.push(2);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Attr::Ints(v) => {
                    out.push(3);
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                }
                Attr::Floats(v) => {
                    out.push(4);
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                }
                Attr::Str(s) => {
                    out.push(5);
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }
    Ok(out)
}

struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Cur<'a> {
    fn fail(&self, reason: impl Into<String>) -> Error {
        Error::Malformed { section: "GRAPH", offset: self.base + self.pos as u64, reason: reason.into() }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n).filter(|&e| e <= self.b.len()) {
            Some(e) => {
                let s = &self.b[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => Err(self.fail(format!("{what} runs past the end of the section"))),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn str16(&mut self, what: &str) -> Result<String> {
        let n = self.u16(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.fail(format!("{what} is not UTF-8")))
    }
    /// A count of items that each take at least `min_bytes`: bounded by the bytes left.
    fn count(&mut self, what: &str, limit: u32, min_bytes: usize) -> Result<usize> {
        let n = self.u32(what)?;
        let left = (self.b.len() - self.pos) / min_bytes.max(1);
        if n > limit || n as usize > left {
            return Err(self.fail(format!("{what} {n} exceeds the limit or the section")));
        }
        Ok(n as usize)
    }
    fn value_id(&mut self, what: &str, n_values: usize) -> Result<usize> {
        let v = self.u32(what)? as usize;
        if v >= n_values {
            return Err(self.fail(format!("{what} refers to value {v} of {n_values}")));
        }
        Ok(v)
    }
}

/// Decodes a GRAPH section that starts at file offset `base`. F32 constants are marked (with
/// empty data) and filled from the tensor table by the loader.
pub fn decode(bytes: &[u8], base: u64) -> Result<Graph> {
    let mut c = Cur { b: bytes, pos: 0, base };
    let n_values = c.count("value count", MAX_VALUES, 0)?;
    let n_nodes = c.count("node count", MAX_NODES, 0)?;
    let n_in = c.count("input count", MAX_VALUES, 0)?;
    let n_out = c.count("output count", MAX_VALUES, 0)?;
    // Each value takes at least 6 bytes and each node at least 8: check before allocating.
    if n_values.saturating_mul(6).saturating_add(n_nodes.saturating_mul(8)) > bytes.len() {
        return Err(c.fail("counts exceed what the section can hold"));
    }
    let mut g = Graph::default();
    let mut f32_constants = Vec::new();
    for _ in 0..n_values {
        let name = c.str16("value name")?;
        let elem = match c.u8("element type")? {
            1 => ElemType::F32,
            2 => ElemType::I64,
            e => return Err(c.fail(format!("value '{name}' has unknown element type {e}"))),
        };
        let rank = c.u8("rank")? as usize;
        let flags = c.u8("flags")?;
        if c.u8("reserved")? != 0 || flags & !(FLAG_CONST | FLAG_INLINE_I64) != 0 || rank > crate::format::MAX_RANK {
            return Err(c.fail(format!("value '{name}' has invalid flags {flags:#x} or rank {rank}")));
        }
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            let d = c.u64("dimension")?;
            if d > crate::format::MAX_DIM {
                return Err(c.fail(format!("value '{name}' has dimension {d}")));
            }
            shape.push(d as usize);
        }
        let numel =
            shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).filter(|&n| n <= crate::format::MAX_ELEMENTS);
        let Some(numel) = numel else { return Err(c.fail(format!("value '{name}' has too many elements"))) };
        let id = g.add_value(&name, elem, shape);
        if flags & FLAG_INLINE_I64 != 0 {
            let n = c.u64("inline constant length")?;
            if n != numel || n > MAX_INLINE_I64 || elem != ElemType::I64 {
                return Err(c.fail(format!("inline constant '{name}' has {n} values for {numel} elements")));
            }
            let data = (0..n).map(|_| c.u64("inline constant").map(|v| v as i64)).collect::<Result<Vec<_>>>()?;
            g.constants.insert(id, ConstData::I64(data));
        } else if flags & FLAG_CONST != 0 {
            if elem != ElemType::F32 {
                return Err(c.fail(format!("constant '{name}' must be inline (integer) or f32")));
            }
            f32_constants.push(id);
        }
    }
    for _ in 0..n_in {
        let v = c.value_id("graph input", n_values)?;
        g.inputs.push(v);
    }
    for _ in 0..n_out {
        let v = c.value_id("graph output", n_values)?;
        g.outputs.push(v);
    }
    let mut produced = vec![false; n_values];
    for &i in &g.inputs {
        produced[i] = true;
    }
    for &k in g.constants.keys().chain(&f32_constants) {
        produced[k] = true;
    }
    for _ in 0..n_nodes {
        let name = c.str16("node name")?;
        let op = c.str16("op")?;
        let (ni, no) = (c.u8("input count")? as usize, c.u8("output count")? as usize);
        let na = c.u16("attribute count")?;
        if na > MAX_ATTRS {
            return Err(c.fail(format!("node '{name}' has {na} attributes")));
        }
        let mut inputs = Vec::with_capacity(ni);
        for _ in 0..ni {
            let v = c.u32("node input")?;
            if v == NONE {
                inputs.push(None);
                continue;
            }
            let v = v as usize;
            // Topological order: every input is defined before the node.
            if v >= n_values || !produced[v] {
                return Err(c.fail(format!("node '{name}' reads value {v} before it is defined")));
            }
            inputs.push(Some(v));
        }
        let mut outputs = Vec::with_capacity(no);
        for _ in 0..no {
            let v = c.value_id("node output", n_values)?;
            if produced[v] {
                return Err(c.fail(format!("node '{name}' writes value {v}, which is already defined")));
            }
            produced[v] = true;
            outputs.push(v);
        }
        let mut attrs = Vec::with_capacity(na as usize);
        for _ in 0..na {
            let key = c.str16("attribute name")?;
            let kind = c.u8("attribute kind")?;
            let a = match kind {
                1 => Attr::Int(c.u64("int attribute")? as i64),
                2 => Attr::Float(f32::from_bits(c.u32("float attribute")?)),
                3..=5 => {
                    let n = c.u32("attribute length")?;
                    if n > MAX_ATTR_LEN {
                        return Err(c.fail(format!("attribute '{key}' has {n} entries")));
                    }
                    match kind {
                        3 => Attr::Ints((0..n).map(|_| c.u64("ints").map(|v| v as i64)).collect::<Result<_>>()?),
                        4 => Attr::Floats((0..n).map(|_| c.u32("floats").map(f32::from_bits)).collect::<Result<_>>()?),
                        _ => {
                            let b = c.take(n as usize, "string attribute")?;
                            Attr::Str(
                                String::from_utf8(b.to_vec())
                                    .map_err(|_| c.fail(format!("attribute '{key}' is not UTF-8")))?,
                            )
                        }
                    }
                }
                k => return Err(c.fail(format!("attribute '{key}' has unknown kind {k}"))),
            };
            attrs.push((key, a));
        }
        g.nodes.push(Node { name, op, inputs, outputs, attrs });
    }
    if c.pos != bytes.len() {
        return Err(c.fail("trailing bytes after the last node"));
    }
    for &o in &g.outputs {
        if !produced[o] {
            return Err(Error::Malformed {
                section: "GRAPH",
                offset: base,
                reason: format!("graph output '{}' is never produced", g.values[o].name),
            });
        }
    }
    for id in f32_constants {
        // Marked; the loader replaces the empty data with the tensor table's.
        g.constants.insert(id, ConstData::F32(Vec::new()));
    }
    Ok(g)
}

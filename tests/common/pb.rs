//! A minimal protobuf encoder for building ONNX models in tests (field numbers: onnx.proto).

pub fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

pub fn key(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint(((field as u64) << 3) | wire as u64, out);
}

pub fn int(field: u32, v: i64, out: &mut Vec<u8>) {
    key(field, 0, out);
    varint(v as u64, out);
}

pub fn bytes(field: u32, b: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

pub fn string(field: u32, s: &str, out: &mut Vec<u8>) {
    bytes(field, s.as_bytes(), out);
}

pub fn packed_ints(field: u32, vs: &[i64], out: &mut Vec<u8>) {
    let mut body = Vec::new();
    for &v in vs {
        varint(v as u64, &mut body);
    }
    bytes(field, &body, out);
}

pub fn fixed32(field: u32, v: u32, out: &mut Vec<u8>) {
    key(field, 5, out);
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn attr_ints(name: &str, vs: &[i64]) -> Vec<u8> {
    let mut a = Vec::new();
    string(1, name, &mut a);
    int(20, 7, &mut a);
    packed_ints(8, vs, &mut a);
    a
}

pub fn value_info(name: &str, dims: &[Result<i64, &str>]) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        match d {
            Ok(v) => int(1, *v, &mut dim),
            Err(p) => string(2, p, &mut dim),
        }
        bytes(1, &dim, &mut shape);
    }
    let mut tensor_type = Vec::new();
    int(1, 1, &mut tensor_type);
    bytes(2, &shape, &mut tensor_type);
    let mut ty = Vec::new();
    bytes(1, &tensor_type, &mut ty);
    let mut v = Vec::new();
    string(1, name, &mut v);
    bytes(2, &ty, &mut v);
    v
}

pub fn attr_int(name: &str, v: i64) -> Vec<u8> {
    let mut a = Vec::new();
    string(1, name, &mut a);
    int(20, 2, &mut a);
    int(3, v, &mut a);
    a
}

pub fn attr_float(name: &str, v: f32) -> Vec<u8> {
    let mut a = Vec::new();
    string(1, name, &mut a);
    int(20, 1, &mut a);
    fixed32(2, v.to_bits(), &mut a);
    a
}

pub fn attr_str(name: &str, v: &str) -> Vec<u8> {
    let mut a = Vec::new();
    string(1, name, &mut a);
    int(20, 3, &mut a);
    bytes(4, v.as_bytes(), &mut a);
    a
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: &[Vec<u8>]) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        string(1, i, &mut n);
    }
    for o in outputs {
        string(2, o, &mut n);
    }
    string(3, name, &mut n);
    string(4, op, &mut n);
    for a in attrs {
        bytes(5, a, &mut n);
    }
    n
}

pub fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> Vec<u8> {
    let mut t = Vec::new();
    packed_ints(1, dims, &mut t);
    int(2, 1, &mut t);
    string(8, name, &mut t);
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes(9, &raw, &mut t);
    t
}

pub fn tensor_i64(name: &str, dims: &[i64], data: &[i64]) -> Vec<u8> {
    let mut t = Vec::new();
    packed_ints(1, dims, &mut t);
    int(2, 7, &mut t);
    string(8, name, &mut t);
    packed_ints(7, data, &mut t);
    t
}

/// A model of one graph: nodes, initializers, inputs and outputs as encoded messages.
pub fn model(opset: i64, nodes: &[Vec<u8>], inits: &[Vec<u8>], inputs: &[Vec<u8>], outputs: &[Vec<u8>]) -> Vec<u8> {
    let mut g = Vec::new();
    for n in nodes {
        bytes(1, n, &mut g);
    }
    string(2, "test", &mut g);
    for t in inits {
        bytes(5, t, &mut g);
    }
    for v in inputs {
        bytes(11, v, &mut g);
    }
    for v in outputs {
        bytes(12, v, &mut g);
    }
    let mut m = Vec::new();
    int(1, 8, &mut m);
    let mut op = Vec::new();
    string(1, "", &mut op);
    int(2, opset, &mut op);
    bytes(8, &op, &mut m);
    bytes(7, &g, &mut m);
    m
}

//! The ONNX protobuf decoder on models built here with a minimal encoder: every field the
//! importer reads, packed and unpacked repeated fields, unknown fields, and damaged input
//! (typed errors, never a panic).

use kestrel::import::onnx::{AttrValue, DataType, Dim, Model};
use kestrel::Error;
use proptest::prelude::*;

mod common;
use common::pb::*;

/// A small Conv + Resize model exercising every decoded field.
fn model_bytes() -> Vec<u8> {
    let mut conv = Vec::new();
    for i in ["images", "w", "b"] {
        string(1, i, &mut conv);
    }
    string(2, "y", &mut conv);
    string(3, "/model.0/conv/Conv", &mut conv);
    string(4, "Conv", &mut conv);
    bytes(5, &attr_ints("kernel_shape", &[3, 3]), &mut conv);
    bytes(5, &attr_ints("pads", &[1, 1, 1, 1]), &mut conv);
    let mut strides = Vec::new();
    string(1, "strides", &mut strides);
    int(20, 7, &mut strides);
    int(8, 2, &mut strides); // unpacked repeated ints
    int(8, 2, &mut strides);
    bytes(5, &strides, &mut conv);
    let mut group = Vec::new();
    string(1, "group", &mut group);
    int(20, 2, &mut group);
    int(3, 1, &mut group);
    bytes(5, &group, &mut conv);
    key(99, 1, &mut conv); // an unknown fixed64 field is skipped
    conv.extend_from_slice(&7u64.to_le_bytes());

    let mut resize = Vec::new();
    for i in ["y", "", "scales"] {
        string(1, i, &mut resize);
    }
    string(2, "out", &mut resize);
    string(3, "/model.10/Resize", &mut resize);
    string(4, "Resize", &mut resize);
    let mut mode = Vec::new();
    string(1, "mode", &mut mode);
    int(20, 3, &mut mode);
    bytes(4, b"nearest", &mut mode);
    bytes(5, &mode, &mut resize);
    let mut alpha = Vec::new();
    string(1, "cubic_coeff_a", &mut alpha);
    int(20, 1, &mut alpha);
    fixed32(2, (-0.75f32).to_bits(), &mut alpha);
    bytes(5, &alpha, &mut resize);

    let mut w = Vec::new();
    packed_ints(1, &[2, 1, 3, 3], &mut w);
    int(2, 1, &mut w);
    string(8, "w", &mut w);
    let wv: Vec<u8> = (0..18).flat_map(|i| (i as f32 * 0.5 - 4.0).to_le_bytes()).collect();
    bytes(9, &wv, &mut w);

    let mut b = Vec::new();
    int(1, 2, &mut b); // unpacked dims
    int(2, 1, &mut b);
    string(8, "b", &mut b);
    fixed32(4, 0.25f32.to_bits(), &mut b); // unpacked float_data
    fixed32(4, (-1.5f32).to_bits(), &mut b);

    let mut scales = Vec::new();
    packed_ints(1, &[4], &mut scales);
    int(2, 7, &mut scales);
    string(8, "scales", &mut scales);
    packed_ints(7, &[1, 1, 2, 2], &mut scales);

    let mut graph = Vec::new();
    bytes(1, &conv, &mut graph);
    bytes(1, &resize, &mut graph);
    string(2, "main_graph", &mut graph);
    bytes(5, &w, &mut graph);
    bytes(5, &b, &mut graph);
    bytes(5, &scales, &mut graph);
    bytes(11, &value_info("images", &[Ok(1), Ok(1), Ok(8), Ok(8)]), &mut graph);
    bytes(12, &value_info("out", &[Err("batch"), Ok(2), Ok(8), Ok(8)]), &mut graph);

    let mut m = Vec::new();
    int(1, 8, &mut m);
    let mut opset = Vec::new();
    string(1, "", &mut opset);
    int(2, 17, &mut opset);
    bytes(8, &opset, &mut m);
    string(2, "pytorch", &mut m);
    string(3, "2.3.0", &mut m);
    let mut meta = Vec::new();
    string(1, "names", &mut meta);
    string(2, "{0: 'person', 1: 'car'}", &mut meta);
    bytes(14, &meta, &mut m);
    bytes(7, &graph, &mut m);
    m
}

#[test]
fn decodes_every_field_the_importer_reads() {
    let m = Model::decode(&model_bytes()).unwrap();
    assert_eq!(m.ir_version, 8);
    assert_eq!(m.opset(), Some(17));
    assert_eq!((m.producer_name.as_str(), m.producer_version.as_str()), ("pytorch", "2.3.0"));
    assert_eq!(m.meta("names"), Some("{0: 'person', 1: 'car'}"));
    let g = &m.graph;
    assert_eq!(g.name, "main_graph");
    assert_eq!(g.nodes.len(), 2);
    let conv = &g.nodes[0];
    assert_eq!((conv.op_type.as_str(), conv.name.as_str()), ("Conv", "/model.0/conv/Conv"));
    assert_eq!(conv.inputs, ["images", "w", "b"]);
    assert_eq!(conv.attr_ints("kernel_shape").unwrap(), Some(&[3i64, 3][..]));
    assert_eq!(conv.attr_ints("strides").unwrap(), Some(&[2i64, 2][..]));
    assert_eq!(conv.attr_ints("dilations").unwrap(), None);
    assert_eq!(conv.attr_int("group", 0).unwrap(), 1);
    let resize = &g.nodes[1];
    assert_eq!(resize.inputs, ["y", "", "scales"]);
    assert_eq!(resize.attr_string("mode", "").unwrap(), "nearest");
    assert_eq!(resize.attr_float("cubic_coeff_a", 0.0).unwrap(), -0.75);
    assert!(matches!(conv.attr_string("group", ""), Err(Error::OnnxNode { .. })));

    let w = g.initializer("w").unwrap();
    assert_eq!((w.dims.as_slice(), w.data_type), (&[2i64, 1, 3, 3][..], DataType::Float));
    let wv = w.to_f32().unwrap();
    assert_eq!(wv.len(), 18);
    assert_eq!((wv[0], wv[17]), (-4.0, 4.5));
    assert_eq!(g.initializer("b").unwrap().to_f32().unwrap(), [0.25, -1.5]);
    assert_eq!(g.initializer("scales").unwrap().to_i64().unwrap(), [1, 1, 2, 2]);
    assert!(g.initializer("scales").unwrap().to_f32().is_err());

    assert_eq!(g.inputs[0].static_shape(), Some(vec![1, 1, 8, 8]));
    assert_eq!(g.outputs[0].shape.as_ref().unwrap()[0], Dim::Param("batch".into()));
    assert_eq!(g.outputs[0].static_shape(), None);
}

#[test]
fn every_truncation_is_a_typed_error() {
    let b = model_bytes();
    for len in 0..b.len() {
        match Model::decode(&b[..len]) {
            Err(Error::OnnxParse { .. }) => {}
            // A cut exactly between top-level fields can leave a valid (smaller) model only if the
            // graph came before the cut; this model writes its graph last.
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
}

#[test]
fn malformed_wire_data_is_rejected() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], "varint longer than 64 bits"),
        (vec![0x0B], "wire type 3"),
        (vec![0x00], "invalid field number 0"),
        (vec![0x3A, 0x80, 0x80, 0x80, 0x80, 0x10], "runs past the end"),
        (vec![0x38, 0x01], "wire type Varint, expected Len"),
        (vec![0x08, 0x01], "no graph"),
    ];
    for (bytes, needle) in cases {
        match Model::decode(&bytes) {
            Err(e @ Error::OnnxParse { .. }) => assert!(e.to_string().contains(needle), "{e} lacks '{needle}'"),
            other => panic!("{bytes:02x?}: {other:?}"),
        }
    }
}

#[test]
fn deeply_nested_subgraphs_are_refused() {
    // A graph whose node has a graph attribute whose node has a graph attribute ... 40 deep.
    let mut graph = Vec::new();
    for _ in 0..40 {
        let mut attr = Vec::new();
        string(1, "body", &mut attr);
        int(20, 5, &mut attr);
        bytes(6, &graph, &mut attr);
        let mut node = Vec::new();
        string(4, "Loop", &mut node);
        bytes(5, &attr, &mut node);
        graph = Vec::new();
        bytes(1, &node, &mut graph);
    }
    let mut m = Vec::new();
    bytes(7, &graph, &mut m);
    let e = Model::decode(&m).unwrap_err();
    assert!(e.to_string().contains("nest deeper"), "{e}");
}

#[test]
fn tensor_data_must_match_its_dims() {
    let mut t = Vec::new();
    packed_ints(1, &[2, 3], &mut t);
    int(2, 1, &mut t);
    string(8, "short", &mut t);
    bytes(9, &[0u8; 20], &mut t);
    let mut ext = Vec::new();
    packed_ints(1, &[1], &mut ext);
    int(2, 1, &mut ext);
    string(8, "ext", &mut ext);
    int(14, 1, &mut ext);
    let mut neg = Vec::new();
    packed_ints(1, &[-1], &mut neg);
    int(2, 1, &mut neg);
    string(8, "neg", &mut neg);
    let mut g = Vec::new();
    bytes(5, &t, &mut g);
    bytes(5, &ext, &mut g);
    bytes(5, &neg, &mut g);
    let mut m = Vec::new();
    bytes(7, &g, &mut m);
    let model = Model::decode(&m).unwrap();
    for (name, needle) in [("short", "raw_data is 20 bytes"), ("ext", "external file"), ("neg", "invalid dims")] {
        match model.graph.initializer(name).unwrap().to_f32() {
            Err(e @ Error::OnnxTensor { .. }) => assert!(e.to_string().contains(needle), "{e}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn attribute_types_are_checked_at_use() {
    let m = Model::decode(&model_bytes()).unwrap();
    let conv = &m.graph.nodes[0];
    let e = conv.attr_int("kernel_shape", 0).unwrap_err();
    assert!(e.to_string().contains("'kernel_shape' should be an integer, found a list of integers"), "{e}");
    assert!(e.to_string().contains("/model.0/conv/Conv"), "{e}");
    assert!(matches!(conv.attr("group"), Some(AttrValue::Int(1))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Random damage never panics: the result is a model or a typed error.
    #[test]
    fn random_damage_never_panics(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let mut b = model_bytes();
        for (at, v) in flips {
            let i = at % b.len();
            b[i] ^= v | 1;
        }
        let cut = cut % (b.len() + 1);
        let r = std::panic::catch_unwind(|| Model::decode(&b[..cut]).map(|m| {
            // Touch the decoded tensors too: conversions must not panic either.
            for t in &m.graph.initializers {
                let _ = t.to_f32();
                let _ = t.to_i64();
            }
        }));
        prop_assert!(r.is_ok(), "the decoder panicked");
        if let Ok(Err(e)) = r {
            prop_assert!(matches!(e, Error::OnnxParse { .. }), "{e:?}");
        }
    }
}

//! ONNX -> graph IR: shape inference, folding of shape arithmetic, BatchNorm folding, activation
//! fusion, and the errors a user sees for models kestrel cannot run.

mod common;
use common::pb::*;

use kestrel::graph::{onnx::import, passes::optimize, Attr, ConstData};
use kestrel::import::onnx::Model;
use kestrel::rng::SplitMix64;
use kestrel::Error;

/// images [1,3,8,8] -> Conv(3->4, 3x3, pad 1) -> BatchNorm -> x*sigmoid(x) -> Reshape to
/// [1, 4, -1] through a Shape/Gather/Unsqueeze/Concat chain -> out [1, 4, 64].
fn conv_bn_silu_model(rng: &mut SplitMix64) -> (Vec<u8>, Vec<f32>, [Vec<f32>; 4]) {
    let w = rng.normal_vec(4 * 3 * 3 * 3);
    let bn: [Vec<f32>; 4] = [
        (0..4).map(|_| rng.uniform(0.5, 1.5)).collect(),
        rng.normal_vec(4),
        rng.normal_vec(4),
        (0..4).map(|_| rng.uniform(0.5, 2.0)).collect(),
    ];
    let nodes = vec![
        node(
            "Conv",
            "conv",
            &["images", "w"],
            &["c"],
            &[attr_ints("kernel_shape", &[3, 3]), attr_ints("pads", &[1, 1, 1, 1])],
        ),
        node(
            "BatchNormalization",
            "bn",
            &["c", "scale", "shift", "mean", "var"],
            &["b"],
            &[attr_float("epsilon", 1e-3)],
        ),
        node("Sigmoid", "sig", &["b"], &["s"], &[]),
        node("Mul", "silu", &["b", "s"], &["y"], &[]),
        node("Shape", "shape", &["y"], &["shp"], &[]),
        node("Gather", "gather", &["shp", "zero"], &["n"], &[attr_int("axis", 0)]),
        node("Unsqueeze", "unsq", &["n", "axes"], &["n1"], &[]),
        node("Concat", "cat", &["n1", "rest"], &["target"], &[attr_int("axis", 0)]),
        node("Reshape", "reshape", &["y", "target"], &["out"], &[]),
    ];
    let inits = vec![
        tensor_f32("w", &[4, 3, 3, 3], &w),
        tensor_f32("scale", &[4], &bn[0]),
        tensor_f32("shift", &[4], &bn[1]),
        tensor_f32("mean", &[4], &bn[2]),
        tensor_f32("var", &[4], &bn[3]),
        tensor_i64("zero", &[], &[0]),
        tensor_i64("axes", &[1], &[0]),
        tensor_i64("rest", &[2], &[4, -1]),
    ];
    let m = model(
        17,
        &nodes,
        &inits,
        &[value_info("images", &[Ok(1), Ok(3), Ok(8), Ok(8)])],
        &[value_info("out", &[Ok(1), Ok(4), Ok(64)])],
    );
    (m, w, bn)
}

#[test]
fn shape_chains_fold_and_batchnorm_and_silu_fuse_into_the_conv() {
    let mut rng = SplitMix64::new(SplitMix64::from_time().next_u64());
    let (bytes, w, bn) = conv_bn_silu_model(&mut rng);
    let mut g = import(&Model::decode(&bytes).unwrap()).unwrap();
    // Shape/Gather/Unsqueeze/Concat are evaluated at import.
    let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
    assert_eq!(ops, ["Conv", "BatchNormalization", "Sigmoid", "Mul", "Reshape"]);
    assert_eq!(g.values[g.outputs[0]].shape, [1, 4, 64]);

    let report = optimize(&mut g).unwrap();
    assert_eq!((report.batchnorms_folded, report.activations_fused), (1, 1));
    let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
    assert_eq!(ops, ["Conv", "Reshape"]);
    let conv = &g.nodes[0];
    assert_eq!(conv.attr("activation"), Some(&Attr::Str("silu".into())));
    assert_eq!(g.values[conv.outputs[0]].shape, [1, 4, 8, 8]);

    // The folded weights and bias are the BatchNorm applied to the convolution, in f64.
    let (Some(ConstData::F32(wf)), Some(ConstData::F32(bf))) =
        (g.constant(conv.input(1).unwrap()), g.constant(conv.input(2).unwrap()))
    else {
        panic!("folded constants missing")
    };
    for o in 0..4 {
        let k = bn[0][o] as f64 / (bn[3][o] as f64 + 1e-3).sqrt();
        for j in 0..27 {
            assert!((wf[o * 27 + j] as f64 - w[o * 27 + j] as f64 * k).abs() < 1e-6);
        }
        let want = -(bn[2][o] as f64) * k + bn[1][o] as f64;
        assert!((bf[o] as f64 - want).abs() < 1e-5, "bias {o}");
    }
    // Left: the folded weights and bias, and the reshape target the chain computed; the chain's
    // own constants and the original weights are gone.
    let floats = g.constants.values().filter(|c| matches!(c, ConstData::F32(_))).count();
    assert_eq!((g.constants.len(), floats), (3, 2));
    assert_eq!(g.constant(g.nodes[1].input(1).unwrap()), Some(&ConstData::I64(vec![1, 4, -1])));
}

#[test]
fn every_unsupported_op_is_listed_at_once() {
    let nodes = vec![
        node("TopK", "/model/topk", &["x", "k"], &["v", "i"], &[]),
        node("Relu", "relu", &["v"], &["r"], &[]),
        node("NonMaxSuppression", "/model/nms", &["r", "r"], &["sel"], &[]),
    ];
    let m = model(
        17,
        &nodes,
        &[tensor_i64("k", &[1], &[2])],
        &[value_info("x", &[Ok(1), Ok(8)])],
        &[value_info("sel", &[Ok(1)])],
    );
    let e = import(&Model::decode(&m).unwrap()).unwrap_err();
    assert!(matches!(e, Error::UnsupportedOps { count: 2, .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("TopK x1 (nodes '/model/topk')") && text.contains("NonMaxSuppression x1 (nodes '/model/nms')"),
        "{text}"
    );
}

#[test]
fn dynamic_inputs_and_old_opsets_are_refused_with_names() {
    let nodes = vec![node("Relu", "relu", &["x"], &["y"], &[])];
    let dynamic = model(17, &nodes, &[], &[value_info("x", &[Err("batch"), Ok(8)])], &[value_info("y", &[Ok(1)])]);
    let e = import(&Model::decode(&dynamic).unwrap()).unwrap_err();
    assert!(e.to_string().contains("graph input 'x' has a dynamic"), "{e}");
    let old = model(11, &nodes, &[], &[value_info("x", &[Ok(1), Ok(8)])], &[value_info("y", &[Ok(1)])]);
    let e = import(&Model::decode(&old).unwrap()).unwrap_err();
    assert!(e.to_string().contains("opset 11"), "{e}");
}

#[test]
fn shape_errors_name_the_node() {
    // A 3x3 kernel on 3 channels applied to a 2-channel input.
    let nodes = vec![node("Conv", "/model.0/conv/Conv", &["x", "w"], &["y"], &[])];
    let m = model(
        17,
        &nodes,
        &[tensor_f32("w", &[4, 3, 3, 3], &[0.5; 108])],
        &[value_info("x", &[Ok(1), Ok(2), Ok(8), Ok(8)])],
        &[value_info("y", &[Ok(1)])],
    );
    let e = import(&Model::decode(&m).unwrap()).unwrap_err();
    assert!(matches!(&e, Error::GraphNode { node, op, .. } if node == "/model.0/conv/Conv" && op == "Conv"), "{e}");
}

/// Writes `g` into a .kpak with its f32 constants as tensors, as `kestrel pack` does.
fn pack(g: &kestrel::graph::Graph) -> Vec<u8> {
    let mut w = kestrel::format::KpakWriter::new();
    w.metadata("name", "test").unwrap();
    for (&id, c) in &g.constants {
        if let ConstData::F32(data) = c {
            let v = &g.values[id];
            w.add_f32(&v.name, &v.shape, data).unwrap();
        }
    }
    w.graph(g).unwrap();
    w.to_bytes()
}

#[test]
fn the_graph_round_trips_through_a_kpak() {
    let mut rng = SplitMix64::new(9);
    let (bytes, _, _) = conv_bn_silu_model(&mut rng);
    let mut g = import(&Model::decode(&bytes).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    let file = pack(&g);
    let pak = kestrel::format::Kpak::from_bytes(&file, kestrel::format::Verify::Full).unwrap();
    let back = pak.graph().expect("the file has a graph");
    assert_eq!(back.nodes, g.nodes);
    assert_eq!((&back.inputs, &back.outputs), (&g.inputs, &g.outputs));
    assert_eq!(back.values, g.values);
    for (&id, c) in &g.constants {
        match c {
            ConstData::I64(_) => assert_eq!(back.constant(id), Some(c)),
            // f32 data lives in the tensor table.
            ConstData::F32(data) => assert_eq!(&pak.tensor_f32(&g.values[id].name).unwrap(), data),
        }
    }
}

#[test]
fn a_damaged_graph_section_is_a_typed_error() {
    let mut rng = SplitMix64::new(10);
    let (bytes, _, _) = conv_bn_silu_model(&mut rng);
    let mut g = import(&Model::decode(&bytes).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    let file = pack(&g);
    let pak = kestrel::format::Kpak::from_bytes(&file, kestrel::format::Verify::Full).unwrap();
    let s = *pak.sections().iter().find(|s| s.kind == kestrel::format::SectionKind::Graph).unwrap();
    // Every single-byte change inside the section, with the checksums made consistent again, is
    // either harmless (a name byte) or a typed error; never a panic.
    let mut errors = 0;
    for at in s.offset as usize..(s.offset + s.len) as usize {
        let mut b = file.clone();
        b[at] ^= 0xA5;
        let e = 64 + 32 * 2; // the GRAPH entry is the third in the table
        let crc = kestrel::format::crc32(&b[s.offset as usize..(s.offset + s.len) as usize]);
        b[e + 4..e + 8].copy_from_slice(&crc.to_le_bytes());
        let table_end = 64 + 32 * 4;
        let h = kestrel::format::header_crc(&b[..table_end]);
        b[12..16].copy_from_slice(&h.to_le_bytes());
        match kestrel::format::Kpak::from_bytes(&b, kestrel::format::Verify::Full) {
            Ok(_) => {}
            // A changed shape or attribute that still parses fails the shape check, named too.
            Err(Error::Malformed { section: "GRAPH", .. }) => errors += 1,
            Err(other) => panic!("byte {at}: unexpected error {other}"),
        }
    }
    assert!(errors > s.len as usize / 4, "{errors} of {} flips detected", s.len);

    // Large values written over every 8-byte word (dims, inline constants, counts) are typed
    // errors too: shape rules and executors multiply dims, and must never overflow or panic.
    for at in (s.offset as usize..(s.offset + s.len) as usize - 8).step_by(4) {
        for v in [u64::MAX, 1 << 32, (1 << 31) + 1] {
            let mut b = file.clone();
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            let e = 64 + 32 * 2;
            let crc = kestrel::format::crc32(&b[s.offset as usize..(s.offset + s.len) as usize]);
            b[e + 4..e + 8].copy_from_slice(&crc.to_le_bytes());
            let h = kestrel::format::header_crc(&b[..64 + 32 * 4]);
            b[12..16].copy_from_slice(&h.to_le_bytes());
            let r = std::panic::catch_unwind(|| {
                kestrel::format::Kpak::from_bytes(&b, kestrel::format::Verify::Full).map(drop)
            });
            assert!(r.is_ok(), "byte {at} = {v:#x}: the reader panicked");
        }
    }
}

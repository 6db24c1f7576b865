//! Packing the YOLOv8 fixture at lower weight precision: f16 stays within the f16 tier of ONNX
//! Runtime's f32 output; q8, q4 and fp4 deviate by bounded amounts (the figures are printed for
//! the closing note; the bounds only catch a broken codec or kernel, not a small regression).
//! The default protects the first and output convs (kept f32), as `kestrel pack` does.

use std::path::Path;

use kestrel::exec::CpuExecutor;
use kestrel::format::{Kpak, Verify};
use kestrel::graph::pack::{pack, PackOptions};
use kestrel::graph::{onnx::import, passes::optimize};
use kestrel::import::onnx::Model;
use kestrel::tensor::Scheme;
use kestrel::tol::{rel_l2, Tol};

#[test]
fn lower_precision_weights_stay_close_to_f32() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolov8-tiny");
    let mut g = import(&Model::load(&dir.join("model.onnx")).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    let (_, input) = kestrel::npy::read(&dir.join("input.npy")).unwrap();
    let (_, want) = kestrel::npy::read(&dir.join("output0.npy")).unwrap();
    let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    // (format, bound on the relative L2 error of the whole output and of the class scores)
    let cases = [("f16", Tol::F16.rel_l2), ("q8", 0.05), ("q4g32", 0.3), ("q4", 0.3), ("fp4", 0.3)];
    for (name, bound) in cases {
        let opts =
            PackOptions { weights: Scheme::parse(name).unwrap(), layers: vec![], protect_ends: true, metadata: vec![] };
        let (writer, report) = pack(&g, &opts).unwrap();
        let pak = Kpak::from_bytes(&writer.to_bytes(), Verify::Full).unwrap();
        let mut exec = CpuExecutor::from_kpak(&pak).unwrap();
        exec.run(&[&input]).unwrap();
        let out = exec.output(0);
        let all = rel_l2(out, &want);
        let scores = rel_l2(&out[4 * 525..], &want[4 * 525..]);
        eprintln!(
            "{name:>6}: weights {} -> {} bytes, rel_l2 vs ONNX Runtime f32: all {all:.2e}, scores {scores:.2e}",
            report.f32_bytes, report.packed_bytes
        );
        assert!(all < bound && scores < bound, "{name}: all {all:e}, scores {scores:e} (bound {bound})");
        assert!(report.packed_bytes < report.f32_bytes);
    }
}

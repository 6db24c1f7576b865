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

#[test]
fn delta_mode_on_the_gpu_tracks_the_dense_run_at_theta_zero() {
    use kestrel::exec::DeltaOptions;
    use kestrel::rng::SplitMix64;
    let ctx = GpuContext::new(&GpuOptions { allow_software: true })
        .expect("GPU tests are mandatory: install mesa-vulkan-drivers");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolov8-tiny");
    let mut g = import(&Model::load(&dir.join("model.onnx")).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    let none = |_| unreachable!("the imported graph holds its constants");
    let dense = GpuExecutor::new(&ctx, &g, &none).unwrap();
    let mut delta = GpuExecutor::new(&ctx, &g, &none).unwrap();
    let opts = DeltaOptions { keyframe_interval: 3, ..DeltaOptions::default() };
    delta.enable_delta(&ctx, &g, &none, &opts).unwrap();
    let (_, mut frame) = kestrel::npy::read(&dir.join("input.npy")).unwrap();
    let mut r = SplitMix64::new(5);
    let (mut want, mut got) = (vec![0f32; 12 * 525], vec![0f32; 12 * 525]);
    for n in 0..5 {
        if n > 0 {
            // A 6x6 patch of every channel moves.
            for c in 0..3 {
                for y in 4 * n..4 * n + 6 {
                    for x in 7 * n..7 * n + 6 {
                        frame[(c * 160 + y) * 160 + x] = r.unit() as f32;
                    }
                }
            }
        }
        dense.run(&ctx, &[&frame]).unwrap();
        delta.run(&ctx, &[&frame]).unwrap();
        dense.read_output(&ctx, 0, &mut want).unwrap();
        delta.read_output(&ctx, 0, &mut got).unwrap();
        let err = rel_l2(&got, &want.iter().map(|&v| v as f64).collect::<Vec<_>>());
        assert!(Tol::F32.accepts(err), "frame {n}: relative L2 {err:e}");
        let fired = delta.delta_fired(&ctx).unwrap();
        assert!(fired.len() > 50, "{} delta layers", fired.len());
        if n == 1 || n == 2 {
            // Between keyframes only the moved patch and what it reaches fire: far from all of
            // the first layer's input.
            let (_, f, inputs) = fired[0];
            assert!(f > 0 && f * 20 < inputs, "frame {n}: {f} of {inputs} fired in the first layer");
        }
    }
    // Keyframes at frames 0 and 3.
    assert_eq!(delta.delta_frames(), Some((5, 2)));
    let relative = DeltaOptions {
        relative: Some(kestrel::exec::RelativeThetas { t: 0.1, t_camera: 0.1, exact_below: 0.0, noise: 0.0 }),
        ..DeltaOptions::default()
    };
    assert!(delta.enable_delta(&ctx, &g, &none, &relative).is_err());
}

#[test]
fn a_detector_streams_in_delta_mode_on_the_gpu() {
    use kestrel::exec::DeltaOptions;
    use kestrel::vision::detector::{Detector, Device};
    use kestrel::vision::synth::{frame, CameraMotion, SynthOptions};
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/rgbir-fused.kpak");
    let mut det = Detector::open(&model, Device::Gpu { allow_software: true })
        .expect("GPU tests are mandatory: install mesa-vulkan-drivers");
    // The shipped thresholds are scene-relative, which the GPU refuses by name; one theta works.
    let shipped = DeltaOptions::from_metadata(det.metadata()).unwrap();
    let e = det.enable_delta(shipped).unwrap_err();
    assert!(e.to_string().contains("scene-relative"), "{e}");
    det.enable_delta(DeltaOptions { theta: 0.0, ..DeltaOptions::default() }).unwrap();
    let opts = SynthOptions { width: 160, height: 120, seed: 9, sequence: Some(3), camera: CameraMotion::Static };
    let mut dense = Detector::open(&model, Device::Cpu).unwrap();
    // The first frame twice (nothing fires the second time), then the next one.
    for (n, i) in [0, 0, 1].into_iter().enumerate() {
        let f = frame(&opts, i);
        let a = det.detect(Some(&f.rgb), Some(&f.ir)).unwrap();
        let b = dense.detect(Some(&f.rgb), Some(&f.ir)).unwrap();
        // theta 0: the same boxes as the dense CPU run, up to float rounding.
        assert_eq!(a.len(), b.len(), "frame {n}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.class_id, y.class_id);
            assert!((x.score - y.score).abs() < 1e-3, "frame {n}: {} vs {}", x.score, y.score);
        }
        let s = det.delta_stats().unwrap();
        if n == 1 {
            // The repeat did no conv work at all: only the always-dense ops.
            assert_eq!(s.layers.iter().map(|l| l.fired).sum::<u64>(), s.layers.iter().map(|l| l.inputs).sum::<u64>());
            assert_eq!(s.macs(), s.dense_macs() / 2 + s.other_macs_per_frame, "{s:?}");
        }
    }
    let s = det.delta_stats().unwrap();
    assert_eq!((s.frames, s.keyframes), (3, 1));
    assert!(s.fired_fraction() > 1.0 / 3.0, "the third frame's noise fires: {}", s.fired_fraction());
}

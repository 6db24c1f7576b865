//! CARE Transformer models through the importer (tests/fixtures/care, written by tools/care.py):
//! the `kestrel::LinearAttention` node alone, and a CARE-S0-style classifier (asymmetric token
//! mixer with linear attention, dual interaction, layer scales, LayerNorm head), against
//! PyTorch's float64 outputs, on the CPU, packed in a .kpak, and on the GPU (lavapipe in CI).

use std::path::{Path, PathBuf};

use kestrel::backend::gpu::{GpuContext, GpuOptions};
use kestrel::exec::{CpuExecutor, GpuExecutor};
use kestrel::format::{Kpak, Verify};
use kestrel::graph::pack::{pack, PackOptions};
use kestrel::graph::{onnx::import, passes::optimize, Graph};
use kestrel::import::onnx::Model;
use kestrel::tensor::Scheme;
use kestrel::tol::rel_l2;

/// f32 kernels against the float64 reference, relative L2: the classifier runs ~60 layers.
const CARE_F32_TOL: f64 = 1e-5;
/// q8 weights (per-row scales) against the float64 reference. The fixture's random weights make
/// it deliberately sensitive (10% noise on one conv moves the logits by up to 19%, per
/// tests/fixtures/care/README.md): half a percent of rounding per layer over ~60 layers.
const CARE_Q8_TOL: f64 = 5e-2;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/care").join(name)
}

fn graph(dir: &Path) -> Graph {
    let mut g = import(&Model::load(&dir.join("model.onnx")).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    g
}

fn npy(dir: &Path, file: &str) -> Vec<f32> {
    kestrel::npy::read(&dir.join(file)).unwrap().1
}

fn reference(dir: &Path) -> Vec<f64> {
    kestrel::npy::read_f64(&dir.join("output.npy")).unwrap().1
}

#[test]
fn the_linear_attention_node_imports_and_matches_the_float64_reference() {
    let dir = fixture("attention");
    let g = graph(&dir);
    assert!(g.nodes.iter().any(|n| n.op == "LinearAttention"));
    let (q, k, v) = (npy(&dir, "q.npy"), npy(&dir, "k.npy"), npy(&dir, "v.npy"));
    let mut cpu = CpuExecutor::new(&g, &|_| unreachable!()).unwrap();
    cpu.run(&[&q, &k, &v]).unwrap();
    let err = rel_l2(cpu.output(0), &reference(&dir));
    assert!(err < CARE_F32_TOL, "CPU relative L2 {err:e}");
    assert_eq!(cpu.output_shape(0), &[1, 4, 64, 16]);
}

#[test]
fn a_care_classifier_matches_pytorch_on_the_cpu_and_packed() {
    let dir = fixture("s0-tiny");
    let g = graph(&dir);
    assert_eq!(g.nodes.iter().filter(|n| n.op == "LinearAttention").count(), 3);
    let input = npy(&dir, "input.npy");
    let want = reference(&dir);
    let mut cpu = CpuExecutor::new(&g, &|_| unreachable!()).unwrap();
    cpu.run(&[&input]).unwrap();
    let err = rel_l2(cpu.output(0), &want);
    assert!(err < CARE_F32_TOL, "CPU relative L2 {err:e}");

    // Packed: the graph and its weights in one .kpak, f32 and q8, read back and run.
    for (scheme, tol) in [(Scheme::F32, CARE_F32_TOL), (Scheme::Q8, CARE_Q8_TOL)] {
        let opts = PackOptions { weights: scheme, layers: vec![], protect_ends: true, metadata: vec![] };
        let (writer, _) = pack(&g, &opts).unwrap();
        let pak = Kpak::from_bytes(&writer.to_bytes(), Verify::Full).unwrap();
        let mut exec = CpuExecutor::from_kpak(&pak).unwrap();
        exec.run(&[&input]).unwrap();
        let err = rel_l2(exec.output(0), &want);
        assert!(err < tol, "{scheme:?}: relative L2 {err:e} > {tol:e}");
    }
}

#[test]
fn a_care_classifier_on_the_gpu_matches_pytorch() {
    let ctx = GpuContext::new(&GpuOptions { allow_software: true })
        .expect("GPU tests are mandatory: install mesa-vulkan-drivers");
    for (name, inputs) in [("attention", vec!["q.npy", "k.npy", "v.npy"]), ("s0-tiny", vec!["input.npy"])] {
        let dir = fixture(name);
        let g = graph(&dir);
        let data: Vec<Vec<f32>> = inputs.iter().map(|f| npy(&dir, f)).collect();
        let refs: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
        let gpu = GpuExecutor::new(&ctx, &g, &|_| unreachable!()).unwrap();
        gpu.run(&ctx, &refs).unwrap();
        let want = reference(&dir);
        let mut got = vec![0f32; want.len()];
        gpu.read_output(&ctx, 0, &mut got).unwrap();
        let err = rel_l2(&got, &want);
        assert!(err < CARE_F32_TOL, "{name} on the GPU: relative L2 {err:e}");
    }
}

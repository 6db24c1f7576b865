//! Small imported graphs through both executors, against results computed here in f64: the
//! executor's own translations (slice bounds, Gemm weight transposition, an unfused
//! BatchNormalization, HardSwish/HardSigmoid) rather than the kernels, which tests/ops_cpu.rs
//! and tests/gpu_ops.rs cover.

mod common;
use common::pb::*;

use kestrel::backend::gpu::{GpuContext, GpuOptions};
use kestrel::exec::{CpuExecutor, GpuExecutor};
use kestrel::graph::{onnx::import, passes::optimize, Graph};
use kestrel::import::onnx::Model;
use kestrel::rng::SplitMix64;
use kestrel::tol::{rel_l2, Tol};

fn graph(bytes: &[u8]) -> Graph {
    let mut g = import(&Model::decode(bytes).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    g
}

fn run_cpu(g: &Graph, x: &[f32]) -> Vec<f32> {
    let mut e = CpuExecutor::new(g, &|_| unreachable!()).unwrap();
    e.run(&[x]).unwrap();
    e.output(0).to_vec()
}

fn run_gpu(g: &Graph, x: &[f32]) -> kestrel::Result<Vec<f32>> {
    let ctx = GpuContext::new(&GpuOptions { allow_software: true }).expect("GPU tests are mandatory");
    let e = GpuExecutor::new(&ctx, g, &|_| unreachable!())?;
    e.run(&ctx, &[x])?;
    let mut out = vec![0f32; e.output_shape(0).iter().product()];
    e.read_output(&ctx, 0, &mut out)?;
    Ok(out)
}

fn check(name: &str, got: &[f32], want: &[f64]) {
    let err = rel_l2(got, want);
    assert!(Tol::F32.accepts(err), "{name}: {err:e}\n got {got:?}\nwant {want:?}");
}

#[test]
fn slice_with_a_negative_step_and_clamped_bounds() {
    // x[1, 7] -> x[:, 5::-2] written as starts 5, ends -100 (clamped to "before 0"), step -2.
    let nodes = vec![node("Slice", "s", &["x", "st", "en", "ax", "sp"], &["y"], &[])];
    let inits = vec![
        tensor_i64("st", &[1], &[5]),
        tensor_i64("en", &[1], &[-100]),
        tensor_i64("ax", &[1], &[1]),
        tensor_i64("sp", &[1], &[-2]),
    ];
    let m = model(17, &nodes, &inits, &[value_info("x", &[Ok(1), Ok(7)])], &[value_info("y", &[Ok(1), Ok(3)])]);
    let g = graph(&m);
    assert_eq!(g.values[g.outputs[0]].shape, [1, 3]);
    let x: Vec<f32> = (0..7).map(|i| i as f32 * 1.5 + 0.25).collect();
    let want: Vec<f64> = [5, 3, 1].iter().map(|&i| x[i] as f64).collect();
    check("cpu", &run_cpu(&g, &x), &want);
    check("gpu", &run_gpu(&g, &x).unwrap(), &want);
}

#[test]
fn gemm_without_transposed_weights_and_hard_activations() {
    // y = HardSwish(x W + b) with W stored [K, N] (transB = 0), then HardSigmoid.
    let mut rng = SplitMix64::new(SplitMix64::from_time().next_u64());
    let (k, n) = (5, 3);
    let w = rng.normal_vec(k * n);
    let b = rng.normal_vec(n);
    let nodes = vec![
        node("Gemm", "fc", &["x", "w", "b"], &["h"], &[]),
        node("HardSwish", "hs", &["h"], &["a"], &[]),
        node("HardSigmoid", "hsig", &["a"], &["y"], &[attr_float("alpha", 0.25)]),
    ];
    let inits = vec![tensor_f32("w", &[k as i64, n as i64], &w), tensor_f32("b", &[n as i64], &b)];
    let m = model(17, &nodes, &inits, &[value_info("x", &[Ok(1), Ok(5)])], &[value_info("y", &[Ok(1), Ok(3)])]);
    let g = graph(&m);
    // The pass stored W as [N, K] with transB = 1, so a quantizer groups along K.
    let fc = g.nodes.iter().find(|nd| nd.op == "Gemm").unwrap();
    assert_eq!(fc.int("transB", 0).unwrap(), 1);
    assert_eq!(g.values[fc.inputs[1].unwrap()].shape, vec![n, k]);
    let x = rng.normal_vec(k);
    let want: Vec<f64> = (0..n)
        .map(|j| {
            let h: f64 = b[j] as f64 + (0..k).map(|i| x[i] as f64 * w[i * n + j] as f64).sum::<f64>();
            let a = h * (h / 6.0 + 0.5).clamp(0.0, 1.0);
            (0.25 * a + 0.5).clamp(0.0, 1.0)
        })
        .collect();
    check("cpu", &run_cpu(&g, &x), &want);
    check("gpu", &run_gpu(&g, &x).unwrap(), &want);
}

#[test]
fn an_unfused_batchnorm_runs_on_the_cpu_and_the_gpu() {
    let mut rng = SplitMix64::new(3);
    let c = 3;
    let p: Vec<Vec<f32>> = vec![
        (0..c).map(|_| rng.uniform(0.5, 1.5)).collect(),
        rng.normal_vec(c),
        rng.normal_vec(c),
        (0..c).map(|_| rng.uniform(0.5, 2.0)).collect(),
    ];
    let nodes = vec![node("BatchNormalization", "bn", &["x", "s", "b", "m", "v"], &["y"], &[])];
    let inits: Vec<Vec<u8>> =
        ["s", "b", "m", "v"].iter().zip(&p).map(|(name, d)| tensor_f32(name, &[c as i64], d)).collect();
    let m = model(17, &nodes, &inits, &[value_info("x", &[Ok(1), Ok(3), Ok(2), Ok(2)])], &[value_info("y", &[Ok(1)])]);
    let g = graph(&m);
    let x = rng.normal_vec(12);
    let want: Vec<f64> = (0..12)
        .map(|i| {
            let ch = i / 4;
            (x[i] as f64 - p[2][ch] as f64) / (p[3][ch] as f64 + 1e-5).sqrt() * p[0][ch] as f64 + p[1][ch] as f64
        })
        .collect();
    check("cpu", &run_cpu(&g, &x), &want);
    check("gpu", &run_gpu(&g, &x).unwrap(), &want);
}

#[test]
fn a_weight_shared_by_a_gemm_and_a_matmul_is_read_correctly_by_both() {
    // h1 = Gemm(x, W, b) with W [K, N] (transB = 0, transposed copy at load), h2 = MatMul(x, W)
    // on the original: y = h1 + h2 = 2 x W + b.
    let mut rng = SplitMix64::new(SplitMix64::from_time().next_u64());
    let (k, n) = (4, 6);
    let w = rng.normal_vec(k * n);
    let b = rng.normal_vec(n);
    let nodes = vec![
        node("Gemm", "fc", &["x", "w", "b"], &["h1"], &[]),
        node("MatMul", "mm", &["x", "w"], &["h2"], &[]),
        node("Add", "sum", &["h1", "h2"], &["y"], &[]),
    ];
    let inits = vec![tensor_f32("w", &[k as i64, n as i64], &w), tensor_f32("b", &[n as i64], &b)];
    let m = model(17, &nodes, &inits, &[value_info("x", &[Ok(1), Ok(4)])], &[value_info("y", &[Ok(1), Ok(6)])]);
    let g = graph(&m);
    let x = rng.normal_vec(k);
    let want: Vec<f64> =
        (0..n).map(|j| b[j] as f64 + 2.0 * (0..k).map(|i| x[i] as f64 * w[i * n + j] as f64).sum::<f64>()).collect();
    check("cpu", &run_cpu(&g, &x), &want);
    check("gpu", &run_gpu(&g, &x).unwrap(), &want);
}

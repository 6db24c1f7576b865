//! Every kernel x format against the float64 reference, on the CPU and on the GPU (lavapipe in
//! CI: a missing adapter fails these tests, it does not skip them).

use std::sync::OnceLock;

use kestrel::backend::gpu::{self, GpuContext, GpuOptions, KernelVariant};
use kestrel::backend::{cpu, BackendKind};
use kestrel::rng::SplitMix64;
use kestrel::selftest::{self, make_case};
use kestrel::tensor::Scheme;
use kestrel::tol::{rel_l2, Tol};

fn gpu() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        GpuContext::new(&GpuOptions { allow_software: true })
            .expect("GPU tests are mandatory: install a Vulkan driver (mesa-vulkan-drivers provides lavapipe)")
    })
}

fn fresh_seed() -> u64 {
    let seed = SplitMix64::from_time().next_u64();
    eprintln!("seed {seed}");
    seed
}

/// Stamps out one test per backend from one body (candle's test_device! habit).
macro_rules! test_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn on_cpu() {
                ($body)(BackendKind::Cpu)
            }
            #[test]
            fn on_gpu() {
                ($body)(BackendKind::Gpu)
            }
        }
    };
}

fn run_on(backend: BackendKind, case: &selftest::Case, variant: KernelVariant) -> Vec<f32> {
    match backend {
        BackendKind::Cpu => selftest::run_cpu(case).unwrap(),
        BackendKind::Gpu => gpu::matmul_once(gpu(), &case.packed.view(), &case.x, case.m, variant).unwrap(),
    }
}

/// The variants to run: one pass on the CPU, every checked variant on the GPU.
fn variants(backend: BackendKind) -> Vec<KernelVariant> {
    match backend {
        BackendKind::Cpu => vec![KernelVariant::PORTABLE],
        BackendKind::Gpu => gpu::selftest_variants(gpu()),
    }
}

fn tol(backend: BackendKind, v: KernelVariant) -> Tol {
    match backend {
        BackendKind::Cpu => Tol::QUANT,
        BackendKind::Gpu => gpu::variant_tol(v),
    }
}

test_backends!(every_format_and_shape_matches_f64_reference, |backend| {
    let report = selftest::run(&[backend], (backend == BackendKind::Gpu).then(gpu), fresh_seed()).unwrap();
    assert!(!report.kernels.is_empty());
    for k in &report.kernels {
        assert!(
            k.ok,
            "{} {} {:?}: rel_err {:e} > {:e} ({:?})",
            k.format, k.name, k.variant, k.rel_err, k.tol.rel_l2, k.error
        );
    }
});

test_backends!(gemv_at_group_boundaries, |backend| {
    let mut rng = SplitMix64::new(fresh_seed());
    for scheme in selftest::all_schemes() {
        // K one below, at, and one above a group multiple, and K shorter than one word; N odd
        // and not a multiple of the rows a GEMV workgroup computes. (N stays large enough that
        // the relative L2 error is not the error of one near-zero dot product.)
        for &k in &[127usize, 128, 129, 1, 7] {
            for &n in &[17usize, 33] {
                let case = make_case(&mut rng, scheme, 1, n, k, 0).unwrap();
                for v in variants(backend) {
                    let err = rel_l2(&run_on(backend, &case, v), &case.reference);
                    assert!(tol(backend, v).accepts(err), "{} n={n} k={k} {}: {err:e}", scheme.label(), v.name());
                }
            }
        }
    }
});

test_backends!(gemm_with_many_rows_and_lorc, |backend| {
    let mut rng = SplitMix64::new(fresh_seed());
    for scheme in
        [Scheme::Q4 { group: 64, symmetric: false }, Scheme::Fp4 { group: 32, scale: kestrel::tensor::Fp4Scale::E8M0 }]
    {
        let case = make_case(&mut rng, scheme, 37, 45, 300, 4).unwrap();
        for v in variants(backend) {
            let err = rel_l2(&run_on(backend, &case, v), &case.reference);
            assert!(tol(backend, v).accepts(err), "{} {}: {err:e}", scheme.label(), v.name());
        }
    }
});

#[test]
fn cpu_and_gpu_agree_on_a_large_gemv() {
    let mut rng = SplitMix64::new(fresh_seed());
    let case = make_case(&mut rng, Scheme::Q4 { group: 128, symmetric: false }, 1, 515, 1100, 0).unwrap();
    let c = selftest::run_cpu(&case).unwrap();
    for v in gpu::selftest_variants(gpu()) {
        let g = gpu::matmul_once(gpu(), &case.packed.view(), &case.x, 1, v).unwrap();
        let err = rel_l2(&g, &c.iter().map(|&v| v as f64).collect::<Vec<_>>());
        assert!(gpu::variant_tol(v).accepts(err), "{}: {err:e}", v.name());
    }
}

#[test]
fn kernels_reject_wrong_shapes() {
    let mut rng = SplitMix64::new(1);
    let case = make_case(&mut rng, Scheme::Q8, 1, 8, 16, 0).unwrap();
    let w = case.packed.view();
    let mut y = vec![0f32; 8];
    assert!(matches!(cpu::gemv(&w, &case.x[..15], &mut y), Err(kestrel::Error::ShapeMismatch { .. })));
    let mut y_short = vec![0f32; 7];
    assert!(matches!(cpu::gemv(&w, &case.x, &mut y_short), Err(kestrel::Error::ShapeMismatch { .. })));
    let gw = gpu::GpuMatrix::upload(gpu(), &w).unwrap();
    let plan = gpu::MatmulPlan::new(gpu(), &gw, 1, KernelVariant::PORTABLE).unwrap();
    assert!(matches!(plan.run(gpu(), &case.x[..15], &mut y), Err(kestrel::Error::ShapeMismatch { .. })));
}

#[test]
fn a_plan_runs_repeatedly_with_new_inputs() {
    let mut rng = SplitMix64::new(fresh_seed());
    let case = make_case(&mut rng, Scheme::Q4 { group: 32, symmetric: true }, 1, 33, 96, 2).unwrap();
    let w = case.packed.view();
    let gw = gpu::GpuMatrix::upload(gpu(), &w).unwrap();
    let plan = gpu::MatmulPlan::new(gpu(), &gw, 1, KernelVariant::PORTABLE).unwrap();
    let mut y = vec![0f32; 33];
    for _ in 0..3 {
        let x = rng.normal_vec(96);
        plan.run(gpu(), &x, &mut y).unwrap();
        let reference = kestrel::quant::reference_gemv(&w, &x);
        assert!(Tol::QUANT.accepts(rel_l2(&y, &reference)));
    }
}

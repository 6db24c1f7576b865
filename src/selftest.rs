//! `kestrel selftest`: every kernel and weight format on fresh random data against the float64
//! reference, on this machine. The first command to run after flashing a board.

use crate::backend::gpu::{self, GpuContext, KernelVariant};
use crate::backend::{cpu, BackendKind};
use crate::error::Result;
use crate::quant;
use crate::rng::SplitMix64;
use crate::tensor::{Fp4Scale, PackedMatrix, Scheme};
use crate::tol::{rel_l2, Tol};

/// One kernel run checked against the reference.
#[derive(Clone, Debug)]
pub struct KernelCheck {
    /// e.g. `gemv[n=33,k=200]` or `gemm[m=5,n=17,k=130]+lorc4`.
    pub name: String,
    pub backend: BackendKind,
    /// The GPU kernel variant (None on the CPU).
    pub variant: Option<KernelVariant>,
    pub format: String,
    pub rel_err: f64,
    pub tol: Tol,
    pub ok: bool,
    /// Set when the kernel failed to run at all.
    pub error: Option<String>,
}

/// The whole self-test result.
#[derive(Clone, Debug)]
pub struct SelftestReport {
    pub adapter: Option<String>,
    pub kernels: Vec<KernelCheck>,
    pub seed: u64,
}

impl SelftestReport {
    pub fn passed(&self) -> bool {
        !self.kernels.is_empty() && self.kernels.iter().all(|k| k.ok)
    }
}

/// Every weight format the kernels support, with the group and scale variants.
pub fn all_schemes() -> Vec<Scheme> {
    vec![
        Scheme::F32,
        Scheme::F16,
        Scheme::Q8,
        Scheme::Q4 { group: 32, symmetric: false },
        Scheme::Q4 { group: 64, symmetric: true },
        Scheme::Q4 { group: 128, symmetric: false },
        Scheme::Fp4 { group: 32, scale: Fp4Scale::E8M0 },
        Scheme::Fp4 { group: 64, scale: Fp4Scale::F16 },
        Scheme::Fp4 { group: 128, scale: Fp4Scale::F16 },
    ]
}

/// One test problem: weights, activations, and the reference output.
pub struct Case {
    pub label: String,
    pub packed: PackedMatrix,
    pub m: usize,
    pub x: Vec<f32>,
    pub reference: Vec<f64>,
}

/// A random [n, k] problem with m activation rows, optionally with LoRC, and its f64 reference.
/// Shapes are chosen so K is often not a multiple of the group and N is odd.
pub fn make_case(rng: &mut SplitMix64, scheme: Scheme, m: usize, n: usize, k: usize, lorc_rank: usize) -> Result<Case> {
    let w = rng.normal_vec(n * k);
    let mut packed = quant::quantize(&w, n, k, scheme)?;
    if lorc_rank > 0 {
        quant::add_lorc(&mut packed, &w, lorc_rank)?;
    }
    let x = rng.normal_vec(m * k);
    let reference = quant::reference_gemm(&packed.view(), &x, m);
    let kind = if m == 1 { "gemv".to_string() } else { format!("gemm[m={m}]") };
    let lorc = if lorc_rank > 0 { format!("+lorc{lorc_rank}") } else { String::new() };
    Ok(Case { label: format!("{kind}[n={n},k={k}]{lorc}"), packed, m, x, reference })
}

/// Shapes the self-test covers: (m, n, k, lorc rank), randomised around awkward sizes.
fn shapes(rng: &mut SplitMix64) -> Vec<(usize, usize, usize, usize)> {
    let odd = |rng: &mut SplitMix64, lo: u64, span: u64| (lo + rng.below(span)) as usize | 1;
    vec![
        (1, odd(rng, 9, 40), 8 + rng.below(300) as usize, 0),
        (1, odd(rng, 33, 64), 256 + rng.below(200) as usize, 3),
        (1 + rng.below(20) as usize, odd(rng, 5, 40), 30 + rng.below(200) as usize, 0),
        (2 + rng.below(8) as usize, odd(rng, 17, 40), 100 + rng.below(100) as usize, 2),
    ]
}

fn check(case: &Case, backend: BackendKind, variant: Option<KernelVariant>, out: Result<Vec<f32>>) -> KernelCheck {
    let tol = variant.map_or(Tol::QUANT, gpu::variant_tol);
    let (rel_err, error) = match out {
        Ok(y) => (rel_l2(&y, &case.reference), None),
        Err(e) => (f64::INFINITY, Some(e.to_string())),
    };
    KernelCheck {
        name: case.label.clone(),
        backend,
        variant,
        format: case.packed.scheme.label(),
        rel_err,
        tol,
        ok: error.is_none() && tol.accepts(rel_err),
        error,
    }
}

/// Runs the CPU kernel of a case.
pub fn run_cpu(case: &Case) -> Result<Vec<f32>> {
    let w = case.packed.view();
    let mut y = vec![0f32; case.m * w.n];
    if case.m == 1 {
        cpu::gemv(&w, &case.x, &mut y)?;
    } else {
        cpu::gemm(&w, &case.x, case.m, &mut y)?;
    }
    Ok(y)
}

/// Runs every format x shape on the chosen backends. `gpu` is the context to test, if any; a GPU
/// requested but not available is reported by the caller, not silently skipped.
pub fn run(backends: &[BackendKind], gpu: Option<&GpuContext>, seed: u64) -> Result<SelftestReport> {
    let mut rng = SplitMix64::new(seed);
    let mut kernels = Vec::new();
    for scheme in all_schemes() {
        for (m, n, k, lorc) in shapes(&mut rng) {
            let case = make_case(&mut rng, scheme, m, n, k, lorc)?;
            if backends.contains(&BackendKind::Cpu) {
                kernels.push(check(&case, BackendKind::Cpu, None, run_cpu(&case)));
            }
            if let (true, Some(ctx)) = (backends.contains(&BackendKind::Gpu), gpu) {
                for variant in gpu::selftest_variants(ctx) {
                    let out = gpu::matmul_once(ctx, &case.packed.view(), &case.x, case.m, variant);
                    kernels.push(check(&case, BackendKind::Gpu, Some(variant), out));
                }
            }
        }
    }
    Ok(SelftestReport { adapter: gpu.map(|g| g.adapter_name()), kernels, seed })
}

//! The GPU backend: WGSL kernels on wgpu (Vulkan first). [`GpuContext`] owns the device and the
//! pipeline cache; [`GpuMatrix`] holds weights uploaded straight from the file mapping;
//! [`MatmulPlan`] is one product with every resource made in advance.

mod context;
mod copy;
mod delta;
pub mod graph_ops;
mod matmul;
mod pool;
pub mod shaders;

pub use context::{GpuContext, GpuFeatures, GpuOptions, ALLOW_SOFTWARE_ENV};
pub use copy::CopyBench;
pub use delta::GpuDeltaConv2d;
pub use graph_ops::{GpuStep, GpuView};
pub use matmul::{matmul_once, GpuMatrix, MatmulParams, MatmulPlan};
pub use pool::{size_class, BufferPool, PooledBuffer};
pub use shaders::{Activation, KernelVariant, Reduction, GEMM_TILE, GEMV_ROW_CHOICES};

use crate::tol::Tol;

/// The reductions this device can run, portable first.
pub fn available_reductions(ctx: &GpuContext) -> Vec<Reduction> {
    let mut r = vec![Reduction::Shared];
    if ctx.features.subgroup {
        r.push(Reduction::Subgroup);
    }
    r
}

/// The activation storage types this device can run, f32 first.
pub fn available_activations(ctx: &GpuContext) -> Vec<Activation> {
    let mut a = vec![Activation::F32];
    if ctx.features.shader_f16 {
        a.push(Activation::F16);
    }
    a
}

/// The variant used when none is asked for: exact (f32) activations, the fastest reduction.
pub fn default_variant(ctx: &GpuContext) -> KernelVariant {
    let reduction = *available_reductions(ctx).last().unwrap_or(&Reduction::Shared);
    KernelVariant { reduction, activation: Activation::F32, rows: 4 }
}

/// Every variant the self-test holds to the reference on this device: each reduction x
/// activation type at 4 rows, and the other row counts on the default variant.
pub fn selftest_variants(ctx: &GpuContext) -> Vec<KernelVariant> {
    let mut v = Vec::new();
    for reduction in available_reductions(ctx) {
        for activation in available_activations(ctx) {
            v.push(KernelVariant { reduction, activation, rows: 4 });
        }
    }
    for rows in GEMV_ROW_CHOICES.into_iter().filter(|&r| r != 4) {
        v.push(KernelVariant { rows, ..default_variant(ctx) });
    }
    v
}

/// The tolerance a variant is held to: f16 activations round the inputs.
pub fn variant_tol(v: KernelVariant) -> Tol {
    match v.activation {
        Activation::F32 => Tol::QUANT,
        Activation::F16 => Tol::F16,
    }
}

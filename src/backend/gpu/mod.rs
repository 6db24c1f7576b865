//! The GPU backend: WGSL kernels on wgpu (Vulkan first). [`GpuContext`] owns the device and the
//! pipeline cache; [`GpuMatrix`] holds weights uploaded straight from the file mapping;
//! [`MatmulPlan`] is one product with every resource made in advance.

mod context;
mod copy;
mod matmul;
pub mod shaders;

pub use context::{GpuContext, GpuFeatures, GpuOptions, ALLOW_SOFTWARE_ENV};
pub use copy::CopyBench;
pub use matmul::{matmul_once, GpuMatrix, MatmulParams, MatmulPlan, GEMM_TILE, GEMV_ROWS};
pub use shaders::Reduction;

/// The reductions this device can run, portable first.
pub fn available_reductions(ctx: &GpuContext) -> Vec<Reduction> {
    let mut r = vec![Reduction::Shared];
    if ctx.features.subgroup {
        r.push(Reduction::Subgroup);
    }
    r
}

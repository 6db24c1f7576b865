//! The one table of WGSL sources, embedded at build time. A kernel module is assembled from the
//! shared prelude, a reduction variant and a format's file (WGSL has no includes).

use crate::tensor::Scheme;

pub const COMMON: &str = include_str!("../../../shaders/common.wgsl");
pub const REDUCE_SHARED: &str = include_str!("../../../shaders/reduce_shared.wgsl");
pub const REDUCE_SUBGROUP: &str = include_str!("../../../shaders/reduce_subgroup.wgsl");
pub const GEMM_TILE: &str = include_str!("../../../shaders/gemm_tile.wgsl");
pub const MATMUL_F32: &str = include_str!("../../../shaders/matmul_f32.wgsl");
pub const MATMUL_F16: &str = include_str!("../../../shaders/matmul_f16.wgsl");
pub const MATMUL_Q8: &str = include_str!("../../../shaders/matmul_q8.wgsl");
pub const MATMUL_Q4: &str = include_str!("../../../shaders/matmul_q4.wgsl");
pub const MATMUL_FP4: &str = include_str!("../../../shaders/matmul_fp4.wgsl");
pub const COPY: &str = include_str!("../../../shaders/copy.wgsl");

/// Every .wgsl file with its name, for validation and listing.
pub const ALL_FILES: [(&str, &str); 10] = [
    ("common.wgsl", COMMON),
    ("reduce_shared.wgsl", REDUCE_SHARED),
    ("reduce_subgroup.wgsl", REDUCE_SUBGROUP),
    ("gemm_tile.wgsl", GEMM_TILE),
    ("matmul_f32.wgsl", MATMUL_F32),
    ("matmul_f16.wgsl", MATMUL_F16),
    ("matmul_q8.wgsl", MATMUL_Q8),
    ("matmul_q4.wgsl", MATMUL_Q4),
    ("matmul_fp4.wgsl", MATMUL_FP4),
    ("copy.wgsl", COPY),
];

/// How the GEMV reduces partial sums across a workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// Workgroup memory only: runs everywhere.
    Shared,
    /// subgroupAdd, then workgroup memory: needs the SUBGROUP feature.
    Subgroup,
}

impl Reduction {
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Shared => "shared",
            Reduction::Subgroup => "subgroup",
        }
    }
}

/// The format-specific file for a scheme.
pub fn format_source(scheme: Scheme) -> (&'static str, &'static str) {
    match scheme {
        Scheme::F32 => ("matmul_f32", MATMUL_F32),
        Scheme::F16 => ("matmul_f16", MATMUL_F16),
        Scheme::Q8 => ("matmul_q8", MATMUL_Q8),
        Scheme::Q4 { .. } => ("matmul_q4", MATMUL_Q4),
        Scheme::Fp4 { .. } => ("matmul_fp4", MATMUL_FP4),
    }
}

/// The full source of a matmul module (entry points `gemv` and `gemm`).
pub fn matmul_module(scheme: Scheme, reduction: Reduction) -> String {
    let reduce = match reduction {
        Reduction::Shared => REDUCE_SHARED,
        Reduction::Subgroup => REDUCE_SUBGROUP,
    };
    [COMMON, reduce, format_source(scheme).1, GEMM_TILE].join("\n")
}

//! The one table of WGSL sources, embedded at build time. A kernel module is assembled from a
//! generated header (the variant's constants), the shared prelude, an activation reader, a
//! reduction, a format's file and the GEMM tile (WGSL has no includes).

use crate::tensor::Scheme;

pub const COMMON: &str = include_str!("../../../shaders/common.wgsl");
pub const ACT_F32: &str = include_str!("../../../shaders/act_f32.wgsl");
pub const ACT_F16: &str = include_str!("../../../shaders/act_f16.wgsl");
pub const REDUCE_SHARED: &str = include_str!("../../../shaders/reduce_shared.wgsl");
pub const REDUCE_SUBGROUP: &str = include_str!("../../../shaders/reduce_subgroup.wgsl");
pub const GEMM_TILE_SRC: &str = include_str!("../../../shaders/gemm_tile.wgsl");
pub const MATMUL_F32: &str = include_str!("../../../shaders/matmul_f32.wgsl");
pub const MATMUL_F16: &str = include_str!("../../../shaders/matmul_f16.wgsl");
pub const MATMUL_Q8: &str = include_str!("../../../shaders/matmul_q8.wgsl");
pub const MATMUL_Q4: &str = include_str!("../../../shaders/matmul_q4.wgsl");
pub const MATMUL_FP4: &str = include_str!("../../../shaders/matmul_fp4.wgsl");
pub const COPY: &str = include_str!("../../../shaders/copy.wgsl");
pub const DELTA: &str = include_str!("../../../shaders/delta.wgsl");
pub const OP_COMMON: &str = include_str!("../../../shaders/op_common.wgsl");
pub const OP_ELEMENTWISE: &str = include_str!("../../../shaders/op_elementwise.wgsl");
pub const OP_GATHER: &str = include_str!("../../../shaders/op_gather.wgsl");
pub const OP_POOL: &str = include_str!("../../../shaders/op_pool.wgsl");
pub const OP_RESIZE: &str = include_str!("../../../shaders/op_resize.wgsl");
pub const OP_ROWS: &str = include_str!("../../../shaders/op_rows.wgsl");
pub const OP_ATTENTION: &str = include_str!("../../../shaders/op_attention.wgsl");
pub const OP_GEMM: &str = include_str!("../../../shaders/op_gemm.wgsl");
pub const OP_CONV_F32: &str = include_str!("../../../shaders/op_conv_f32.wgsl");
pub const OP_CONV_PACKED: &str = include_str!("../../../shaders/op_conv_packed.wgsl");
pub const OP_CONV_F16: &str = include_str!("../../../shaders/op_conv_f16.wgsl");
pub const OP_CONV_Q8: &str = include_str!("../../../shaders/op_conv_q8.wgsl");
pub const OP_CONV_Q4: &str = include_str!("../../../shaders/op_conv_q4.wgsl");
pub const OP_CONV_FP4: &str = include_str!("../../../shaders/op_conv_fp4.wgsl");

/// Every .wgsl file with its name, for validation and listing.
pub const ALL_FILES: [(&str, &str); 27] = [
    ("common.wgsl", COMMON),
    ("act_f32.wgsl", ACT_F32),
    ("act_f16.wgsl", ACT_F16),
    ("reduce_shared.wgsl", REDUCE_SHARED),
    ("reduce_subgroup.wgsl", REDUCE_SUBGROUP),
    ("gemm_tile.wgsl", GEMM_TILE_SRC),
    ("matmul_f32.wgsl", MATMUL_F32),
    ("matmul_f16.wgsl", MATMUL_F16),
    ("matmul_q8.wgsl", MATMUL_Q8),
    ("matmul_q4.wgsl", MATMUL_Q4),
    ("matmul_fp4.wgsl", MATMUL_FP4),
    ("copy.wgsl", COPY),
    ("delta.wgsl", DELTA),
    ("op_common.wgsl", OP_COMMON),
    ("op_elementwise.wgsl", OP_ELEMENTWISE),
    ("op_gather.wgsl", OP_GATHER),
    ("op_pool.wgsl", OP_POOL),
    ("op_resize.wgsl", OP_RESIZE),
    ("op_rows.wgsl", OP_ROWS),
    ("op_attention.wgsl", OP_ATTENTION),
    ("op_gemm.wgsl", OP_GEMM),
    ("op_conv_f32.wgsl", OP_CONV_F32),
    ("op_conv_packed.wgsl", OP_CONV_PACKED),
    ("op_conv_f16.wgsl", OP_CONV_F16),
    ("op_conv_q8.wgsl", OP_CONV_Q8),
    ("op_conv_q4.wgsl", OP_CONV_Q4),
    ("op_conv_fp4.wgsl", OP_CONV_FP4),
];

/// Threads per GEMV workgroup and the GEMM tile edge (the `WG` and `TILE` constants).
pub const GEMV_THREADS: u32 = 256;
pub const GEMM_TILE: u32 = 16;
/// GEMV rows per workgroup the variants may use (`ROWS`).
pub const GEMV_ROW_CHOICES: [u32; 3] = [4, 8, 16];

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

/// How activations are stored on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    F32,
    /// Half the activation traffic; needs SHADER_F16. Inputs are rounded to f16.
    F16,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::F32 => "f32",
            Activation::F16 => "f16",
        }
    }

    /// Bytes per stored activation.
    pub fn bytes(self) -> usize {
        match self {
            Activation::F32 => 4,
            Activation::F16 => 2,
        }
    }
}

/// One compiled form of the matmul kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelVariant {
    pub reduction: Reduction,
    pub activation: Activation,
    /// GEMV output rows per workgroup (one of [`GEMV_ROW_CHOICES`]).
    pub rows: u32,
}

impl KernelVariant {
    /// The portable variant: runs on any WebGPU device.
    pub const PORTABLE: KernelVariant =
        KernelVariant { reduction: Reduction::Shared, activation: Activation::F32, rows: 4 };

    /// e.g. `subgroup-f16-r8`.
    pub fn name(self) -> String {
        format!("{}-{}-r{}", self.reduction.name(), self.activation.name(), self.rows)
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
pub fn matmul_module(scheme: Scheme, v: KernelVariant) -> String {
    let enable = if v.activation == Activation::F16 { "enable f16;\n" } else { "" };
    let header = format!(
        "{enable}// variant {}\nconst WG: u32 = {GEMV_THREADS}u;\nconst ROWS: u32 = {}u;\nconst TILE: u32 = {GEMM_TILE}u;\n",
        v.name(),
        v.rows
    );
    let act = match v.activation {
        Activation::F32 => ACT_F32,
        Activation::F16 => ACT_F16,
    };
    let reduce = match v.reduction {
        Reduction::Shared => REDUCE_SHARED,
        Reduction::Subgroup => REDUCE_SUBGROUP,
    };
    [header.as_str(), COMMON, act, reduce, format_source(scheme).1, GEMM_TILE_SRC].join("\n")
}

//! Backends: the CPU kernels are always built and are the fallback; the GPU kernels run WGSL on
//! wgpu. Both implement the same products on the same [`MatrixView`] layout.

pub mod cpu;
pub mod gpu;

use crate::error::{Error, Result};

/// Which backend runs the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Cpu,
    Gpu,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Gpu => "gpu",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            _ => Err(Error::InvalidArgument { reason: format!("unknown backend '{s}' (expected cpu or gpu)") }),
        }
    }
}

//! Running a graph. [`CpuExecutor`] prepares every step at load (shapes, parameters, buffer
//! locations from the memory plan) so a run only copies the inputs in and calls the kernels.

mod cpu;
pub mod delta;
mod gpu;
mod prepare;

pub use cpu::{kpak_weights, CpuExecutor};
pub use delta::{DeltaLayerStats, DeltaOptions, DeltaStats, RelativeThetas};
pub use gpu::GpuExecutor;

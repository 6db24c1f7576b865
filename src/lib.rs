//! kestrel: an embedded inference runtime for robots.
//!
//! - [`format`]: the `.kpak` container (memory-mapped, checked, zero-copy).
//! - [`tensor`]: weight formats and their byte layout, shared by every backend.
//! - [`quant`]: quantizers and the float64 reference dequantizer.
//! - [`import`]: readers for models made elsewhere (ONNX).
//! - [`backend`]: the CPU kernels (always built) and the WGSL kernels on wgpu.
//! - [`selftest`] and [`bench`]: the checks and measurements the CLI runs on a board.

pub mod backend;
pub mod bench;
pub mod board;
pub mod bundle;
pub mod control;
pub mod demo;
pub mod error;
pub mod exec;
pub mod faults;
pub mod ffi;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod graph;
pub mod import;
pub mod npy;
pub mod ops;
pub mod quant;
pub mod rng;
pub mod selftest;
pub mod tensor;
pub mod tol;
pub mod vision;

pub use error::{Error, Result};

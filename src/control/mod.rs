//! The controller loop: paired RGB + thermal frames in, robot actions out, on a fixed period,
//! with a watchdog that puts out the safe action whenever perception is late, broken or unsure.
//!
//! - [`action`]: the 7-D action, action chunks, the safe action.
//! - [`schedule`]: absolute deadlines, overruns, the skip policy.
//! - [`watchdog`]: fresh / stale / failed / abstained, and the gate on every action.
//! - [`conformal`]: prediction sets and abstention for detections (PAPERS.md section 11).
//! - [`track`]: the target tracker and the policy's feature vector.
//! - [`controller`]: perceive and decide for one period (the Rust and C APIs).
//! - [`source`]: cameras on their own thread, handing frames over wait-free rings.
//! - [`sim`]: the built-in world, its camera geometry and the scripted expert.
//! - [`run`]: the closed loop in that world (`kestrel loop --sim`).
//! - [`live`]: the loop on replayed or camera frames (`kestrel loop --frames`, `--v4l2`).
//! - [`stats`]: per-stage latency histograms.
//! - `v4l2`: a visible + thermal V4L2 camera pair (feature `v4l2`, Linux).

pub mod action;
pub mod conformal;
pub mod controller;
pub mod live;
pub mod run;
pub mod schedule;
pub mod sim;
pub mod source;
pub mod stats;
pub mod track;
// The camera needs the feature on Linux; its pixel conversions are also built for tests, so CI,
// which has no camera, checks them.
#[cfg(any(test, all(feature = "v4l2", target_os = "linux")))]
pub mod v4l2;
pub mod watchdog;

pub use action::{Action, SafeAction};
pub use controller::{Controller, ControllerOptions, Decision, FrameFault, FramePair, Policy};
pub use run::{run_sim, LoopOptions, LoopReport, Recording};
pub use track::RobotState;

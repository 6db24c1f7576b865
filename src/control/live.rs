//! The loop on frames from outside: a folder of pairs replayed (`kestrel loop --frames DIR`) or
//! two cameras (`--v4l2 VISIBLE,THERMAL`, behind the `v4l2` feature).
//!
//! The cycle is the simulator's read, perceive, decide, act, without a world: there is nobody
//! to score, so the report has no episodes, and the robot's state is what was commanded last
//! (dead reckoning, the best a loop without odometry can do). Each decision goes to a sink (the
//! CLI writes them as CSV); the robot-side caller of the library uses [`super::Controller`]
//! directly instead.
//!
//! A source that stops answering (a camera unplugged, a folder deleted under it) gives missing
//! frames and so the safe action, never a hang: even the as-fast-as-possible mode waits for a
//! frame only up to [`FAST_READ_TIMEOUT`].

use std::time::{Duration, Instant};

use crate::error::Result;

use super::action::dim;
use super::controller::{Controller, Decision, FramePair};
use super::run::LoopReport;
use super::schedule::{Schedule, SkipPolicy};
use super::source::{Camera, CameraLink, Request};
use super::stats::Stage;
use super::track::RobotState;
use super::watchdog::Unsafe;

/// Longest a fast (not real-time) cycle waits for the source.
pub const FAST_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// How to run a loop on external frames.
#[derive(Clone, Copy, Debug)]
pub struct LiveOptions {
    pub rate_hz: f64,
    /// Most cycles (a replayed folder may end first).
    pub cycles: u64,
    /// Keep the wall clock (cameras); otherwise as fast as frames come (replays, tests).
    pub realtime: bool,
}

/// Runs `ctl` on `camera` (frames of about `width` x `height`; buffers regrow to other sizes),
/// handing every decision to `sink` with its cycle number.
pub fn run_camera(
    ctl: &mut Controller,
    camera: impl Camera,
    (width, height): (usize, usize),
    opts: &LiveOptions,
    sink: &mut dyn FnMut(u64, &Decision),
) -> Result<LoopReport> {
    let period = Duration::from_secs_f64(1.0 / opts.rate_hz);
    let dt = period.as_secs_f32();
    let mut link = CameraLink::spawn(camera, width, height)?;
    let mut schedule = Schedule::new(period, Instant::now(), SkipPolicy::Skip);
    let mut report = LoopReport::default();
    let mut state = RobotState::default();
    ctl.reset();
    // Cycle n reads the answer to request n + 1 (request 1 goes out before the first cycle).
    link.request(Request { seq: 1, ..Default::default() });
    for cycle in 0..opts.cycles {
        let seq = cycle + 1;
        if link.ended() {
            break;
        }
        let start = if opts.realtime { schedule.wait() } else { Instant::now() };
        let deadline = start + if opts.realtime { period / 2 } else { FAST_READ_TIMEOUT };
        let frame = link.read(seq, Some(deadline));
        let t_read = Instant::now();
        let pair = frame.map(|c| FramePair { rgb: &c.rgb, ir: &c.ir, rgb_time: c.rgb_time, ir_time: c.ir_time });
        // A replay's frames are as fresh as the cycle that asked for them.
        let now = if opts.realtime { t_read } else { frame.map_or(t_read, |c| c.rgb_time.max(c.ir_time)) };
        ctl.perceive(pair, now);
        let t_perceive = Instant::now();
        let now = if opts.realtime { t_perceive } else { now };
        let decision = ctl.decide(&state, None, now, dt);
        let t_decide = Instant::now();
        sink(cycle, &decision);
        let a = &decision.action.0;
        state = RobotState { speed: a[dim::DX], turn: a[dim::DYAW], gripper: a[dim::GRIPPER] };
        link.request(Request { seq: seq + 1, ..Default::default() });
        let end = Instant::now();
        report.cycles += 1;
        report.abstentions += (decision.unsafe_reason == Some(Unsafe::Abstained)) as u64;
        let lat = &mut report.latency;
        lat.record(Stage::Read, t_read - start);
        lat.record(Stage::Perceive, t_perceive - t_read);
        lat.record(Stage::Decide, t_decide - t_perceive);
        lat.record(Stage::Act, end - t_decide);
        lat.record(Stage::Total, end - start);
        if opts.realtime && !schedule.finish(start, end) {
            report.deadline_misses += 1;
        }
    }
    report.skipped_periods = schedule.skipped;
    report.safe_by_reason = ctl.watchdog.counts;
    report.safe_actions = ctl.watchdog.total();
    report.faults = ctl.faults;
    report.detector_errors = ctl.detector_errors;
    report.camera_errors = link.errors();
    report.backend_switches = ctl.backend_switches;
    Ok(report)
}

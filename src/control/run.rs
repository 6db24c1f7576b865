//! The closed loop in the built-in world: `kestrel loop --sim`.
//!
//! Each cycle: **read** the newest camera pair (rendered on the camera thread from the world
//! as the last cycle left it), **perceive** (detector + conformal verdicts), **decide**
//! (tracker, policy, watchdog), **act** (the world moves one period under the action, and the
//! camera is asked for the next view). Stages are timed separately into HDR histograms; a
//! cycle that ends past its deadline is a deadline miss, and the schedule skips the periods it
//! ran over. In `realtime` mode the loop keeps the wall clock (sleeping to absolute deadlines,
//! waiting for a frame only until half the period); otherwise it runs as fast as it can and
//! waits for every frame (for recording demonstrations and measuring success rates quickly).

use std::time::{Duration, Instant};

use crate::error::Result;

use super::action::dim;
use super::controller::{Controller, FramePair, Policy};
use super::schedule::{Schedule, SkipPolicy};
use super::sim::{Outcome, SimOptions, World};
use super::source::{CameraLink, Request, SimCamera};
use super::stats::{Stage, StageLatency};
use super::track::{RobotState, FEATURES};
use super::watchdog::Unsafe;

/// How to run the loop.
#[derive(Clone, Copy, Debug)]
pub struct LoopOptions {
    pub rate_hz: f64,
    /// Cycles to run (the last episode may be cut short and is then not counted).
    pub cycles: u64,
    pub realtime: bool,
    /// The scripted expert drives (privileged: it reads the world) instead of the policy.
    pub expert: bool,
    pub sim: SimOptions,
}

/// Demonstrations: the policy's input and the expert's action, per cycle, with the episode.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub features: Vec<f32>,
    pub actions: Vec<f32>,
    pub episodes: Vec<i32>,
}

impl Recording {
    /// Room for `cycles` rows, so recording does not allocate inside the loop either.
    pub fn with_capacity(cycles: usize) -> Recording {
        Recording {
            features: Vec::with_capacity(cycles * FEATURES),
            actions: Vec::with_capacity(cycles * 7),
            episodes: Vec::with_capacity(cycles),
        }
    }

    pub fn rows(&self) -> usize {
        self.episodes.len()
    }
}

/// What a run did.
#[derive(Default)]
pub struct LoopReport {
    pub cycles: u64,
    pub episodes: u64,
    pub successes: u64,
    pub collisions: u64,
    pub timeouts: u64,
    /// Cycles whose perception abstained (they got the safe action).
    pub abstentions: u64,
    pub safe_actions: u64,
    pub safe_by_reason: [u64; 4],
    pub deadline_misses: u64,
    pub skipped_periods: u64,
    /// Frame faults by kind (`FrameFault` order) and detector errors.
    pub faults: [u64; 5],
    pub detector_errors: u64,
    /// Errors the camera thread reported (the frames they cost count as missing).
    pub camera_errors: u64,
    /// Times perception moved from a faulted GPU to the CPU.
    pub backend_switches: u64,
    pub latency: StageLatency,
    /// Mean absolute difference between the action sent and the expert's (dx, dyaw), when a
    /// policy drove.
    pub expert_gap: [f64; 2],
}

impl LoopReport {
    pub fn success_rate(&self) -> f64 {
        self.successes as f64 / self.episodes.max(1) as f64
    }
}

/// Runs the closed loop for `opts.cycles` cycles.
pub fn run_sim(ctl: &mut Controller, opts: &LoopOptions, mut record: Option<&mut Recording>) -> Result<LoopReport> {
    let mut sim = SimLoop::new(ctl, opts)?;
    for _ in 0..opts.cycles {
        sim.cycle(ctl, record.as_deref_mut());
    }
    Ok(sim.finish(ctl))
}

/// The closed loop's state between cycles: the world, the camera thread, the schedule and
/// the running report. Everything is made here; [`SimLoop::cycle`] allocates nothing once the
/// first frames have grown the detector's buffers.
pub struct SimLoop {
    opts: LoopOptions,
    camera: CameraLink,
    period: Duration,
    dt: f32,
    sim: SimOptions,
    world: World,
    episode: u64,
    seq: u64,
    schedule: Schedule,
    gap: [f64; 2],
    uses_expert: bool,
    t0: Instant,
    pub report: LoopReport,
    /// The same stage latencies as the report's, for the caller to read and reset per window
    /// (a soak run's stability over hours).
    pub window: StageLatency,
}

impl SimLoop {
    pub fn new(ctl: &mut Controller, opts: &LoopOptions) -> Result<SimLoop> {
        let (w, h) = (opts.sim.width, opts.sim.height);
        let camera = CameraLink::spawn(SimCamera::new(w, h), w, h)?;
        let period = Duration::from_secs_f64(1.0 / opts.rate_hz);
        let mut sim = opts.sim;
        sim.dt = period.as_secs_f32();
        let world = World::new(sim, 0);
        ctl.reset();
        let mut l = SimLoop {
            opts: *opts,
            camera,
            period,
            dt: sim.dt,
            sim,
            world,
            episode: 0,
            seq: 1,
            schedule: Schedule::new(period, Instant::now(), SkipPolicy::Skip),
            gap: [0.0; 2],
            uses_expert: opts.expert || matches!(ctl.policy, Policy::External),
            t0: Instant::now(),
            report: LoopReport::default(),
            window: StageLatency::default(),
        };
        l.t0 = l.schedule.next_start();
        l.request();
        Ok(l)
    }

    /// Asks the camera for the view of the world as it is now.
    fn request(&mut self) {
        let w = &mut self.world;
        let mut r = Request {
            seq: self.seq,
            pan: w.pan(),
            condition: w.condition,
            look_seed: w.look_seed,
            ..Default::default()
        };
        for o in w.view() {
            let _ = r.objects.push(*o);
        }
        self.camera.request(r);
    }

    /// One control cycle: read, perceive, decide, act.
    pub fn cycle(&mut self, ctl: &mut Controller, record: Option<&mut Recording>) {
        let realtime = self.opts.realtime;
        let start = if realtime { self.schedule.wait() } else { Instant::now() };
        // Read: the answer to the last request, waiting at most half a period in real time.
        let deadline = realtime.then(|| start + self.period / 2);
        let frame = self.camera.read(self.seq, deadline);
        let t_read = Instant::now();
        let pair = frame.map(|c| FramePair { rgb: &c.rgb, ir: &c.ir, rgb_time: c.rgb_time, ir_time: c.ir_time });
        // Fast mode does not keep the wall clock: a frame is as fresh as the cycle it answers.
        let captured = frame.map_or(t_read, |c| c.rgb_time);
        ctl.perceive(pair, if realtime { t_read } else { captured });
        let t_perceive = Instant::now();
        let w = &self.world;
        let state = RobotState { speed: w.robot.speed, turn: w.robot.turn, gripper: w.robot.gripper };
        let expert = w.expert();
        let now = if realtime { t_perceive } else { captured };
        let decision = ctl.decide(&state, self.uses_expert.then_some(expert), now, self.dt);
        let t_decide = Instant::now();
        if let Some(rec) = record {
            rec.features.extend_from_slice(ctl.features());
            rec.actions.extend_from_slice(&expert.0);
            rec.episodes.push(self.episode as i32);
        }
        if !self.uses_expert {
            self.gap[0] += (decision.action.0[dim::DX] - expert.0[dim::DX]).abs() as f64;
            self.gap[1] += (decision.action.0[dim::DYAW] - expert.0[dim::DYAW]).abs() as f64;
        }
        // Act: the world moves; the camera is asked for the view the next cycle will read.
        self.world.step(&decision.action);
        let report = &mut self.report;
        if self.world.outcome != Outcome::Running {
            report.episodes += 1;
            match self.world.outcome {
                Outcome::Success => report.successes += 1,
                Outcome::Collision => report.collisions += 1,
                _ => report.timeouts += 1,
            }
            self.episode += 1;
            self.world = World::new(self.sim, self.episode);
            ctl.reset();
        }
        self.seq += 1;
        self.request();
        let end = Instant::now();
        let report = &mut self.report;
        report.cycles += 1;
        report.abstentions += (decision.unsafe_reason == Some(Unsafe::Abstained)) as u64;
        for lat in [&mut report.latency, &mut self.window] {
            lat.record(Stage::Read, t_read - start);
            lat.record(Stage::Perceive, t_perceive - t_read);
            lat.record(Stage::Decide, t_decide - t_perceive);
            lat.record(Stage::Act, end - t_decide);
            lat.record(Stage::Total, end - start);
        }
        if realtime && !self.schedule.finish(start, end) {
            report.deadline_misses += 1;
        }
    }

    /// Where the wall clock is against the loop's grid, in milliseconds: now minus the first
    /// start plus one period per cycle run or skipped (the next cycle's planned start). With
    /// absolute deadlines it stays within (-period, 0] between cycles however long the loop
    /// runs; a loop that slept a period after its work would fall behind by the work's time
    /// every cycle, and this would grow without bound. Real time only.
    pub fn drift_ms(&self) -> f64 {
        let periods = (self.report.cycles + self.schedule.skipped) as u32;
        let planned = self.t0 + self.period * periods;
        let now = Instant::now();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        ms(now.saturating_duration_since(planned)) - ms(planned.saturating_duration_since(now))
    }

    /// Cycles run so far.
    pub fn cycles(&self) -> u64 {
        self.report.cycles
    }

    /// Closes the run: the counters the controller kept go into the report.
    pub fn finish(mut self, ctl: &Controller) -> LoopReport {
        let mut report = std::mem::take(&mut self.report);
        report.skipped_periods = self.schedule.skipped;
        report.safe_by_reason = ctl.watchdog.counts;
        report.safe_actions = ctl.watchdog.total();
        report.faults = ctl.faults;
        report.detector_errors = ctl.detector_errors;
        report.camera_errors = self.camera.errors();
        report.backend_switches = ctl.backend_switches;
        let n = report.cycles.max(1) as f64;
        report.expert_gap = [self.gap[0] / n, self.gap[1] / n];
        report
    }
}

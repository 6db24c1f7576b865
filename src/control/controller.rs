//! The controller: one control period's perceive and decide stages, for robot code that keeps
//! its own clock (the Rust and C APIs), and the pieces `run` strings into a fixed-rate loop.
//!
//! Perceive: the frame pair is checked (present, fresh, one size, captured together), the
//! detector runs, its output is checked for non-finite values, and each detection gets its
//! conformal set and abstention verdict. Decide: the tracker finds the target, the policy maps
//! the features to an action, and the watchdog lets it through or puts out the safe action.
//!
//! After warm-up (the first frames grow the detector's buffers to the stream's sizes), a period
//! allocates nothing: detections live in fixed-capacity vectors, the policy network runs on a
//! CPU executor planned at load, and every buffer is made here.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::exec::CpuExecutor;
use crate::format::{Kpak, Verify};
use crate::vision::detect::Detection;
use crate::vision::detector::{Detector, Device};
use crate::vision::image::Image;

use super::action::{Action, SafeAction, ACTION_DIM};
use super::conformal::{Conformal, Judgement};
use super::track::{features, RobotState, Tracker, FEATURES};
use super::watchdog::{Perception, Unsafe, Watchdog};

/// Most detections a period keeps (best first).
pub const MAX_DETECTIONS: usize = 64;
/// Most classes a detector may have for the conformal sets.
const MAX_CLASSES: usize = 32;
/// After a CPU fallback failed (the model file unreadable, say), the wait before the next try.
pub const FALLBACK_RETRY: Duration = Duration::from_secs(1);

/// Moving perception off a faulted GPU.
enum Fallback {
    /// Perception runs where it was loaded.
    Idle,
    /// The CPU detector is being loaded on its own thread; periods fail safe meanwhile.
    Loading(std::thread::JoinHandle<Result<Detector>>),
    /// The last load failed; the next starts at this time.
    RetryAt(Instant),
}

/// A frame pair as the loop receives it: capture times on one clock.
#[derive(Clone, Copy, Debug)]
pub struct FramePair<'a> {
    pub rgb: &'a Image,
    pub ir: &'a Image,
    pub rgb_time: Instant,
    pub ir_time: Instant,
}

/// What was wrong with a period's frames (no allocation: the loop counts these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameFault {
    /// No frame arrived this period.
    Missing,
    /// The newest frame is older than the watchdog's max age.
    Late,
    /// The visible and thermal frames have different sizes, or one is empty.
    SizeMismatch,
    /// The two frames were captured too far apart to be one pair.
    Skew,
    /// The pixels (or the network's output) are not finite numbers.
    NonFinite,
}

impl FrameFault {
    pub fn name(self) -> &'static str {
        match self {
            FrameFault::Missing => "missing",
            FrameFault::Late => "late",
            FrameFault::SizeMismatch => "size_mismatch",
            FrameFault::Skew => "skew",
            FrameFault::NonFinite => "non_finite",
        }
    }
}

/// How the controller behaves.
#[derive(Clone, Copy, Debug)]
pub struct ControllerOptions {
    /// Control period.
    pub period: Duration,
    /// Perception older than this makes a period stale.
    pub max_age: Duration,
    /// Most time between the visible and thermal captures of one pair.
    pub max_skew: Duration,
    pub safe: SafeAction,
    /// Abstain when a detection whose foot is below this fraction of the frame height (close
    /// to the robot) is unsure, as well as when the target is.
    pub near_bottom: f32,
    /// On a GPU fault (a lost device, exhausted memory, a rejected submission), load the model
    /// again on the CPU, on a background thread, while the periods in between fail safe.
    pub cpu_fallback: bool,
}

impl ControllerOptions {
    pub fn at_rate(hz: f64) -> ControllerOptions {
        let period = Duration::from_secs_f64(1.0 / hz);
        ControllerOptions {
            period,
            max_age: period * 3,
            max_skew: period / 2,
            safe: SafeAction::Stop,
            near_bottom: 0.8,
            cpu_fallback: true,
        }
    }
}

/// Where the action comes from.
pub enum Policy {
    /// A packed network: [1, FEATURES] in, [1, 7] out, on the CPU (it is tiny; the GPU's
    /// submit latency would cost more than its math).
    Network(Box<CpuExecutor>),
    /// The caller proposes the action each period (a scripted controller, a teleoperator);
    /// the controller still gates it through the watchdog.
    External,
}

impl Policy {
    /// Loads a packed policy network and checks its input and output shapes.
    pub fn open(path: &Path) -> Result<Policy> {
        let pak = Kpak::open(path, Verify::Full)?;
        let g = pak
            .graph()
            .ok_or_else(|| Error::Unsupported { what: format!("{} has no graph to run", path.display()) })?;
        let bad = |what: String| Error::Unsupported { what: format!("{} as a policy: {what}", path.display()) };
        let shapes: Vec<&[usize]> = g.inputs.iter().map(|&v| g.values[v].shape.as_slice()).collect();
        if shapes != [[1, FEATURES].as_slice()] {
            return Err(bad(format!("inputs {shapes:?}, need one [1, {FEATURES}]")));
        }
        let out: Vec<&[usize]> = g.outputs.iter().map(|&v| g.values[v].shape.as_slice()).collect();
        if out.first() != Some(&[1, ACTION_DIM].as_slice()) {
            return Err(bad(format!("outputs {out:?}, need [1, {ACTION_DIM}] first")));
        }
        let exec = CpuExecutor::new(g, &|id| crate::exec::kpak_weights(&pak, g, id))?;
        Ok(Policy::Network(Box::new(exec)))
    }
}

/// One detection with its conformal verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Judged {
    pub detection: Detection,
    pub judgement: Judgement,
}

/// What a period decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// The action to send to the robot.
    pub action: Action,
    /// The policy's own proposal (equal to `action` unless the watchdog replaced it).
    pub proposed: Action,
    /// Why the safe action went out instead, if it did.
    pub unsafe_reason: Option<Unsafe>,
    pub target: Option<usize>,
}

/// Perception + decision for one robot, step by step.
pub struct Controller {
    pub detector: Detector,
    pub policy: Policy,
    pub conformal: Option<Conformal>,
    pub options: ControllerOptions,
    pub watchdog: Watchdog,
    tracker: Tracker,
    raw: Vec<Detection>,
    detections: heapless::Vec<Judged, MAX_DETECTIONS>,
    frame_size: (usize, usize),
    perception: Perception,
    fault: Option<FrameFault>,
    features: [f32; FEATURES],
    last_perceived: Option<Instant>,
    /// Frame faults seen, by kind (in [`FrameFault`] order), and detector errors.
    pub faults: [u64; 5],
    pub detector_errors: u64,
    fallback: Fallback,
    /// Times perception moved to the CPU after a GPU fault, and loads that failed.
    pub backend_switches: u64,
    pub fallback_failures: u64,
}

impl Controller {
    pub fn new(detector: Detector, policy: Policy, options: ControllerOptions) -> Result<Controller> {
        let conformal = Conformal::from_metadata(detector.metadata())?;
        if detector.classes().len() > MAX_CLASSES {
            return Err(Error::Unsupported {
                what: format!("{} classes: the conformal sets hold at most {MAX_CLASSES}", detector.classes().len()),
            });
        }
        Ok(Controller {
            raw: Vec::with_capacity(detector.anchors()),
            detector,
            policy,
            conformal,
            watchdog: Watchdog::new(options.max_age, options.safe),
            options,
            tracker: Tracker::default(),
            detections: heapless::Vec::new(),
            frame_size: (0, 0),
            perception: Perception::NoFrame,
            fault: None,
            features: [0.0; FEATURES],
            last_perceived: None,
            faults: [0; 5],
            detector_errors: 0,
            fallback: Fallback::Idle,
            backend_switches: 0,
            fallback_failures: 0,
        })
    }

    /// Starts over: a new episode, or the cameras restarted (the watchdog forgets the last
    /// good perception, the tracker its target).
    pub fn reset(&mut self) {
        self.tracker.reset();
        self.watchdog.reset();
        self.detections.clear();
        self.last_perceived = None;
        self.detector.reset_delta();
    }

    /// This period's detections with their verdicts (after [`Controller::perceive`]).
    pub fn detections(&self) -> &[Judged] {
        &self.detections
    }

    /// The fault of this period's frames, if any.
    pub fn fault(&self) -> Option<FrameFault> {
        self.fault
    }

    pub fn features(&self) -> &[f32; FEATURES] {
        &self.features
    }

    /// Records a fault a source found in this period's frames (a NaN pixel in a float frame, a
    /// camera that reported an error): the period fails safe.
    pub fn reject(&mut self, fault: FrameFault) -> Perception {
        self.refuse(fault)
    }

    fn refuse(&mut self, fault: FrameFault) -> Perception {
        self.faults[fault as usize] += 1;
        self.fault = Some(fault);
        self.detections.clear();
        self.perception = match fault {
            FrameFault::Missing | FrameFault::Late => Perception::NoFrame,
            _ => Perception::Failed,
        };
        self.perception
    }

    /// The perceive stage at `now`: `None` when no frame came this period.
    pub fn perceive(&mut self, frames: Option<FramePair<'_>>, now: Instant) -> Perception {
        self.fault = None;
        let Some(f) = frames else { return self.refuse(FrameFault::Missing) };
        let oldest = f.rgb_time.min(f.ir_time);
        if now.saturating_duration_since(oldest) > self.options.max_age {
            return self.refuse(FrameFault::Late);
        }
        if f.rgb_time.max(f.ir_time) - oldest > self.options.max_skew {
            return self.refuse(FrameFault::Skew);
        }
        let sized = |i: &Image| i.width > 0 && i.height > 0 && i.data.len() == i.width * i.height * i.channels;
        if !sized(f.rgb) || !sized(f.ir) || (f.rgb.width, f.rgb.height) != (f.ir.width, f.ir.height) {
            return self.refuse(FrameFault::SizeMismatch);
        }
        if self.perception_down(now) {
            return self.fail();
        }
        if let Err(e) = self.detector.detect_into(Some(f.rgb), Some(f.ir), &mut self.raw) {
            self.detector_errors += 1;
            if self.options.cpu_fallback && e.is_device_fault() && self.detector.gpu_context().is_some() {
                log::error!("GPU perception failed ({e}): loading the model on the CPU");
                self.start_fallback(now);
            } else {
                log::warn!("perception failed: {e}");
            }
            return self.fail();
        }
        if !self.detector.output_is_finite() {
            return self.refuse(FrameFault::NonFinite);
        }
        self.frame_size = (f.rgb.width, f.rgb.height);
        self.detections.clear();
        let mut probs = [0.0f32; MAX_CLASSES];
        let nc = self.detector.classes().len();
        for d in self.raw.iter().take(MAX_DETECTIONS) {
            let judgement = match &self.conformal {
                Some(c) => {
                    self.detector.class_probs(d, &mut probs[..nc]);
                    c.judge(&probs[..nc])
                }
                None => Judgement { set: 1 << d.class_id, abstain: false },
            };
            let _ = self.detections.push(Judged { detection: *d, judgement });
        }
        self.last_perceived = Some(now);
        self.perception = Perception::Fresh;
        self.perception
    }

    fn fail(&mut self) -> Perception {
        self.detections.clear();
        self.perception = Perception::Failed;
        self.perception
    }

    /// Whether the backend is out of service this period: a CPU fallback is loading, or waiting
    /// to be tried again. A finished load is swapped in here (the swap is the only heap work,
    /// once per fault).
    fn perception_down(&mut self, now: Instant) -> bool {
        match &self.fallback {
            Fallback::Idle => false,
            Fallback::Loading(h) if !h.is_finished() => true,
            Fallback::RetryAt(t) => {
                if now >= *t {
                    self.start_fallback(now);
                }
                true
            }
            Fallback::Loading(_) => {
                let Fallback::Loading(h) = std::mem::replace(&mut self.fallback, Fallback::Idle) else {
                    unreachable!("matched above")
                };
                let loaded = h
                    .join()
                    .unwrap_or_else(|_| Err(Error::Unsupported { what: "the CPU fallback's loader panicked".into() }));
                match loaded {
                    Ok(mut cpu) => {
                        cpu.options = self.detector.options;
                        self.raw = Vec::with_capacity(cpu.anchors());
                        self.detector = cpu;
                        self.backend_switches += 1;
                        log::warn!("perception moved to the CPU");
                        false
                    }
                    Err(e) => {
                        log::error!("CPU fallback failed: {e}; trying again in {FALLBACK_RETRY:?}");
                        self.fallback_failures += 1;
                        self.fallback = Fallback::RetryAt(now + FALLBACK_RETRY);
                        true
                    }
                }
            }
        }
    }

    fn start_fallback(&mut self, now: Instant) {
        let path = self.detector.source().to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("kestrel-fallback".into())
            .spawn(move || Detector::open(&path, Device::Cpu));
        self.fallback = match spawned {
            Ok(h) => Fallback::Loading(h),
            Err(e) => {
                log::error!("CPU fallback: no thread ({e})");
                self.fallback_failures += 1;
                Fallback::RetryAt(now + FALLBACK_RETRY)
            }
        };
    }

    /// Whether perception runs on the GPU now.
    pub fn on_gpu(&self) -> bool {
        self.detector.gpu_context().is_some()
    }

    /// The decide stage: tracks the target, runs the policy (or takes the `external` proposal
    /// for [`Policy::External`]) and gates the action through the watchdog.
    pub fn decide(&mut self, state: &RobotState, external: Option<Action>, now: Instant, dt: f32) -> Decision {
        let mut perception = self.perception;
        let mut target = None;
        let mut dets: heapless::Vec<Detection, MAX_DETECTIONS> = heapless::Vec::new();
        if perception == Perception::Fresh {
            for j in &self.detections {
                let _ = dets.push(j.detection);
            }
            let detections = &self.detections;
            let usable = |i: usize| !detections[i].judgement.abstain;
            target = self.tracker.update(&dets, usable, self.frame_size, dt);
            // Unsure about what matters: the target (or a person the tracker would have taken
            // for it), or anything close to the robot.
            let h = self.frame_size.1 as f32;
            let unsure = self.detections.iter().any(|j| {
                j.judgement.abstain
                    && (j.detection.box_xyxy[3] >= self.options.near_bottom * h
                        || (target.is_none() && j.detection.class_id == super::track::PERSON))
            });
            if unsure {
                perception = Perception::Abstained;
            }
            let (since, last) = (self.tracker.since_seen(), self.tracker.last_seen());
            features(state, since, last, &dets, usable, target, self.frame_size, &mut self.features);
        } else {
            // No new view: the tracker ages, the policy sees the last scene with the new state.
            self.tracker.update(&[], |_| false, self.frame_size, dt);
            self.features[0] = state.speed / 1.5;
            self.features[1] = state.turn / 1.5;
            self.features[2] = state.gripper;
            self.features[3] = (self.tracker.since_seen() / 2.0).min(1.0);
        }
        let proposed = match (&mut self.policy, external) {
            (Policy::Network(exec), _) => match exec.run(&[&self.features]) {
                Ok(()) => {
                    let mut a = Action::STOP;
                    a.0.copy_from_slice(&exec.output(0)[..ACTION_DIM]);
                    a
                }
                Err(e) => {
                    log::warn!("policy failed: {e}");
                    Action([f32::NAN; ACTION_DIM])
                }
            },
            (Policy::External, Some(a)) => a,
            // No proposal: nothing may move.
            (Policy::External, None) => Action([f32::NAN; ACTION_DIM]),
        };
        let verdict = self.watchdog.perceive(perception, now);
        let (action, unsafe_reason) = self.watchdog.gate(verdict, proposed);
        Decision { action, proposed, unsafe_reason, target }
    }

    /// Perceive then decide, for callers that keep their own clock.
    pub fn step(
        &mut self,
        frames: Option<FramePair<'_>>,
        state: &RobotState,
        external: Option<Action>,
        now: Instant,
    ) -> Decision {
        self.perceive(frames, now);
        let dt = self.options.period.as_secs_f32();
        self.decide(state, external, now, dt)
    }
}

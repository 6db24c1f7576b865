//! Resource faults in the loop (issue 7, item 3): a GPU that is lost mid-run, a model file that
//! is gone when the fallback needs it, a camera that disappears. Each gives the safe action
//! while it lasts, never a panic or a hang, and perception comes back where it can.
//!
//! The GPU tests run on whatever adapter wgpu finds (lavapipe in CI); the device is lost with
//! wgpu's `Device::destroy`, which is what a driver reset or an unplugged eGPU looks like to
//! the runtime: every later submission fails with a lost-device error.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kestrel::control::action::dim;
use kestrel::control::live::{run_camera, LiveOptions};
use kestrel::control::source::DirCamera;
use kestrel::control::watchdog::Unsafe;
use kestrel::control::{Action, Controller, ControllerOptions, Decision, FramePair, Policy, RobotState};
use kestrel::vision::detector::{Detector, Device};
use kestrel::vision::image::Image;
use kestrel::vision::synth::{self, CameraMotion, SynthOptions};

const RATE_HZ: f64 = 30.0;
/// Longest a lost GPU may keep perception down before the CPU detector takes over: loading the
/// model again on a background thread, in CI's debug-with-optimised-kestrel build on 2 cores
/// (about 0.3 s measured; the bound leaves room for a loaded machine).
const FALLBACK_BOUND: Duration = Duration::from_secs(10);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The visible-only detector: the quickest to build on lavapipe, and the loop is the same.
fn model() -> PathBuf {
    root().join("models/rgbir-rgb-only.kpak")
}

fn gpu_controller(model: &Path) -> Controller {
    let det = Detector::open(model, Device::Gpu { allow_software: true })
        .expect("GPU tests are mandatory: install mesa-vulkan-drivers");
    Controller::new(det, Policy::External, ControllerOptions::at_rate(RATE_HZ)).unwrap()
}

fn day_pair() -> (Image, Image) {
    let opts = SynthOptions { sequence: Some(30), camera: CameraMotion::Static, seed: 11, ..Default::default() };
    let f = synth::frame(&opts, 0);
    (f.rgb, f.ir)
}

const FORWARD: Action = Action([0.5, 0.0, 0.0, 0.0, 0.0, 0.2, 1.0]);

/// One period on a fresh pair captured now, paced at the loop's rate.
fn period(ctl: &mut Controller, rgb: &Image, ir: &Image) -> Decision {
    std::thread::sleep(Duration::from_secs_f64(1.0 / RATE_HZ));
    let now = Instant::now();
    let frames = FramePair { rgb, ir, rgb_time: now, ir_time: now };
    ctl.step(Some(frames), &RobotState::default(), Some(FORWARD), now)
}

fn is_stop(d: &Decision) -> bool {
    d.action.0[..dim::GRIPPER].iter().all(|&v| v == 0.0)
}

/// Periods until perception is back (`None` past `bound`), checking every one before that got
/// the safe action for a failed perception.
fn periods_until_back(ctl: &mut Controller, rgb: &Image, ir: &Image, bound: Duration) -> Option<(usize, Duration)> {
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < bound {
        let d = period(ctl, rgb, ir);
        n += 1;
        if d.unsafe_reason.is_none() {
            return Some((n, t0.elapsed()));
        }
        assert_eq!(d.unsafe_reason, Some(Unsafe::Failed), "period {n}: {d:?}");
        assert!(is_stop(&d), "period {n}: a failed perception must stop the robot: {d:?}");
    }
    None
}

#[test]
fn a_lost_gpu_moves_perception_to_the_cpu_within_a_bounded_time() {
    let mut ctl = gpu_controller(&model());
    let (rgb, ir) = day_pair();
    for _ in 0..3 {
        let d = period(&mut ctl, &rgb, &ir);
        assert_eq!(d.unsafe_reason, None, "a healthy GPU perceives");
        assert_eq!(d.action, FORWARD);
    }
    assert!(ctl.on_gpu());

    ctl.detector.gpu_context().unwrap().device.destroy();
    let (periods, took) =
        periods_until_back(&mut ctl, &rgb, &ir, FALLBACK_BOUND).expect("perception came back on the CPU in time");
    eprintln!("GPU lost: {periods} periods ({took:?}) of safe actions before the CPU took over");
    assert!(!ctl.on_gpu());
    assert_eq!(ctl.backend_switches, 1);
    assert!(ctl.detector_errors >= 1);

    // The CPU detector that took over sees what a CPU detector loaded from scratch sees.
    let mut reference = Detector::open(&model(), Device::Cpu).unwrap();
    let expected = reference.detect(Some(&rgb), Some(&ir)).unwrap();
    assert!(!expected.is_empty(), "the test frame has people in it");
    let got: Vec<_> = ctl.detections().iter().map(|j| j.detection).collect();
    assert_eq!(got, expected);
    // And the loop carries on normally.
    for _ in 0..3 {
        assert_eq!(period(&mut ctl, &rgb, &ir).unsafe_reason, None);
    }
}

#[test]
fn a_model_file_gone_at_fallback_keeps_the_safe_action_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("detector.kpak");
    std::fs::copy(model(), &copy).unwrap();
    let mut ctl = gpu_controller(&copy);
    let (rgb, ir) = day_pair();
    assert_eq!(period(&mut ctl, &rgb, &ir).unsafe_reason, None);

    // The file is deleted (an SD card unmounted, an update gone wrong), then the GPU is lost.
    std::fs::remove_file(&copy).unwrap();
    ctl.detector.gpu_context().unwrap().device.destroy();
    let outage = kestrel::control::controller::FALLBACK_RETRY * 2;
    assert!(periods_until_back(&mut ctl, &rgb, &ir, outage).is_none(), "no model, no perception");
    assert!(ctl.fallback_failures >= 1, "the failed load is counted");
    assert!(ctl.on_gpu(), "nothing was swapped in");

    // The file comes back: the next retry loads it.
    std::fs::copy(model(), &copy).unwrap();
    let back = periods_until_back(&mut ctl, &rgb, &ir, FALLBACK_BOUND);
    assert!(back.is_some(), "perception came back once the model was readable again");
    assert!(!ctl.on_gpu());
}

/// A folder replay whose files vanish mid-run (the same path as a V4L2 camera unplugged: the
/// camera thread's captures fail): missing frames, then stale perception and the safe action.
#[test]
fn a_camera_that_disappears_gives_the_safe_action_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions { seed: 4, ..Default::default() };
    kestrel::vision::dataset::write_synth(dir.path(), 6, &opts, &|_| {}).unwrap();
    let det = Detector::open(&root().join("models/rgbir-fused.kpak"), Device::Cpu).unwrap();
    let policy = Policy::open(&root().join("models/policy.kpak")).unwrap();
    let mut ctl = Controller::new(det, policy, ControllerOptions::at_rate(RATE_HZ)).unwrap();
    let camera = DirCamera::open(dir.path(), true).unwrap();
    let cycles = 60;
    let mut decisions = Vec::with_capacity(cycles);
    let gone_at = 10;
    let mut sink = |cycle: u64, d: &Decision| {
        decisions.push(*d);
        if cycle == gone_at {
            for sub in ["visible", "infrared"] {
                std::fs::remove_dir_all(dir.path().join(sub)).unwrap();
            }
        }
    };
    let opts = LiveOptions { rate_hz: RATE_HZ, cycles: cycles as u64, realtime: true };
    let t0 = Instant::now();
    let report = run_camera(&mut ctl, camera, (320, 240), &opts, &mut sink).unwrap();
    let took = t0.elapsed();
    assert_eq!(report.cycles, cycles as u64, "the loop ran every period");
    assert_eq!(decisions.len(), cycles);
    // Real time at 30 Hz: 2 s, plus the detector's overruns on a slow machine; never a hang.
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(report.camera_errors > 0, "the failed captures are counted");
    assert!(report.faults[kestrel::control::FrameFault::Missing as usize] > 0);
    // Once the last good perception is older than the watchdog's max age (3 periods), every
    // period is stale and stops the robot. (Frames already in flight may arrive first.)
    let tail = &decisions[gone_at as usize + 12..];
    assert!(!tail.is_empty());
    for d in tail {
        assert_eq!(d.unsafe_reason, Some(Unsafe::Stale), "{d:?}");
        assert!(is_stop(d), "{d:?}");
    }
    assert!(decisions[..gone_at as usize].iter().any(|d| d.unsafe_reason.is_none()), "it ran before the loss");
}

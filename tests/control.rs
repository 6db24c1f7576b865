//! The controller on bad input: every fault gets the safe action with its reason, never a
//! panic; good frames get the policy's action. Runs the shipped fused detector and policy on
//! frames from the built-in synthetic scenes.

use std::path::Path;
use std::time::{Duration, Instant};

use kestrel::control::conformal::Conformal;
use kestrel::control::watchdog::Unsafe;
use kestrel::control::{Action, Controller, ControllerOptions, FrameFault, FramePair, Policy, RobotState, SafeAction};
use kestrel::vision::detector::{Detector, Device};
use kestrel::vision::image::Image;
use kestrel::vision::synth::{self, CameraMotion, SynthOptions};

fn controller(policy: Policy) -> Controller {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let det = Detector::open(&root.join("models/rgbir-fused.kpak"), Device::Cpu).unwrap();
    Controller::new(det, policy, ControllerOptions::at_rate(30.0)).unwrap()
}

fn network() -> Policy {
    Policy::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/policy.kpak")).unwrap()
}

/// A clear daytime pair with people in it.
fn day_pair() -> (Image, Image) {
    let opts = SynthOptions { sequence: Some(30), camera: CameraMotion::Static, seed: 7, ..Default::default() };
    let f = synth::frame(&opts, 0);
    (f.rgb, f.ir)
}

fn pair<'a>(rgb: &'a Image, ir: &'a Image, t: Instant) -> Option<FramePair<'a>> {
    Some(FramePair { rgb, ir, rgb_time: t, ir_time: t })
}

#[test]
fn each_frame_fault_gets_the_safe_action_with_its_reason() {
    let mut ctl = controller(network());
    let (rgb, ir) = day_pair();
    let s = RobotState::default();
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let dt = 1.0 / 30.0;
    // Good frames: the policy's action goes out.
    ctl.perceive(pair(&rgb, &ir, t0), t0);
    assert!(ctl.fault().is_none());
    assert!(!ctl.detections().is_empty(), "the day frame has detections");
    let d = ctl.decide(&s, None, t0, dt);
    assert!(d.action.is_finite());
    assert_ne!(d.unsafe_reason, Some(Unsafe::Stale));
    assert_ne!(d.unsafe_reason, Some(Unsafe::Failed));
    // A dropped frame rides on the last perception while it is young ...
    ctl.perceive(None, t0 + ms(40));
    assert_eq!(ctl.fault(), Some(FrameFault::Missing));
    let d = ctl.decide(&s, None, t0 + ms(40), dt);
    assert_ne!(d.unsafe_reason, Some(Unsafe::Stale));
    // ... and is stale past max_age (3 periods): stop.
    let late = t0 + ms(150);
    ctl.perceive(None, late);
    let d = ctl.decide(&s, None, late, dt);
    assert_eq!(d.unsafe_reason, Some(Unsafe::Stale));
    assert_eq!(d.action.0[..6], [0.0; 6], "stop: zero velocity on every axis");
    // A frame captured long ago is late: stale, not trusted.
    let now = t0 + ms(400);
    ctl.perceive(pair(&rgb, &ir, t0 + ms(100)), now);
    assert_eq!(ctl.fault(), Some(FrameFault::Late));
    assert_eq!(ctl.decide(&s, None, now, dt).unsafe_reason, Some(Unsafe::Stale));
    // Visible and thermal frames captured 40 ms apart are not a pair (max skew half a period).
    let skewed = FramePair { rgb: &rgb, ir: &ir, rgb_time: now, ir_time: now - ms(40) };
    ctl.perceive(Some(skewed), now);
    assert_eq!(ctl.fault(), Some(FrameFault::Skew));
    assert_eq!(ctl.decide(&s, None, now, dt).unsafe_reason, Some(Unsafe::Failed));
    // Different sizes, and an empty frame.
    let small = Image::new(160, 120, 1);
    ctl.perceive(pair(&rgb, &small, now), now);
    assert_eq!(ctl.fault(), Some(FrameFault::SizeMismatch));
    assert_eq!(ctl.decide(&s, None, now, dt).unsafe_reason, Some(Unsafe::Failed));
    let empty = Image::default();
    ctl.perceive(pair(&empty, &empty, now), now);
    assert_eq!(ctl.fault(), Some(FrameFault::SizeMismatch));
    // A pixel buffer shorter than its size says.
    let mut short = ir.clone();
    short.data.truncate(100);
    ctl.perceive(pair(&rgb, &short, now), now);
    assert_eq!(ctl.fault(), Some(FrameFault::SizeMismatch));
    // NaN in a float frame (found by the source, as the C ABI does).
    ctl.reject(FrameFault::NonFinite);
    assert_eq!(ctl.decide(&s, None, now, dt).unsafe_reason, Some(Unsafe::Failed));
    // And after all that, good frames bring the policy back.
    ctl.perceive(pair(&rgb, &ir, now), now);
    let d = ctl.decide(&s, None, now, dt);
    assert!(!matches!(d.unsafe_reason, Some(Unsafe::Failed | Unsafe::Stale)), "{d:?}");
    assert_eq!(ctl.faults, [2, 1, 3, 1, 1], "faults by kind: missing, late, size, skew, non-finite");
}

#[test]
fn unsure_perception_and_bad_proposals_get_the_safe_action() {
    // A calibration that doubts everything: every detection abstains, so a frame with people
    // in it (and no target yet) abstains.
    let mut ctl = controller(network());
    ctl.conformal = Some(Conformal { alpha: 0.1, qhat: 0.5, tau: 0.0 });
    let (rgb, ir) = day_pair();
    let t = Instant::now();
    ctl.perceive(pair(&rgb, &ir, t), t);
    assert!(ctl.detections().iter().all(|j| j.judgement.abstain));
    let d = ctl.decide(&RobotState::default(), None, t, 1.0 / 30.0);
    assert_eq!(d.unsafe_reason, Some(Unsafe::Abstained));
    assert_eq!(d.action, Action::STOP);

    // An external controller that proposes NaN (or nothing) is refused.
    let mut ext = controller(Policy::External);
    ext.watchdog.safe = SafeAction::Hold { max_periods: 2 };
    let go = Action([0.5, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0]);
    ext.perceive(pair(&rgb, &ir, t), t);
    let d = ext.decide(&RobotState::default(), Some(go), t, 1.0 / 30.0);
    assert!(d.unsafe_reason.is_none() || d.unsafe_reason == Some(Unsafe::Abstained));
    if d.unsafe_reason.is_none() {
        assert_eq!(d.action, go);
        // Hold: the last good action rides through two bad periods, then stop.
        ext.perceive(pair(&rgb, &ir, t), t);
        let bad = Action([f32::NAN; 7]);
        assert_eq!(ext.decide(&RobotState::default(), Some(bad), t, 0.03).action, go);
        ext.perceive(pair(&rgb, &ir, t), t);
        assert_eq!(ext.decide(&RobotState::default(), None, t, 0.03).action, go);
        ext.perceive(pair(&rgb, &ir, t), t);
        let d = ext.decide(&RobotState::default(), Some(bad), t, 0.03);
        assert_eq!((d.action, d.unsafe_reason), (Action::stopped(0.0), Some(Unsafe::BadAction)));
    }
}

/// The shipped policy's reflexes on hand-made scenes (features as `control::track` writes
/// them): turn toward a target off to one side, approach a far one, stop and engage at a near
/// one, and steer away from something close ahead.
#[test]
fn the_policy_network_turns_toward_and_approaches_the_target() {
    let Policy::Network(mut exec) = network() else { unreachable!() };
    let mut act = |f: [f32; 30]| {
        exec.run(&[&f]).unwrap();
        let o = exec.output(0);
        (o[0], o[5], o[6])
    };
    // State: slow forward; target: present, cx, bottom, height, width, score.
    let scene = |cx: f32, bottom: f32, height: f32| {
        let mut f = [0.0; 30];
        f[0] = 0.3;
        f[4..10].copy_from_slice(&[1.0, cx, bottom, height, height * 0.4 * 240.0 / 320.0, 0.9]);
        f
    };
    let (_, right_turn, _) = act(scene(0.6, 0.58, 0.3));
    let (_, left_turn, _) = act(scene(-0.6, 0.58, 0.3));
    assert!(right_turn < -0.1 && left_turn > 0.1, "turns toward the target: {right_turn} (right), {left_turn} (left)");
    let (far_dx, _, far_grip) = act(scene(0.0, 0.58, 0.3));
    let (near_dx, _, near_grip) = act(scene(0.0, 1.0, 0.95));
    assert!(far_dx > near_dx + 0.2, "approaches a far target faster than a near one: {far_dx} vs {near_dx}");
    assert!(near_grip > 0.5 && far_grip < 0.5, "engages only within reach: near {near_grip}, far {far_grip}");
}

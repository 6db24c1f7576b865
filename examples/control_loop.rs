//! A robot control loop in Rust on kestrel's controller: every period, hand it the newest
//! camera pair and the robot's state, send the action it returns. The clock is the robot's
//! (kestrel's `Schedule`, absolute deadlines); frames come from the built-in synthetic scenes
//! here, from the robot's cameras in real use.
//!
//!     cargo run --release --example control_loop -- [periods]

use std::path::Path;
use std::time::{Duration, Instant};

use kestrel::control::schedule::{Schedule, SkipPolicy};
use kestrel::control::{Controller, ControllerOptions, FramePair, Policy, RobotState};
use kestrel::vision::detector::{Detector, Device};
use kestrel::vision::synth::{self, CameraMotion, SynthOptions};

fn main() -> kestrel::Result<()> {
    let periods: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(60);
    let detector = Detector::open(Path::new("models/rgbir-fused.kpak"), Device::Cpu)?;
    let policy = Policy::open(Path::new("models/policy.kpak"))?;
    let options = ControllerOptions::at_rate(30.0);
    let mut ctl = Controller::new(detector, policy, options)?;
    let scenes = SynthOptions { sequence: Some(30), camera: CameraMotion::Static, seed: 3, ..Default::default() };
    let mut schedule = Schedule::new(options.period, Instant::now(), SkipPolicy::Skip);
    let mut state = RobotState::default();
    let (mut safe, mut late) = (0, 0);
    for i in 0..periods {
        let start = schedule.wait();
        // The camera's newest pair (rendered here; a robot reads its camera buffers).
        let frame = synth::frame(&scenes, i);
        let captured = Instant::now();
        let pair = FramePair { rgb: &frame.rgb, ir: &frame.ir, rgb_time: captured, ir_time: captured };
        let d = ctl.step(Some(pair), &state, None, Instant::now());
        // Send d.action to the robot; this toy robot just takes the command as its state.
        state = RobotState { speed: d.action.0[0], turn: d.action.0[5], gripper: d.action.0[6].round() };
        safe += d.unsafe_reason.is_some() as usize;
        if i % 10 == 0 {
            println!(
                "period {i:3}: dx {:.2} dyaw {:+.2} gripper {:.0}, {} detections, target {:?}, safe {:?}",
                d.action.0[0],
                d.action.0[5],
                d.action.0[6],
                ctl.detections().len(),
                d.target,
                d.unsafe_reason
            );
        }
        late += !schedule.finish(start, Instant::now()) as usize;
    }
    println!(
        "{periods} periods: {safe} safe actions, {late} deadline misses ({:?} period)",
        Duration::from_secs_f64(1.0 / 30.0)
    );
    Ok(())
}

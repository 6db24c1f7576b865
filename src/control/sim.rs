//! The built-in 2-D world the closed loop runs in: a ground robot with a forward-looking paired
//! RGB + thermal camera, a target person to approach and follow, and other people, cars and
//! bicycles to avoid. The camera frames are drawn by the synth renderer
//! (`vision::synth::ViewRenderer`), so the detector sees the same kind of scenes it was trained
//! on, under day, dusk, night, fog and glare.
//!
//! World units are metres and radians; x forward at the start, y to the left. Time advances one
//! control period per step, whatever the wall clock does: a late perception is late in the
//! robot's world too (the loop holds its safe action through it), but the episode's outcome does
//! not depend on how loaded the machine was, only on what the loop put out.
//!
//! An episode succeeds when the robot has kept the target within [`FOLLOW_NEAR`, `FOLLOW_FAR`]
//! and within [`FOLLOW_BEARING`] of straight ahead for [`FOLLOW_SECONDS`] in a row, without
//! touching anyone; it fails on contact or when the time runs out.

use crate::rng::SplitMix64;
use crate::vision::image::Image;
use crate::vision::synth::{Condition, ViewObject, ViewRenderer};

use super::action::{dim, Action};

/// Camera geometry: focal length as a fraction of the image width, and mounting height (m).
pub const FOCAL_FRACTION: f32 = 0.6;
pub const CAMERA_HEIGHT: f32 = 1.0;
/// Closest distance (m) at which the camera still draws an object.
const NEAR_CLIP: f32 = 0.3;

pub const FOLLOW_NEAR: f32 = 0.9;
pub const FOLLOW_FAR: f32 = 2.0;
pub const FOLLOW_BEARING: f32 = 0.35;
pub const FOLLOW_SECONDS: f32 = 2.0;
/// Contact distance between the robot's and an object's footprint circles.
const ROBOT_RADIUS: f32 = 0.3;

pub const MAX_SPEED: f32 = 1.5;
pub const MAX_TURN: f32 = 1.5;
const ACCEL: f32 = 2.0;
const TURN_ACCEL: f32 = 6.0;

/// Most objects in the world besides the target.
pub const MAX_OTHERS: usize = 6;

/// One thing in the world: a class (0 person, 1 car, 2 bicycle), a footprint and a walk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Body {
    pub class: usize,
    pub x: f32,
    pub y: f32,
    pub heading: f32,
    pub speed: f32,
    /// Height and width (m) as the camera sees it, and the footprint radius for contact.
    pub height: f32,
    pub width: f32,
    pub radius: f32,
    pub look: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Robot {
    pub x: f32,
    pub y: f32,
    pub yaw: f32,
    pub speed: f32,
    pub turn: f32,
    pub gripper: f32,
}

/// How an episode ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Running,
    Success,
    Collision,
    Timeout,
}

/// The episode generator's options.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    pub width: usize,
    pub height: usize,
    /// Control period (s): the world's time step.
    pub dt: f32,
    pub episode_seconds: f32,
    /// Every episode under this condition (`None`: drawn per episode).
    pub condition: Option<Condition>,
    pub seed: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { width: 320, height: 240, dt: 1.0 / 30.0, episode_seconds: 20.0, condition: None, seed: 1 }
    }
}

/// The world of one episode.
pub struct World {
    pub opts: SimOptions,
    pub episode: u64,
    pub robot: Robot,
    pub target: Body,
    pub others: heapless::Vec<Body, MAX_OTHERS>,
    pub condition: Condition,
    pub time: f32,
    pub outcome: Outcome,
    /// Seconds the follow condition has held without a break.
    follow_time: f32,
    rng: SplitMix64,
    /// Seeds the camera's look of this episode's world (`ViewRenderer::reseed`).
    pub look_seed: u64,
    view: heapless::Vec<ViewObject, { MAX_OTHERS + 1 }>,
}

/// Wraps an angle to (-pi, pi].
pub fn wrap(a: f32) -> f32 {
    let t = std::f32::consts::TAU;
    let a = a.rem_euclid(t);
    if a > std::f32::consts::PI {
        a - t
    } else {
        a
    }
}

impl World {
    /// Episode `episode` of the generator `opts` (a pure function of both).
    pub fn new(opts: SimOptions, episode: u64) -> World {
        let mut r = SplitMix64::new(opts.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ episode.wrapping_mul(0x9E37_79B9));
        let conditions = [Condition::Day, Condition::Dusk, Condition::Night, Condition::Fog, Condition::Glare];
        let condition = opts.condition.unwrap_or(conditions[r.below(5) as usize]);
        let person = |r: &mut SplitMix64, x: f32, y: f32, speed: f32| Body {
            class: 0,
            x,
            y,
            heading: r.uniform(-std::f32::consts::PI, std::f32::consts::PI),
            speed,
            height: r.uniform(1.55, 1.9),
            width: 0.6,
            radius: 0.3,
            look: r.next_u64(),
        };
        // The target starts ahead, near the middle of the view; it strolls.
        let d = r.uniform(4.0, 8.0);
        let b = r.uniform(-0.25, 0.25);
        let stroll = r.uniform(0.2, 0.6);
        let target = person(&mut r, d * b.cos(), d * b.sin(), stroll);
        let mut others = heapless::Vec::new();
        for _ in 0..1 + r.below(4) {
            // Off to a side of the target, in the robot's way or near it.
            let (x, y) = (r.uniform(1.5, 10.0), r.uniform(-4.0, 4.0));
            if ((x - target.x).powi(2) + (y - target.y).powi(2)).sqrt() < 1.5 || (x * x + y * y).sqrt() < 1.5 {
                continue;
            }
            let body = match r.below(5) {
                0..=2 => {
                    let speed = r.uniform(0.0, 0.5);
                    person(&mut r, x, y, speed)
                }
                3 => Body {
                    class: 1,
                    x,
                    y,
                    heading: 0.0,
                    speed: 0.0,
                    height: 1.5,
                    width: r.uniform(1.8, 4.2),
                    radius: 1.2,
                    look: r.next_u64(),
                },
                _ => Body {
                    class: 2,
                    x,
                    y,
                    heading: 0.0,
                    speed: 0.0,
                    height: 1.05,
                    width: 1.7,
                    radius: 0.6,
                    look: r.next_u64(),
                },
            };
            let _ = others.push(body);
        }
        let look_seed = r.next_u64();
        World {
            opts,
            episode,
            robot: Robot::default(),
            target,
            others,
            condition,
            time: 0.0,
            outcome: Outcome::Running,
            follow_time: 0.0,
            rng: r,
            look_seed,
            view: heapless::Vec::new(),
        }
    }

    /// Position of (x, y) in the robot's frame: (forward, left).
    pub fn to_robot(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.robot.x, y - self.robot.y);
        let (s, c) = self.robot.yaw.sin_cos();
        (dx * c + dy * s, -dx * s + dy * c)
    }

    /// Distance and bearing (left positive) of a body from the robot.
    pub fn range_bearing(&self, b: &Body) -> (f32, f32) {
        let (f, l) = self.to_robot(b.x, b.y);
        ((f * f + l * l).sqrt(), l.atan2(f))
    }

    /// The camera's view of the world: every body in front of it, as boxes in image pixels.
    pub fn view(&mut self) -> &[ViewObject] {
        let (w, h) = (self.opts.width as f32, self.opts.height as f32);
        let f = FOCAL_FRACTION * w;
        let horizon = ViewRenderer::HORIZON * h;
        self.view.clear();
        for b in core::iter::once(&self.target).chain(self.others.iter()) {
            let (fwd, left) = {
                let (dx, dy) = (b.x - self.robot.x, b.y - self.robot.y);
                let (s, c) = self.robot.yaw.sin_cos();
                (dx * c + dy * s, -dx * s + dy * c)
            };
            if fwd < NEAR_CLIP {
                continue;
            }
            let u = w / 2.0 - f * left / fwd;
            let (bw, bh) = (f * b.width / fwd, f * b.height / fwd);
            let bottom = horizon + f * CAMERA_HEIGHT / fwd;
            let o = ViewObject { class: b.class, x0: u - bw / 2.0, y0: bottom - bh, w: bw, h: bh, look: b.look };
            if o.x0 + o.w < 0.0 || o.x0 > w || o.y0 > h {
                continue;
            }
            let _ = self.view.push(o);
        }
        &self.view
    }

    /// How far the ground texture has turned in the image (pixels): the robot's heading.
    pub fn pan(&self) -> f32 {
        -self.robot.yaw * FOCAL_FRACTION * self.opts.width as f32
    }

    /// Renders the camera pair at the current state with `renderer` (reseeded for this
    /// episode's world) into `rgb` and `ir`. `frame` seeds the sensor noise.
    pub fn render(&mut self, renderer: &mut ViewRenderer, frame: u64, rgb: &mut Image, ir: &mut Image) {
        let pan = self.pan();
        self.view();
        renderer.render(&self.view, pan, frame, rgb, ir);
    }

    /// The scripted expert: privileged (it reads the world, not the camera). Turns toward the
    /// target and closes to the middle of the follow band, steers away from whatever is close
    /// ahead, and engages the gripper when the target is within reach.
    pub fn expert(&self) -> Action {
        let (d, bearing) = self.range_bearing(&self.target);
        let mut turn = 2.0 * bearing;
        let mut speed = (0.9 * (d - 0.5 * (FOLLOW_NEAR + FOLLOW_FAR))).clamp(0.0, 1.2) * bearing.cos().max(0.0);
        for o in &self.others {
            let (od, ob) = self.range_bearing(o);
            let gap = od - o.radius - ROBOT_RADIUS;
            if gap < 2.5 && ob.abs() < 1.7 {
                // Closer and more ahead pushes harder; beside the robot only steers.
                let push = ((2.5 - gap) / 2.5).clamp(0.0, 1.0);
                let ahead = ob.cos().max(0.0);
                let away = if ob >= 0.0 { -1.0 } else { 1.0 };
                turn += away * 2.5 * push * ahead.max(0.3);
                speed *= (1.0 - push * ahead).max(0.0);
                if gap < 0.4 && ob.abs() < 1.2 {
                    speed = 0.0;
                }
            }
        }
        let mut a = Action::STOP;
        a.0[dim::DX] = speed.clamp(0.0, MAX_SPEED);
        a.0[dim::DYAW] = turn.clamp(-MAX_TURN, MAX_TURN);
        a.0[dim::GRIPPER] = if d < FOLLOW_FAR && bearing.abs() < FOLLOW_BEARING { 1.0 } else { 0.0 };
        a
    }

    /// Advances the world one period under `action`, and updates the outcome.
    pub fn step(&mut self, action: &Action) {
        let dt = self.opts.dt;
        let r = &mut self.robot;
        let want_v = if action.0[dim::DX].is_finite() { action.0[dim::DX].clamp(0.0, MAX_SPEED) } else { 0.0 };
        let want_w = if action.0[dim::DYAW].is_finite() { action.0[dim::DYAW].clamp(-MAX_TURN, MAX_TURN) } else { 0.0 };
        r.speed += (want_v - r.speed).clamp(-ACCEL * dt, ACCEL * dt);
        r.turn += (want_w - r.turn).clamp(-TURN_ACCEL * dt, TURN_ACCEL * dt);
        r.yaw = wrap(r.yaw + r.turn * dt);
        r.x += r.speed * r.yaw.cos() * dt;
        r.y += r.speed * r.yaw.sin() * dt;
        if action.0[dim::GRIPPER].is_finite() {
            r.gripper = if action.0[dim::GRIPPER] > 0.5 { 1.0 } else { 0.0 };
        }
        // People wander: a slow random turn, and away from the robot when it is close (as
        // pedestrians do); parked things stay put.
        let rng = &mut self.rng;
        let (rx, ry) = (self.robot.x, self.robot.y);
        for b in core::iter::once(&mut self.target).chain(self.others.iter_mut()) {
            if b.speed > 0.0 {
                b.heading = wrap(b.heading + rng.normal() * 0.6 * dt.sqrt());
                let (dx, dy) = (b.x - rx, b.y - ry);
                if dx * dx + dy * dy < 1.5 * 1.5 {
                    let away = dy.atan2(dx);
                    b.heading = wrap(b.heading + 0.3 * wrap(away - b.heading));
                }
                b.x += b.speed * b.heading.cos() * dt;
                b.y += b.speed * b.heading.sin() * dt;
            }
        }
        self.time += dt;
        if self.outcome != Outcome::Running {
            return;
        }
        let touching =
            |b: &Body, r: &Robot| ((b.x - r.x).powi(2) + (b.y - r.y).powi(2)).sqrt() < b.radius + ROBOT_RADIUS;
        if touching(&self.target, &self.robot) || self.others.iter().any(|b| touching(b, &self.robot)) {
            self.outcome = Outcome::Collision;
            return;
        }
        let (d, bearing) = self.range_bearing(&self.target);
        if (FOLLOW_NEAR..=FOLLOW_FAR).contains(&d) && bearing.abs() <= FOLLOW_BEARING {
            self.follow_time += dt;
        } else {
            self.follow_time = 0.0;
        }
        if self.follow_time >= FOLLOW_SECONDS {
            self.outcome = Outcome::Success;
        } else if self.time >= self.opts.episode_seconds {
            self.outcome = Outcome::Timeout;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_camera_projects_ahead_and_culls_behind() {
        let mut w = World::new(SimOptions::default(), 0);
        w.others.clear();
        w.target = Body { x: 4.0, y: 0.0, height: 1.7, ..w.target };
        let v = w.view()[0];
        // Straight ahead: centred; foot row = horizon + f h / d; height f 1.7 / d.
        let f = FOCAL_FRACTION * 320.0;
        assert!((v.x0 + v.w / 2.0 - 160.0).abs() < 1e-3);
        assert!((v.y0 + v.h - (96.0 + f / 4.0)).abs() < 1e-3);
        assert!((v.h - f * 1.7 / 4.0).abs() < 1e-3);
        // To the left: left of centre. Behind: not drawn.
        w.target.y = 1.0;
        assert!(w.view()[0].x0 + w.view()[0].w / 2.0 < 160.0);
        w.target.x = -3.0;
        assert!(w.view().is_empty());
    }

    #[test]
    fn the_expert_succeeds_on_most_episodes() {
        let opts = SimOptions::default();
        let mut outcomes = [0usize; 4];
        for e in 0..40 {
            let mut w = World::new(opts, e);
            while w.outcome == Outcome::Running {
                let a = w.expert();
                w.step(&a);
            }
            outcomes[w.outcome as usize] += 1;
        }
        eprintln!("expert outcomes (running, success, collision, timeout): {outcomes:?}");
        assert!(outcomes[Outcome::Success as usize] >= 34, "expert outcomes {outcomes:?}");
    }
}

//! From detections to the policy's input: keep hold of one target person across frames, and
//! describe it, the nearest other objects and the robot's own state as a fixed vector.
//!
//! The feature layout (`FEATURES` floats) is the contract with `tools/train_policy.py`:
//! - 0..4 robot state: forward speed / 1.5, turn rate / 1.5, gripper (0 or 1), seconds since
//!   the target was last seen / 2 (at most 1);
//! - 4..10 the target: present, box centre x in [-1, 1], box bottom / height, box height /
//!   height, box width / width, score. When the target is not seen this frame but is still
//!   remembered, present and score are 0 and the other four describe where it was last seen
//!   (which way to turn to find it again); all 0 when there is no target at all;
//! - 10..30 the 4 nearest other detections (largest bottom first), 5 each: present, centre x,
//!   bottom, height, width (0 when absent).

use crate::vision::detect::{iou, Detection};

pub const FEATURES: usize = 30;
pub const OTHERS: usize = 4;

/// Robot state the policy sees: forward speed (m/s), turn rate (rad/s), gripper (0 open, 1 engaged).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RobotState {
    pub speed: f32,
    pub turn: f32,
    pub gripper: f32,
}

/// Seconds after which a lost target is given up and a new one acquired.
const GIVE_UP_SECONDS: f32 = 3.0;
/// The person class id of the shipped detectors.
pub const PERSON: usize = 0;

/// Holds the target across frames by overlap, then by position and size.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    target: Option<[f32; 4]>,
    since_seen: f32,
}

impl Tracker {
    pub fn reset(&mut self) {
        *self = Tracker::default();
    }

    pub fn since_seen(&self) -> f32 {
        self.since_seen
    }

    /// The target's box when it was last seen, while it is still remembered.
    pub fn last_seen(&self) -> Option<[f32; 4]> {
        self.target
    }

    /// Finds the target among `dets` (only those `usable` says may be acted on) after `dt`
    /// seconds; returns its index. A new target is the person nearest the image's centre line.
    pub fn update(
        &mut self,
        dets: &[Detection],
        usable: impl Fn(usize) -> bool,
        frame: (usize, usize),
        dt: f32,
    ) -> Option<usize> {
        let w = frame.0 as f32;
        let cx = |b: &[f32; 4]| (b[0] + b[2]) / w - 1.0;
        let people = || dets.iter().enumerate().filter(|&(i, d)| d.class_id == PERSON && usable(i));
        let found = match self.target {
            Some(last) => {
                let by_overlap = people()
                    .map(|(i, d)| (i, iou(&last, &d.box_xyxy)))
                    .filter(|&(_, o)| o > 0.1)
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(i, _)| i);
                by_overlap.or_else(|| {
                    let h = last[3] - last[1];
                    people()
                        .filter(|(_, d)| {
                            let dh = d.box_xyxy[3] - d.box_xyxy[1];
                            (cx(&d.box_xyxy) - cx(&last)).abs() < 0.3 && dh > 0.6 * h && dh < 1.6 * h
                        })
                        .min_by(|a, b| {
                            (cx(&a.1.box_xyxy) - cx(&last)).abs().total_cmp(&(cx(&b.1.box_xyxy) - cx(&last)).abs())
                        })
                        .map(|(i, _)| i)
                })
            }
            None => people()
                .filter(|(_, d)| cx(&d.box_xyxy).abs() < 0.5)
                .min_by(|a, b| cx(&a.1.box_xyxy).abs().total_cmp(&cx(&b.1.box_xyxy).abs()))
                .map(|(i, _)| i),
        };
        match found {
            Some(i) => {
                self.target = Some(dets[i].box_xyxy);
                self.since_seen = 0.0;
            }
            None => {
                self.since_seen += dt;
                if self.since_seen > GIVE_UP_SECONDS {
                    self.target = None;
                }
            }
        }
        found
    }
}

/// Writes the policy's input vector.
#[allow(clippy::too_many_arguments)]
pub fn features(
    state: &RobotState,
    since_seen: f32,
    last_seen: Option<[f32; 4]>,
    dets: &[Detection],
    usable: impl Fn(usize) -> bool,
    target: Option<usize>,
    frame: (usize, usize),
    out: &mut [f32; FEATURES],
) {
    out.fill(0.0);
    let (w, h) = (frame.0 as f32, frame.1 as f32);
    out[0] = state.speed / 1.5;
    out[1] = state.turn / 1.5;
    out[2] = state.gripper;
    out[3] = (since_seen / 2.0).min(1.0);
    let describe = |b: &[f32; 4], o: &mut [f32]| {
        o[0] = 1.0;
        o[1] = (b[0] + b[2]) / w - 1.0;
        o[2] = b[3] / h;
        o[3] = (b[3] - b[1]) / h;
        o[4] = (b[2] - b[0]) / w;
    };
    match (target, last_seen) {
        (Some(t), _) => {
            describe(&dets[t].box_xyxy, &mut out[4..9]);
            out[9] = dets[t].score;
        }
        (None, Some(b)) => {
            describe(&b, &mut out[4..9]);
            out[4] = 0.0;
        }
        (None, None) => {}
    }
    // The nearest others: the lowest foot rows, picked without sorting (no buffer).
    let mut taken = [usize::MAX; OTHERS];
    for slot in 0..OTHERS {
        let next = dets
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != target && usable(i) && !taken.contains(&i))
            .max_by(|a, b| a.1.box_xyxy[3].total_cmp(&b.1.box_xyxy[3]).then(b.0.cmp(&a.0)));
        let Some((i, d)) = next else { break };
        taken[slot] = i;
        describe(&d.box_xyxy, &mut out[10 + 5 * slot..15 + 5 * slot]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class_id: usize, b: [f32; 4]) -> Detection {
        Detection { class_id, score: 0.9, box_xyxy: b, anchor: 0 }
    }

    #[test]
    fn the_tracker_holds_the_target_and_features_describe_the_scene() {
        let frame = (320, 240);
        let mut t = Tracker::default();
        // A person off to the side, the target near the middle, a car near the robot.
        let dets = [
            det(0, [10.0, 100.0, 40.0, 180.0]),
            det(0, [150.0, 90.0, 175.0, 160.0]),
            det(1, [200.0, 150.0, 300.0, 230.0]),
        ];
        assert_eq!(t.update(&dets, |_| true, frame, 0.1), Some(1));
        // The target moves right a little; the order of detections changes.
        let next = [
            det(1, [200.0, 150.0, 300.0, 230.0]),
            det(0, [158.0, 92.0, 183.0, 162.0]),
            det(0, [12.0, 100.0, 42.0, 180.0]),
        ];
        assert_eq!(t.update(&next, |_| true, frame, 0.1), Some(1));
        // Gone for a frame: remembered, and the time counts.
        assert_eq!(t.update(&next[..1], |_| true, frame, 0.5), None);
        assert_eq!(t.since_seen(), 0.5);
        let mut f = [0.0; FEATURES];
        let s = RobotState { speed: 0.75, turn: -0.3, gripper: 1.0 };
        features(&s, 0.5, t.last_seen(), &next, |_| true, Some(1), frame, &mut f);
        assert_eq!(&f[..4], &[0.5, -0.2, 1.0, 0.25]);
        assert_eq!(f[4], 1.0);
        assert!((f[5] - (341.0 / 320.0 - 1.0)).abs() < 1e-6);
        // Nearest other first: the car (bottom 230), then the person (180); the rest empty.
        assert_eq!(f[10..15], [1.0, 0.5625, 230.0 / 240.0, 80.0 / 240.0, 100.0 / 320.0]);
        assert_eq!(f[15], 1.0);
        assert!(f[20..].iter().all(|&v| v == 0.0));
        // Detections that may not be used are left out.
        features(&s, 0.0, None, &next, |i| i != 0, Some(1), frame, &mut f);
        assert_eq!(f[12], 180.0 / 240.0);
        // Lost but remembered: not present, but where it was last seen.
        features(&s, 0.5, t.last_seen(), &next[..1], |_| true, None, frame, &mut f);
        assert_eq!((f[4], f[9]), (0.0, 0.0));
        assert!((f[5] - (341.0 / 320.0 - 1.0)).abs() < 1e-6);
    }
}

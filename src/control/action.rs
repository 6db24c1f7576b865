//! Robot actions: a 7-D end-effector or base command, and the safe action the watchdog puts out.

/// Number of action dimensions: (dx, dy, dz, droll, dpitch, dyaw, gripper), the convention of
/// SimplerEnv-style policies (PAPERS.md section 12). A ground robot uses dx (forward speed, m/s),
/// dyaw (turn rate, rad/s) and the gripper, and leaves the rest at 0.
pub const ACTION_DIM: usize = 7;

/// Index of each dimension in [`Action::0`].
pub mod dim {
    pub const DX: usize = 0;
    pub const DY: usize = 1;
    pub const DZ: usize = 2;
    pub const DROLL: usize = 3;
    pub const DPITCH: usize = 4;
    pub const DYAW: usize = 5;
    pub const GRIPPER: usize = 6;
}

/// One command for one control period.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Action(pub [f32; ACTION_DIM]);

/// Most actions one chunk holds (a policy may emit several periods' worth at once).
pub const MAX_CHUNK: usize = 8;

/// A fixed-capacity run of actions for consecutive periods.
pub type ActionChunk = heapless::Vec<Action, MAX_CHUNK>;

impl Action {
    pub const STOP: Action = Action([0.0; ACTION_DIM]);

    /// Whether every component is a finite number (a policy that puts out NaN is a failure).
    pub fn is_finite(&self) -> bool {
        self.0.iter().all(|v| v.is_finite())
    }

    /// Zero velocity on every axis, the gripper as it was: stopping must not drop what it holds.
    pub fn stopped(gripper: f32) -> Action {
        let mut a = Action::STOP;
        a.0[dim::GRIPPER] = gripper;
        a
    }
}

/// What the loop puts out when perception is stale, failed or abstained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafeAction {
    /// Zero velocity on every axis at once (gripper held as it is).
    Stop,
    /// Repeat the last good action for up to this many periods (riding through a dropped frame
    /// at speed), then stop.
    Hold { max_periods: u32 },
}

impl SafeAction {
    /// Parses `stop`, `hold` (3 periods) or `hold:N`.
    pub fn parse(s: &str) -> Option<SafeAction> {
        match s {
            "stop" | "zero" => Some(SafeAction::Stop),
            "hold" => Some(SafeAction::Hold { max_periods: 3 }),
            _ => s.strip_prefix("hold:")?.parse().ok().map(|max_periods| SafeAction::Hold { max_periods }),
        }
    }

    /// The safe action after `unsafe_periods` consecutive unsafe periods (1 for the first).
    pub fn action(&self, last_good: &Action, unsafe_periods: u32) -> Action {
        match *self {
            SafeAction::Hold { max_periods } if unsafe_periods <= max_periods && last_good.is_finite() => *last_good,
            _ => Action::stopped(if last_good.is_finite() { last_good.0[dim::GRIPPER] } else { 0.0 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_actions_stop_or_hold_then_stop() {
        let good = Action([1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0]);
        assert_eq!(SafeAction::Stop.action(&good, 1), Action([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]));
        let hold = SafeAction::parse("hold:2").unwrap();
        assert_eq!(hold.action(&good, 1), good);
        assert_eq!(hold.action(&good, 2), good);
        assert_eq!(hold.action(&good, 3), Action::stopped(1.0));
        let nan = Action([f32::NAN; ACTION_DIM]);
        assert_eq!(hold.action(&nan, 1), Action::STOP);
        assert_eq!(SafeAction::parse("hold"), Some(SafeAction::Hold { max_periods: 3 }));
        assert_eq!(SafeAction::parse("zero"), Some(SafeAction::Stop));
        assert_eq!(SafeAction::parse("drift"), None);
    }
}

//! The watchdog: decides each period whether the policy's action may go to the robot, or the
//! safe action must.
//!
//! Perception is trusted only while it is fresh: the last good perception must be younger than
//! `max_age`. A failed perception (an error, a fault in the frames, non-finite outputs) or an
//! abstention makes the period unsafe at once; missing frames make it unsafe once the last good
//! perception ages past `max_age`. A policy that puts out a non-finite action is a failure too.

use std::time::{Duration, Instant};

use super::action::{Action, SafeAction};

/// Why a period got the safe action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unsafe {
    /// No good perception within `max_age` (frames missing or late, or never started).
    Stale,
    /// Perception failed this period (bad frames, a backend error, non-finite outputs).
    Failed,
    /// Perception was unsure: the conformal abstention rule fired on a detection that matters.
    Abstained,
    /// The policy's action was not finite.
    BadAction,
}

impl Unsafe {
    pub const ALL: [Unsafe; 4] = [Unsafe::Stale, Unsafe::Failed, Unsafe::Abstained, Unsafe::BadAction];

    pub fn name(self) -> &'static str {
        match self {
            Unsafe::Stale => "stale",
            Unsafe::Failed => "failed",
            Unsafe::Abstained => "abstained",
            Unsafe::BadAction => "bad_action",
        }
    }
}

/// What perception reported this period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perception {
    /// A new frame was perceived and is usable.
    Fresh,
    /// No new frame this period.
    NoFrame,
    Failed,
    Abstained,
}

#[derive(Clone, Debug)]
pub struct Watchdog {
    pub max_age: Duration,
    pub safe: SafeAction,
    last_good: Option<Instant>,
    last_action: Action,
    unsafe_run: u32,
    /// Safe actions put out, by reason.
    pub counts: [u64; 4],
}

impl Watchdog {
    pub fn new(max_age: Duration, safe: SafeAction) -> Watchdog {
        Watchdog { max_age, safe, last_good: None, last_action: Action::STOP, unsafe_run: 0, counts: [0; 4] }
    }

    /// Forgets the last good perception (a new episode, a camera restart).
    pub fn reset(&mut self) {
        self.last_good = None;
        self.last_action = Action::STOP;
        self.unsafe_run = 0;
    }

    /// Records this period's perception at `now`; returns the reason the period is unsafe, if it is.
    pub fn perceive(&mut self, p: Perception, now: Instant) -> Option<Unsafe> {
        match p {
            Perception::Fresh => {
                self.last_good = Some(now);
                None
            }
            Perception::Failed => Some(Unsafe::Failed),
            Perception::Abstained => Some(Unsafe::Abstained),
            Perception::NoFrame => match self.last_good {
                Some(t) if now.saturating_duration_since(t) <= self.max_age => None,
                _ => Some(Unsafe::Stale),
            },
        }
    }

    /// The action to send: `proposed` when the period is safe and it is finite, else the safe
    /// action. Returns the action and the reason it was replaced, if it was.
    pub fn gate(&mut self, verdict: Option<Unsafe>, proposed: Action) -> (Action, Option<Unsafe>) {
        let verdict = verdict.or((!proposed.is_finite()).then_some(Unsafe::BadAction));
        match verdict {
            None => {
                self.unsafe_run = 0;
                self.last_action = proposed;
                (proposed, None)
            }
            Some(why) => {
                self.unsafe_run += 1;
                self.counts[why as usize] += 1;
                (self.safe.action(&self.last_action, self.unsafe_run), Some(why))
            }
        }
    }

    pub fn count(&self, why: Unsafe) -> u64 {
        self.counts[why as usize]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_failed_abstained_and_bad_actions_get_the_safe_action() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Watchdog::new(ms(100), SafeAction::Stop);
        let go = Action([1.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.0]);
        // Nothing perceived yet: stale.
        assert_eq!(w.perceive(Perception::NoFrame, t0), Some(Unsafe::Stale));
        assert_eq!(w.perceive(Perception::Fresh, t0), None);
        assert_eq!(w.gate(None, go), (go, None));
        // A dropped frame within max_age rides on the last perception; past it, stop.
        assert_eq!(w.perceive(Perception::NoFrame, t0 + ms(50)), None);
        let v = w.perceive(Perception::NoFrame, t0 + ms(150));
        assert_eq!(w.gate(v, go), (Action::STOP, Some(Unsafe::Stale)));
        assert_eq!(w.perceive(Perception::Failed, t0 + ms(160)), Some(Unsafe::Failed));
        assert_eq!(w.perceive(Perception::Abstained, t0 + ms(170)), Some(Unsafe::Abstained));
        let nan = Action([f32::NAN; 7]);
        assert_eq!(w.gate(None, nan), (Action::STOP, Some(Unsafe::BadAction)));
        assert_eq!((w.count(Unsafe::Stale), w.count(Unsafe::BadAction), w.total()), (1, 1, 2));
    }
}

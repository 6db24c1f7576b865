//! Keeping time: a fixed period with absolute deadlines, overrun counting and a skip policy.
//!
//! Deadlines are absolute (`next += period`), never "now + period": a cycle that runs late does
//! not push every later cycle back, so the loop's phase does not drift over hours.

use std::time::{Duration, Instant};

/// What to do after a cycle ran past one or more later deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipPolicy {
    /// Drop the missed periods: the next cycle starts at the first deadline still ahead, on the
    /// original grid. A robot wants fresh data, not a burst of stale cycles.
    Skip,
    /// Run the missed cycles back to back until the loop is on time again (for loops that must
    /// account for every period, such as a simulator stepping fixed dt).
    CatchUp,
}

/// The fixed-rate clock of a control loop.
#[derive(Clone, Debug)]
pub struct Schedule {
    period: Duration,
    next: Instant,
    policy: SkipPolicy,
    /// Cycles that ended after their deadline.
    pub overruns: u64,
    /// Periods skipped under [`SkipPolicy::Skip`].
    pub skipped: u64,
    /// Worst lateness of a cycle start against its deadline.
    pub worst_start_lateness: Duration,
}

impl Schedule {
    /// A schedule whose first cycle starts at `start`.
    pub fn new(period: Duration, start: Instant, policy: SkipPolicy) -> Schedule {
        assert!(!period.is_zero(), "a control period must be positive");
        Schedule { period, next: start, policy, overruns: 0, skipped: 0, worst_start_lateness: Duration::ZERO }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// The start time of the next cycle (its deadline is one period later).
    pub fn next_start(&self) -> Instant {
        self.next
    }

    /// Sleeps until the next cycle's start and returns it (at once when it has passed).
    pub fn wait(&mut self) -> Instant {
        let now = Instant::now();
        if let Some(left) = self.next.checked_duration_since(now) {
            std::thread::sleep(left);
        } else {
            self.worst_start_lateness = self.worst_start_lateness.max(now - self.next);
        }
        self.next
    }

    /// Closes a cycle that started at `start` and ended at `end`: counts an overrun when it
    /// ended past its deadline, and moves the next start on the grid per the skip policy.
    /// Returns whether the cycle met its deadline.
    pub fn finish(&mut self, start: Instant, end: Instant) -> bool {
        let deadline = start + self.period;
        self.next = deadline;
        if end <= deadline {
            return true;
        }
        self.overruns += 1;
        if self.policy == SkipPolicy::Skip {
            // Whole periods missed past the deadline, then the first grid point still ahead.
            let late = end - deadline;
            let missed = (late.as_nanos() / self.period.as_nanos()) as u32 + 1;
            self.next += self.period * missed;
            self.skipped += missed as u64;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_absolute_and_overruns_skip_on_the_grid() {
        let t0 = Instant::now();
        let p = Duration::from_millis(10);
        let mut s = Schedule::new(p, t0, SkipPolicy::Skip);
        // On time: the next start is exactly one period later, whatever the cycle took.
        assert!(s.finish(t0, t0 + Duration::from_millis(3)));
        assert_eq!(s.next_start(), t0 + p);
        // Ended at 45, 25 ms past the deadline at 20: the periods starting at 20, 30 and 40 are gone.
        let start = t0 + p;
        assert!(!s.finish(start, t0 + Duration::from_millis(45)));
        assert_eq!((s.overruns, s.skipped), (1, 3));
        assert_eq!(s.next_start(), t0 + Duration::from_millis(50));
        // Catching up keeps every period.
        let mut c = Schedule::new(p, t0, SkipPolicy::CatchUp);
        assert!(!c.finish(t0, t0 + Duration::from_millis(25)));
        assert_eq!((c.overruns, c.skipped, c.next_start()), (1, 0, t0 + p));
    }
}

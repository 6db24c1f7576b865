//! Per-stage latency of the loop: HDR histograms made at start, so recording a cycle allocates
//! nothing.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The stages of one control cycle, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Read,
    Perceive,
    Decide,
    Act,
    Total,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Read, Stage::Perceive, Stage::Decide, Stage::Act, Stage::Total];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Read => "read",
            Stage::Perceive => "perceive",
            Stage::Decide => "decide",
            Stage::Act => "act",
            Stage::Total => "total",
        }
    }
}

/// Longest latency a histogram holds exactly (longer ones are clamped to it): 60 s.
const MAX_RECORDED_US: u64 = 60_000_000;

/// Latency histograms per stage, in microseconds with 3 significant digits.
pub struct StageLatency {
    hist: [Histogram<u64>; 5],
}

/// Percentiles of one stage, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub count: u64,
}

impl Default for StageLatency {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, MAX_RECORDED_US, 3).expect("static histogram bounds are valid");
        StageLatency { hist: [h(), h(), h(), h(), h()] }
    }
}

impl StageLatency {
    pub fn record(&mut self, stage: Stage, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_RECORDED_US);
        self.hist[stage as usize].saturating_record(us);
    }

    pub fn percentiles(&self, stage: Stage) -> Percentiles {
        let h = &self.hist[stage as usize];
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            count: h.len(),
        }
    }

    pub fn reset(&mut self) {
        self.hist.iter_mut().for_each(|h| h.reset());
    }
}

/// The process's resident memory in bytes (Linux: /proc/self/statm), for soak runs. `None`
/// where the platform does not say. Reads a small file: not for the steady-state cycle.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    #[cfg(unix)]
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    #[cfg(not(unix))]
    let page = 4096;
    Some(pages * u64::try_from(page).ok()?)
}

//! The steady-state control loop and the heap: 1000 cycles of the closed loop in the built-in
//! world (camera thread rendering, detector, conformal verdicts, tracker, policy network,
//! watchdog, world step) under a counting global allocator that sees every thread. The only
//! tests in this binary, run one after the other, so nothing else allocates while they count.
//!
//! - CPU backend: not one allocation, on any thread.
//! - GPU backend: kestrel's own code allocates nothing, but wgpu does inside every submission
//!   (command encoders, bind-group and pass bookkeeping, the map callback of the read-back:
//!   about 400 small allocations a cycle, all freed within it). What can be held to is that
//!   nothing accumulates: the heap holds the same bytes after 1000 cycles as before them. The
//!   test also bounds the per-cycle count, so a change that adds allocations per cycle (ours
//!   or wgpu's) fails here and is looked at.

mod common;

use std::path::Path;
use std::sync::Mutex;

use kestrel::control::run::{LoopOptions, SimLoop};
use kestrel::control::sim::SimOptions;
use kestrel::control::{Controller, ControllerOptions, Policy};
use kestrel::vision::detector::{Detector, Device};

#[global_allocator]
static ALLOC: common::CountingAlloc = common::CountingAlloc;

/// One test counts at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Cycles measured after warm-up.
const MEASURED_CYCLES: u64 = 1000;
/// wgpu's allocations per GPU cycle (measured: about 420 on lavapipe), with room.
const WGPU_ALLOCS_PER_CYCLE: usize = 1000;
/// Heap growth over the measured GPU cycles that is still "flat" (allocator bookkeeping).
const GPU_HEAP_SLACK_BYTES: isize = 64 * 1024;
/// Warm-up cycles: the first frames grow the detector's buffers, the first episode ends.
const WARMUP_CYCLES: u64 = 40;

/// Runs the loop warm, then `MEASURED_CYCLES` more; returns (bytes allocated on the loop thread,
/// largest, allocations on any thread, heap growth in bytes).
fn measure_loop(model: &str, device: Device) -> (usize, usize, usize, isize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let detector = Detector::open(&root.join(model), device).unwrap();
    let policy = Policy::open(&root.join("models/policy.kpak")).unwrap();
    let mut ctl = Controller::new(detector, policy, ControllerOptions::at_rate(30.0)).unwrap();
    assert!(ctl.conformal.is_some(), "the shipped detector carries its conformal calibration");
    // Short episodes, so the measured cycles cross episode boundaries (a new world, a reset
    // controller, a reseeded camera) as well as steady following.
    let opts = LoopOptions {
        rate_hz: 30.0,
        cycles: WARMUP_CYCLES + MEASURED_CYCLES,
        realtime: false,
        expert: false,
        sim: SimOptions { episode_seconds: 4.0, ..SimOptions::default() },
    };
    let mut sim = SimLoop::new(&mut ctl, &opts).unwrap();
    for _ in 0..WARMUP_CYCLES {
        sim.cycle(&mut ctl, None);
    }
    let (before, live_before) = (common::global_allocs(), common::live_bytes());
    let ((), largest, total) = common::measure_allocs(|| {
        for _ in 0..MEASURED_CYCLES {
            sim.cycle(&mut ctl, None);
        }
    });
    let (anywhere, growth) = (common::global_allocs() - before, common::live_bytes() - live_before);
    let report = sim.finish(&ctl);
    assert_eq!(report.cycles, WARMUP_CYCLES + MEASURED_CYCLES);
    assert!(report.episodes >= 5, "the measured cycles crossed episodes: {}", report.episodes);
    assert_eq!(report.faults.iter().sum::<u64>(), 0, "every frame arrived: {:?}", report.faults);
    (total, largest, anywhere, growth)
}

#[test]
fn a_thousand_warm_cycles_allocate_nothing_on_the_cpu() {
    let (total, largest, anywhere, growth) = measure_loop("models/rgbir-fused.kpak", Device::Cpu);
    assert_eq!(
        (total, anywhere, growth),
        (0, 0, 0),
        "{MEASURED_CYCLES} warm cycles allocated {total} bytes on the loop thread (largest {largest}), {anywhere} times on any thread"
    );
}

/// The RGB-only detector (one backbone: lavapipe runs it in about half the fused model's time)
/// keeps this test's 1040 GPU cycles within CI's budget; the loop's code is the same.
#[test]
fn a_thousand_warm_gpu_cycles_leave_the_heap_as_they_found_it() {
    let (total, _, anywhere, growth) = measure_loop("models/rgbir-rgb-only.kpak", Device::Gpu { allow_software: true });
    let per_cycle = anywhere / MEASURED_CYCLES as usize;
    eprintln!("GPU loop: {per_cycle} allocations a cycle inside wgpu ({total} bytes over {MEASURED_CYCLES} cycles), heap growth {growth} bytes");
    assert!(per_cycle <= WGPU_ALLOCS_PER_CYCLE, "{per_cycle} allocations a cycle: more than wgpu's submissions need");
    assert!(growth.abs() <= GPU_HEAP_SLACK_BYTES, "the heap grew by {growth} bytes over {MEASURED_CYCLES} cycles");
}

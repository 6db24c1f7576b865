//! After warm-up, running a graph allocates nothing, on any thread: the arena, the constants,
//! the packed conv weights, the scratch buffers and every step's parameters are made at load,
//! and ops split over the worker pool by index. Measured with a counting global allocator over
//! the YOLOv8 fixture, with the worker pool and on the calling thread alone. (The only test in
//! this binary, so nothing else allocates while it counts.) The same holds for a warm frame in
//! delta mode.

mod common;

use std::path::Path;

use common::measure_allocs;
use kestrel::exec::CpuExecutor;
use kestrel::graph::{onnx::import, passes::optimize};
use kestrel::import::onnx::Model;

#[global_allocator]
static ALLOC: common::CountingAlloc = common::CountingAlloc;

#[test]
fn a_warm_run_allocates_nothing_threaded_or_not() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolov8-tiny");
    let mut g = import(&Model::load(&dir.join("model.onnx")).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    let mut exec = CpuExecutor::new(&g, &|_| unreachable!()).unwrap();
    let (_, input) = kestrel::npy::read(&dir.join("input.npy")).unwrap();
    // The fixture's layers are small: split every op that has enough work for two workers.
    kestrel::ops::set_parallel_threshold(1 << 14);
    let mut outputs: Vec<Vec<f32>> = Vec::new();
    for threads in [2, 1] {
        kestrel::ops::set_max_threads(threads);
        exec.run(&[&input]).unwrap();
        exec.run(&[&input]).unwrap();
        let parallel_before = kestrel::ops::parallel_runs();
        let before = common::global_allocs();
        let (result, largest, total) = measure_allocs(|| exec.run(&[&input]));
        result.unwrap();
        let anywhere = common::global_allocs() - before;
        assert_eq!(total, 0, "{threads} threads: a warm run allocated {total} bytes (largest {largest})");
        assert_eq!(anywhere, 0, "{threads} threads: a warm run allocated {anywhere} times across threads");
        let split = kestrel::ops::parallel_runs() - parallel_before;
        if threads > 1 && kestrel::ops::max_threads() > 1 {
            assert!(split > 0, "no op used the worker pool: the threaded paths were not measured");
        } else {
            assert_eq!(split, 0);
        }
        // Splitting changes who computes an output, never how: the same bits either way.
        let out = exec.output(0).to_vec();
        if let Some(first) = outputs.first() {
            assert!(first.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "threaded result differs");
        }
        outputs.push(out);
    }
    // Delta mode: a frame where a patch moved scans, gathers, multiplies and scatters through
    // state made at enable time (and scratch grown during warm-up).
    kestrel::ops::set_max_threads(2);
    exec.enable_delta(kestrel::exec::DeltaOptions { keyframe_interval: 0, ..Default::default() }).unwrap();
    let mut moved = input.clone();
    for v in &mut moved[1000..1040] {
        *v += 0.5;
    }
    for frame in [&input, &moved, &input, &moved] {
        exec.run(&[frame]).unwrap();
    }
    let before = common::global_allocs();
    let (result, largest, total) = measure_allocs(|| exec.run(&[&input]));
    result.unwrap();
    let anywhere = common::global_allocs() - before;
    assert_eq!((total, anywhere), (0, 0), "a warm delta frame allocated {total} bytes (largest {largest})");
    let s = exec.delta_stats().unwrap();
    assert!(s.macs() < s.dense_macs(), "the measured frames ran sparse: {} of {} MACs", s.macs(), s.dense_macs());
    // The counter works: loading does allocate.
    let (_, _, load_total) = measure_allocs(|| CpuExecutor::new(&g, &|_| unreachable!()).unwrap());
    assert!(load_total > 0);
}

//! After warm-up, running a graph allocates nothing: the arena, the constants, the scratch
//! buffers and every step's parameters are made at load. Measured with a counting global
//! allocator over the YOLOv8 fixture.
//!
//! The CPU kernels here run on the calling thread (max_threads = 1): splitting an op over the
//! worker pool still builds small work-item lists per call, so the multi-threaded path is not
//! yet allocation-free.

mod common;

use std::path::Path;

use common::measure_allocs;
use kestrel::exec::CpuExecutor;
use kestrel::graph::{onnx::import, passes::optimize};
use kestrel::import::onnx::Model;

#[global_allocator]
static ALLOC: common::CountingAlloc = common::CountingAlloc;

#[test]
fn a_warm_run_allocates_nothing() {
    kestrel::ops::set_max_threads(1);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolov8-tiny");
    let mut g = import(&Model::load(&dir.join("model.onnx")).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    let mut exec = CpuExecutor::new(&g, &|_| unreachable!()).unwrap();
    let (_, input) = kestrel::npy::read(&dir.join("input.npy")).unwrap();
    exec.run(&[&input]).unwrap();
    exec.run(&[&input]).unwrap();
    let (result, largest, total) = measure_allocs(|| exec.run(&[&input]));
    result.unwrap();
    assert_eq!(total, 0, "a warm run allocated {total} bytes (largest {largest})");
    // The counter works: loading does allocate.
    let (_, _, load_total) = measure_allocs(|| CpuExecutor::new(&g, &|_| unreachable!()).unwrap());
    assert!(load_total > 0);
}

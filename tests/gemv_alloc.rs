//! A warm multi-threaded GEMV allocates nothing on any thread: the permuted activations live in
//! a reused scratch, the work is split into a fixed array, and the workers are the persistent
//! pool's. (The only test in this binary, so no other test allocates while it counts.)

mod common;

use kestrel::backend::cpu;
use kestrel::rng::SplitMix64;
use kestrel::tensor::Scheme;

#[global_allocator]
static ALLOC: common::CountingAlloc = common::CountingAlloc;

#[test]
fn a_warm_parallel_gemv_allocates_nothing() {
    let mut rng = SplitMix64::new(11);
    let (n, k) = (1024, 1024); // above the parallel threshold
    let w =
        kestrel::quant::quantize(&rng.normal_vec(n * k), n, k, Scheme::Q4 { group: 128, symmetric: false }).unwrap();
    let x = rng.normal_vec(k);
    let mut y = vec![0f32; n];
    let view = w.view();
    for _ in 0..3 {
        cpu::gemv(&view, &x, &mut y).unwrap();
    }
    let before = common::global_allocs();
    for _ in 0..10 {
        cpu::gemv(&view, &x, &mut y).unwrap();
    }
    let after = common::global_allocs();
    assert_eq!(after - before, 0, "10 warm GEMVs allocated {} times", after - before);
    // The counter works.
    let v: Vec<u8> = Vec::with_capacity(10);
    assert!(common::global_allocs() > after);
    drop(v);
}

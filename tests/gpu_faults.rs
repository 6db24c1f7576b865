//! GPU failure modes become typed errors, never panics: a destroyed (lost) device, allocations
//! beyond the device's limits, variants the device cannot run. Also: the buffer pool reuses
//! buffers across plans.

use kestrel::backend::gpu::{self, Activation, GpuContext, GpuMatrix, GpuOptions, KernelVariant, MatmulPlan};
use kestrel::rng::SplitMix64;
use kestrel::selftest::make_case;
use kestrel::tensor::Scheme;
use kestrel::Error;

fn context() -> GpuContext {
    GpuContext::new(&GpuOptions { allow_software: true }).expect("GPU tests are mandatory: install mesa-vulkan-drivers")
}

#[test]
fn a_lost_device_gives_device_lost_errors() {
    let ctx = context();
    let mut rng = SplitMix64::new(5);
    let case = make_case(&mut rng, Scheme::Q4 { group: 32, symmetric: false }, 1, 16, 64, 0).unwrap();
    let gw = GpuMatrix::upload(&ctx, &case.packed.view()).unwrap();
    let plan = MatmulPlan::new(&ctx, &gw, 1, KernelVariant::PORTABLE).unwrap();
    let mut y = vec![0f32; 16];
    plan.run(&ctx, &case.x, &mut y).unwrap();

    ctx.device.destroy();
    let err = plan.run(&ctx, &case.x, &mut y).unwrap_err();
    assert!(matches!(err, Error::DeviceLost { .. }), "{err}");
    let err = GpuMatrix::upload(&ctx, &case.packed.view()).err().expect("upload on a lost device must fail");
    assert!(matches!(err, Error::DeviceLost { .. }), "{err}");
}

#[test]
fn oversized_buffers_are_out_of_memory_errors() {
    let ctx = context();
    let too_big = ctx.limits.max_storage_buffer_binding_size.min(ctx.limits.max_buffer_size) + 16;
    let err = ctx.zeroed_buffer("huge", too_big, wgpu::BufferUsages::STORAGE).unwrap_err();
    assert!(matches!(err, Error::GpuOutOfMemory { .. }), "{err}");
    assert!(err.to_string().contains("huge"), "{err}");
}

#[test]
fn variants_the_device_lacks_or_that_do_not_exist_are_refused() {
    let ctx = context();
    let mut rng = SplitMix64::new(6);
    let case = make_case(&mut rng, Scheme::Q8, 1, 8, 32, 0).unwrap();
    let gw = GpuMatrix::upload(&ctx, &case.packed.view()).unwrap();
    let bad_rows = KernelVariant { rows: 5, ..KernelVariant::PORTABLE };
    assert!(matches!(MatmulPlan::new(&ctx, &gw, 1, bad_rows), Err(Error::InvalidArgument { .. })));
    assert!(matches!(MatmulPlan::new(&ctx, &gw, 0, KernelVariant::PORTABLE), Err(Error::InvalidArgument { .. })));
    if !ctx.features.shader_f16 {
        let f16 = KernelVariant { activation: Activation::F16, ..KernelVariant::PORTABLE };
        assert!(matches!(MatmulPlan::new(&ctx, &gw, 1, f16), Err(Error::Unsupported { .. })));
    }
}

#[test]
fn dropped_plans_return_their_buffers_to_the_pool() {
    let ctx = context();
    let mut rng = SplitMix64::new(7);
    let case = make_case(&mut rng, Scheme::Q4 { group: 64, symmetric: true }, 1, 40, 200, 2).unwrap();
    let gw = GpuMatrix::upload(&ctx, &case.packed.view()).unwrap();
    assert_eq!(ctx.pooled_free(), 0);
    let plan = MatmulPlan::new(&ctx, &gw, 1, gpu::default_variant(&ctx)).unwrap();
    drop(plan);
    let pooled = ctx.pooled_free();
    assert!(pooled >= 3, "x, y and read-back buffers go back to the pool ({pooled})");
    // A second plan of the same shape takes them again, and still computes the right thing
    // (reused buffers are cleared: stale values must not leak into padding).
    let plan = MatmulPlan::new(&ctx, &gw, 1, gpu::default_variant(&ctx)).unwrap();
    assert_eq!(ctx.pooled_free(), 0);
    let mut y = vec![0f32; 40];
    plan.run(&ctx, &case.x, &mut y).unwrap();
    let err = kestrel::tol::rel_l2(&y, &case.reference);
    assert!(kestrel::tol::Tol::QUANT.accepts(err), "{err:e}");
}

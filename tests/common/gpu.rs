//! Shared harness of the GPU op tests: one lavapipe-or-better context per test binary (a
//! missing adapter fails, it does not skip), seeded random data, and arena layout constants.

use std::sync::OnceLock;

use kestrel::backend::gpu::{GpuContext, GpuOptions};
use kestrel::rng::SplitMix64;

pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        GpuContext::new(&GpuOptions { allow_software: true })
            .expect("GPU tests are mandatory: install a Vulkan driver (mesa-vulkan-drivers gives lavapipe)")
    })
}

pub fn seeded(test: &str) -> SplitMix64 {
    let seed = std::env::var("KESTREL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("{test}: seed {seed} (replay with KESTREL_SEED={seed})");
    SplitMix64::new(seed)
}

pub fn range(rng: &mut SplitMix64, lo: usize, hi: usize) -> usize {
    lo + rng.below((hi - lo + 1) as u64) as usize
}

pub fn normals(rng: &mut SplitMix64, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.normal() * scale).collect()
}

pub const GUARD: f32 = -7777.25;
/// Floats per 256 bytes.
pub const ALIGN: usize = 64;

//! `kestrel bench`: GEMV/GEMM throughput against the copy bandwidth of the same device, measured
//! in the same run. On shared machines only the ratio means much; absolute numbers count on
//! real boards.

use std::time::Instant;

use crate::backend::gpu::{self, Activation, CopyBench, GpuContext, GpuMatrix, KernelVariant, MatmulPlan, Reduction};
use crate::backend::{cpu, BackendKind};
use crate::error::{Error, Result};
use crate::quant;
use crate::rng::SplitMix64;
use crate::tensor::{PackedMatrix, Scheme};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub scheme: Scheme,
    pub n: usize,
    pub k: usize,
    /// Activation rows: 1 is a GEMV.
    pub m: usize,
    pub backend: BackendKind,
    /// Timed repetitions; the median is reported.
    pub runs: usize,
    /// GPU only: reduction (None = the best this device has).
    pub reduction: Option<Reduction>,
    /// GPU only: activation storage (None = f32).
    pub activation: Option<Activation>,
    /// GPU only: GEMV rows per workgroup (None = the default, 4).
    pub rows: Option<u32>,
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub median_us: f64,
    pub min_us: f64,
    /// Bytes one product must move: weights, scales, activations, outputs.
    pub bytes: usize,
    pub gbps: f64,
    /// Copy bandwidth (read + write bytes per second) measured in the same run.
    pub copy_gbps: f64,
    pub ratio: f64,
    /// GFLOP/s (2 m n k per product).
    pub gflops: f64,
    pub device: String,
    pub variant: String,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Random weights quantized to the benchmark's format.
pub fn bench_matrix(scheme: Scheme, n: usize, k: usize, seed: u64) -> Result<PackedMatrix> {
    let mut rng = SplitMix64::new(seed);
    quant::quantize(&rng.normal_vec(n * k), n, k, scheme)
}

fn finish(
    times_us: &mut [f64],
    bytes: usize,
    flops: f64,
    copy_gbps: f64,
    device: String,
    variant: String,
) -> BenchResult {
    let median_us = median(times_us);
    let min_us = times_us.iter().copied().fold(f64::INFINITY, f64::min);
    let gbps = bytes as f64 / (median_us * 1e3);
    BenchResult {
        median_us,
        min_us,
        bytes,
        gbps,
        copy_gbps,
        ratio: gbps / copy_gbps,
        gflops: flops / (median_us * 1e3),
        device,
        variant,
    }
}

/// Multi-threaded memcpy bandwidth over buffers of at least `bytes` (and at least 64 MiB, to get
/// past the caches): the CPU ceiling.
pub fn cpu_copy_gbps(bytes: usize, runs: usize) -> f64 {
    let len = bytes.max(64 << 20) / 4;
    let src = vec![1u32; len];
    let mut dst = vec![0u32; len];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = len.div_ceil(threads);
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + 1 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (d, sc) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(sc));
            }
        });
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&dst);
    (2 * len * 4) as f64 / median(&mut times) / 1e9
}

/// Runs the benchmark on the CPU.
pub fn bench_cpu(cfg: &BenchConfig, w: &PackedMatrix) -> Result<BenchResult> {
    let view = w.view();
    let mut rng = SplitMix64::new(7);
    let x = rng.normal_vec(cfg.m * cfg.k);
    let mut y = vec![0f32; cfg.m * cfg.n];
    let run = |y: &mut [f32]| if cfg.m == 1 { cpu::gemv(&view, &x, y) } else { cpu::gemm(&view, &x, cfg.m, y) };
    run(&mut y)?; // warm-up: page in the weights, start the threads once
    let mut times = Vec::with_capacity(cfg.runs);
    for _ in 0..cfg.runs {
        let t = Instant::now();
        run(&mut y)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    std::hint::black_box(&y);
    let bytes = view.weight_bytes() + cfg.m * (cfg.k + cfg.n) * 4;
    let copy = cpu_copy_gbps(view.weight_bytes(), 5);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(finish(
        &mut times,
        bytes,
        2.0 * (cfg.m * cfg.n * cfg.k) as f64,
        copy,
        format!("cpu ({threads} threads)"),
        "cpu".into(),
    ))
}

/// Times `encode` (recording `repeat` products) on the GPU: per-product microseconds, median over
/// `runs` submissions.
fn time_gpu(
    ctx: &GpuContext,
    runs: usize,
    repeat: usize,
    encode: impl Fn(&mut wgpu::CommandEncoder, usize),
) -> Result<Vec<f64>> {
    let submit = |repeat: usize| -> Result<f64> {
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bench") });
        encode(&mut enc, repeat);
        let t = Instant::now();
        ctx.queue.submit([enc.finish()]);
        ctx.wait()?;
        Ok(t.elapsed().as_secs_f64() * 1e6 / repeat as f64)
    };
    submit(1)?; // warm-up: pipelines, residency
    (0..runs).map(|_| submit(repeat)).collect()
}

/// How many products to batch per submission so one submission takes about `target_us`.
fn batch_size(ctx: &GpuContext, target_us: f64, encode: &impl Fn(&mut wgpu::CommandEncoder, usize)) -> Result<usize> {
    let probe = time_gpu(ctx, 1, 1, encode)?[0].max(1.0);
    Ok(((target_us / probe) as usize).clamp(1, 200))
}

/// Runs the benchmark on the GPU.
pub fn bench_gpu(ctx: &GpuContext, cfg: &BenchConfig, w: &PackedMatrix) -> Result<BenchResult> {
    let default = gpu::default_variant(ctx);
    let variant = KernelVariant {
        reduction: cfg.reduction.unwrap_or(default.reduction),
        activation: cfg.activation.unwrap_or(default.activation),
        rows: cfg.rows.unwrap_or(default.rows),
    };
    let gw = GpuMatrix::upload(ctx, &w.view())?;
    let plan = MatmulPlan::new(ctx, &gw, cfg.m, variant)?;
    let mut rng = SplitMix64::new(7);
    plan.upload_x(ctx, &rng.normal_vec(cfg.m * cfg.k))?;
    let encode = |enc: &mut wgpu::CommandEncoder, repeat: usize| plan.encode(enc, repeat);
    let repeat = batch_size(ctx, 20_000.0, &encode)?;
    let mut times = time_gpu(ctx, cfg.runs, repeat, encode)?;

    let copy = CopyBench::new(ctx, gw.weight_bytes)?;
    let copy_encode = |enc: &mut wgpu::CommandEncoder, repeat: usize| copy.encode(enc, repeat);
    let copy_repeat = batch_size(ctx, 20_000.0, &copy_encode)?;
    let mut copy_times = time_gpu(ctx, cfg.runs.max(5), copy_repeat, copy_encode)?;
    let copy_gbps = copy.bytes_moved as f64 / (median(&mut copy_times) * 1e3);
    Ok(finish(
        &mut times,
        plan.bytes_moved,
        2.0 * (cfg.m * cfg.n * cfg.k) as f64,
        copy_gbps,
        ctx.adapter_name(),
        variant.name(),
    ))
}

/// Runs `cfg` on its backend.
pub fn run(cfg: &BenchConfig, gpu: Option<&GpuContext>) -> Result<BenchResult> {
    if cfg.n == 0 || cfg.k == 0 || cfg.m == 0 || cfg.runs == 0 {
        return Err(Error::InvalidArgument { reason: "n, k, m and runs must be positive".into() });
    }
    let w = bench_matrix(cfg.scheme, cfg.n, cfg.k, 42)?;
    match (cfg.backend, gpu) {
        (BackendKind::Cpu, _) => bench_cpu(cfg, &w),
        (BackendKind::Gpu, Some(ctx)) => bench_gpu(ctx, cfg, &w),
        (BackendKind::Gpu, None) => Err(Error::NoAdapter { reason: "the GPU benchmark needs a GPU context".into() }),
    }
}

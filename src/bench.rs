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
    /// How time was measured: `wall-clock` (CPU, or a GPU without timestamp queries) or
    /// `gpu-timestamps`.
    pub timing: &'static str,
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
        timing: "wall-clock",
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

/// GPU timestamps around a compute pass, where the device has TIMESTAMP_QUERY: device time
/// without submission and wake-up overhead.
struct GpuTimer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

impl GpuTimer {
    fn new(ctx: &GpuContext) -> Result<Option<Self>> {
        if !ctx.features.timestamp_query {
            return Ok(None);
        }
        let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve =
            ctx.zeroed_buffer("timestamps", 16, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC)?;
        let readback =
            ctx.zeroed_buffer("timestamp read-back", 16, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST)?;
        Ok(Some(Self { queries, resolve, readback }))
    }

    fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// Seconds between the two timestamps of the last finished submission.
    fn elapsed(&self, ctx: &GpuContext) -> Result<f64> {
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("timestamps") });
        enc.resolve_query_set(&self.queries, 0..2, &self.resolve, 0);
        ctx.queue.submit([enc.finish()]);
        let mut raw = [0f32; 4];
        ctx.read_f32(&self.resolve, &self.readback, &mut raw)?;
        let ticks: [u64; 2] = bytemuck::cast(raw);
        Ok(ticks[1].wrapping_sub(ticks[0]) as f64 * ctx.queue.get_timestamp_period() as f64 * 1e-9)
    }
}

/// Records `repeat` products into one compute pass, with timestamps if given.
type Encode<'a> = dyn Fn(&mut wgpu::CommandEncoder, usize, Option<wgpu::ComputePassTimestampWrites>) + 'a;

/// Per-product microseconds of `encode`, median over `runs` submissions of `repeat` products:
/// GPU timestamps where the device has them, otherwise wall-clock time around submit-and-wait.
fn time_gpu(
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    runs: usize,
    repeat: usize,
    encode: &Encode,
) -> Result<Vec<f64>> {
    let submit = |repeat: usize| -> Result<f64> {
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bench") });
        encode(&mut enc, repeat, timer.map(GpuTimer::writes));
        let t = Instant::now();
        ctx.queue.submit([enc.finish()]);
        ctx.wait()?;
        let seconds = match timer {
            Some(timer) => timer.elapsed(ctx)?,
            None => t.elapsed().as_secs_f64(),
        };
        Ok(seconds * 1e6 / repeat as f64)
    };
    submit(1)?; // warm-up: pipelines, residency
    (0..runs).map(|_| submit(repeat)).collect()
}

/// How many products to batch per submission so one submission takes about `target_us`.
fn batch_size(ctx: &GpuContext, timer: Option<&GpuTimer>, target_us: f64, encode: &Encode) -> Result<usize> {
    let probe = time_gpu(ctx, timer, 1, 1, encode)?[0].max(1.0);
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
    let timer = GpuTimer::new(ctx)?;
    let encode: &Encode = &|enc, repeat, ts| plan.encode_timed(enc, repeat, ts);
    let repeat = batch_size(ctx, timer.as_ref(), 20_000.0, encode)?;
    let mut times = time_gpu(ctx, timer.as_ref(), cfg.runs, repeat, encode)?;

    let copy = CopyBench::new(ctx, gw.weight_bytes)?;
    let copy_encode: &Encode = &|enc, repeat, ts| copy.encode(enc, repeat, ts);
    let copy_repeat = batch_size(ctx, timer.as_ref(), 20_000.0, copy_encode)?;
    let mut copy_times = time_gpu(ctx, timer.as_ref(), cfg.runs.max(5), copy_repeat, copy_encode)?;
    let copy_gbps = copy.bytes_moved as f64 / (median(&mut copy_times) * 1e3);
    let mut r = finish(
        &mut times,
        plan.bytes_moved,
        2.0 * (cfg.m * cfg.n * cfg.k) as f64,
        copy_gbps,
        ctx.adapter_name(),
        variant.name(),
    );
    r.timing = if timer.is_some() { "gpu-timestamps" } else { "wall-clock" };
    Ok(r)
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

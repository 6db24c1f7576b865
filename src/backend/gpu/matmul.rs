//! GEMV and GEMM on the GPU: weights uploaded once, a plan per (matrix, rows) that owns its
//! activation, output and read-back buffers, bind groups and parameter blocks, all made at load.
//! A run writes the activations, submits the recorded dispatches and reads the output.

use std::sync::Arc;

use super::context::GpuContext;
use super::pool::PooledBuffer;
use std::sync::Mutex;

use super::shaders::{self, Activation, KernelVariant, Reduction, GEMM_TILE, GEMV_ROW_CHOICES};
use crate::error::{Error, Result};
use crate::tensor::{Fp4Scale, MatrixView, Scheme};

/// Mirrors `struct Params` in shaders/common.wgsl field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MatmulParams {
    pub n: u32,
    pub k: u32,
    pub m: u32,
    pub row_words: u32,
    pub aux_row_words: u32,
    pub x_stride: u32,
    pub y_stride: u32,
    pub accumulate: u32,
    pub group_words: u32,
    pub _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<MatmulParams>() == 48);

const MAX_GROUPS_PER_DIM: u32 = 65535;

/// A weight matrix resident on the GPU, in the file's layout.
pub struct GpuMatrix {
    pub n: usize,
    pub k: usize,
    pub scheme: Scheme,
    main: wgpu::Buffer,
    aux: wgpu::Buffer,
    lorc: Option<(usize, wgpu::Buffer, wgpu::Buffer)>,
    /// Bytes the GEMV streams: weights, scales, LoRC factors.
    pub weight_bytes: usize,
}

impl GpuMatrix {
    /// Uploads the components as they are: the file layout is the shader layout.
    pub fn upload(ctx: &GpuContext, w: &MatrixView) -> Result<Self> {
        let main = ctx.storage_buffer("weights", bytemuck::cast_slice(w.main))?;
        let aux = ctx.storage_buffer("weight scales", bytemuck::cast_slice(w.aux))?;
        let lorc = match w.lorc {
            Some(l) => Some((
                l.rank,
                ctx.storage_buffer("lorc U", bytemuck::cast_slice(l.u))?,
                ctx.storage_buffer("lorc V", bytemuck::cast_slice(l.v))?,
            )),
            None => None,
        };
        Ok(Self { n: w.n, k: w.k, scheme: w.scheme, main, aux, lorc, weight_bytes: w.weight_bytes() })
    }
}

struct Pass {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
    _params: wgpu::Buffer,
}

/// Everything one product needs, created once; [`MatmulPlan::run`] allocates no GPU resources.
pub struct MatmulPlan {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub variant: KernelVariant,
    /// Activations per row in the x buffer: K padded to the format's row, then to whole vec4s.
    x_stride: usize,
    /// Host-side staging for x in the buffer's layout (padding and f16 conversion), reused by
    /// every run so runs do not allocate.
    x_host: Mutex<Vec<u8>>,
    x: PooledBuffer,
    y: PooledBuffer,
    staging: PooledBuffer,
    passes: Vec<Pass>,
    /// LoRC's intermediate V^T x and the empty scale buffer its f16 passes bind.
    _lorc_buffers: Vec<PooledBuffer>,
    /// Bytes one run must move: weights, scales, activations in, outputs out.
    pub bytes_moved: usize,
}

fn module_name(scheme: Scheme, variant: KernelVariant) -> String {
    format!("{}_{}", shaders::format_source(scheme).0, variant.name())
}

/// Activations per row in a buffer read as vec4.
fn vec4_stride(elems: usize) -> usize {
    elems.next_multiple_of(4)
}

fn constants(scheme: Scheme) -> Vec<(&'static str, f64)> {
    match scheme {
        Scheme::Fp4 { scale, .. } => vec![("FP4_SCALE_F16", if scale == Fp4Scale::F16 { 1.0 } else { 0.0 })],
        _ => vec![],
    }
}

struct PassSpec<'a> {
    scheme: Scheme,
    n: usize,
    k: usize,
    m: usize,
    weights: &'a wgpu::Buffer,
    aux: &'a wgpu::Buffer,
    x: &'a wgpu::Buffer,
    x_stride: usize,
    y: &'a wgpu::Buffer,
    y_stride: usize,
    accumulate: bool,
}

fn make_pass(ctx: &GpuContext, s: &PassSpec, variant: KernelVariant) -> Result<Pass> {
    let gemv = s.m == 1;
    let entry = if gemv { "gemv" } else { "gemm" };
    let pipeline = ctx.pipeline(
        &module_name(s.scheme, variant),
        || shaders::matmul_module(s.scheme, variant),
        entry,
        &constants(s.scheme),
        true,
    )?;
    let params = MatmulParams {
        n: s.n as u32,
        k: s.k as u32,
        m: s.m as u32,
        row_words: s.scheme.row_words(s.k) as u32,
        aux_row_words: s.scheme.aux_row_words(s.k) as u32,
        x_stride: s.x_stride as u32,
        y_stride: s.y_stride as u32,
        accumulate: s.accumulate as u32,
        group_words: s.scheme.group().map_or(1, |g| g / 8) as u32,
        _pad: [0; 3],
    };
    let params_buf =
        ctx.zeroed_buffer("matmul params", 48, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST)?;
    ctx.queue.write_buffer(&params_buf, 0, bytemuck::bytes_of(&params));
    let bind_group = ctx.scoped("binding matmul buffers", || {
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &ctx.matmul_layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: params_buf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: s.weights.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: s.aux.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: s.x.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 4, resource: s.y.as_entire_binding() },
            ],
        })
    })?;
    let groups = if gemv {
        let total = (s.n as u32).div_ceil(variant.rows);
        let x = total.min(MAX_GROUPS_PER_DIM);
        (x, total.div_ceil(x))
    } else {
        let gx = (s.n as u32).div_ceil(GEMM_TILE);
        let gy = (s.m as u32).div_ceil(GEMM_TILE);
        if gx > MAX_GROUPS_PER_DIM || gy > MAX_GROUPS_PER_DIM {
            return Err(Error::Unsupported {
                what: format!("GEMM of {} x {} outputs exceeds the dispatch grid", s.m, s.n),
            });
        }
        (gx, gy)
    };
    Ok(Pass { pipeline, bind_group, groups, _params: params_buf })
}

impl MatmulPlan {
    /// Plans Y[m, n] = X[m, k] W^T for `m` activation rows (1 = GEMV kernels, more = GEMM).
    pub fn new(ctx: &GpuContext, w: &GpuMatrix, m: usize, variant: KernelVariant) -> Result<Self> {
        if m == 0 {
            return Err(Error::InvalidArgument { reason: "a matmul needs at least one activation row".into() });
        }
        let unsupported = |what: &str| Err(Error::Unsupported { what: format!("{what} on {}", ctx.adapter_name()) });
        if variant.reduction == Reduction::Subgroup && !ctx.features.subgroup {
            return unsupported("subgroup kernels (no SUBGROUP feature)");
        }
        if variant.activation == Activation::F16 && !ctx.features.shader_f16 {
            return unsupported("f16 activations (no SHADER_F16 feature)");
        }
        if !GEMV_ROW_CHOICES.contains(&variant.rows) {
            return Err(Error::InvalidArgument {
                reason: format!("GEMV rows per workgroup must be one of {GEMV_ROW_CHOICES:?}, not {}", variant.rows),
            });
        }
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let act_bytes = variant.activation.bytes();
        let x_stride = vec4_stride(w.scheme.padded_k(w.k));
        // Padding is zero (x_host is zeroed once, runs write only the first k of a row, and every
        // upload writes the whole row), so the padded weight codes multiply zeros.
        let x_len = m * x_stride * act_bytes;
        let x = ctx.pooled_buffer("activations", x_len as u64, storage)?;
        let y = ctx.pooled_buffer("outputs", (m * w.n * 4) as u64, storage)?;
        let read = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let staging = ctx.pooled_buffer("read-back", (m * w.n * 4) as u64, read)?;
        let main = PassSpec {
            scheme: w.scheme,
            n: w.n,
            k: w.k,
            m,
            weights: &w.main,
            aux: &w.aux,
            x: &x,
            x_stride,
            y: &y,
            y_stride: w.n,
            accumulate: false,
        };
        let mut passes = vec![make_pass(ctx, &main, variant)?];
        let mut bytes_moved = w.weight_bytes + m * (w.k * act_bytes + w.n * 4);
        let mut lorc_buffers = Vec::new();
        if let Some((rank, u, v)) = &w.lorc {
            // t = V^T x ([m, rank], f32), then y += U t: two f16-weight products. The second
            // reads t, which is f32 whatever the variant's activations are.
            let t_stride = vec4_stride(Scheme::F16.padded_k(*rank));
            let t = ctx.pooled_buffer("lorc t", (m * t_stride * 4) as u64, storage)?;
            let dummy = ctx.pooled_buffer("no scales", 16, storage)?;
            let v_spec = PassSpec {
                scheme: Scheme::F16,
                n: *rank,
                k: w.k,
                m,
                weights: v,
                aux: &dummy,
                x: &x,
                x_stride,
                y: &t,
                y_stride: t_stride,
                accumulate: false,
            };
            let u_spec = PassSpec {
                scheme: Scheme::F16,
                n: w.n,
                k: *rank,
                m,
                weights: u,
                aux: &dummy,
                x: &t,
                x_stride: t_stride,
                y: &y,
                y_stride: w.n,
                accumulate: true,
            };
            passes.push(make_pass(ctx, &v_spec, variant)?);
            passes.push(make_pass(ctx, &u_spec, KernelVariant { activation: Activation::F32, ..variant })?);
            bytes_moved += m * (w.n + w.k) * 4;
            lorc_buffers.extend([t, dummy]);
        }
        Ok(Self {
            m,
            n: w.n,
            k: w.k,
            variant,
            x_stride,
            x_host: Mutex::new(vec![0u8; x_len]),
            x,
            y,
            staging,
            passes,
            _lorc_buffers: lorc_buffers,
            bytes_moved,
        })
    }

    /// Records the product's dispatches `repeat` times into one compute pass.
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder, repeat: usize) {
        self.encode_timed(enc, repeat, None)
    }

    /// As [`MatmulPlan::encode`], writing GPU timestamps at the start and end of the pass.
    pub fn encode_timed(
        &self,
        enc: &mut wgpu::CommandEncoder,
        repeat: usize,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
    ) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("matmul"), timestamp_writes });
        for _ in 0..repeat {
            for p in &self.passes {
                pass.set_pipeline(&p.pipeline);
                pass.set_bind_group(0, &p.bind_group, &[]);
                pass.dispatch_workgroups(p.groups.0, p.groups.1, 1);
            }
        }
    }

    /// Writes `x` ([m, k], row-major) into the activation buffer: padded rows, f16 if the
    /// variant stores f16.
    pub fn upload_x(&self, ctx: &GpuContext, x: &[f32]) -> Result<()> {
        if x.len() != self.m * self.k {
            return Err(Error::shape("gpu matmul", format!("x of {} x {}", self.m, self.k), x.len()));
        }
        let mut host =
            self.x_host.lock().map_err(|_| Error::Unsupported { what: "activation staging lock poisoned".into() })?;
        let bytes = self.variant.activation.bytes();
        for (row, dst) in x.chunks_exact(self.k).zip(host.chunks_exact_mut(self.x_stride * bytes)) {
            match self.variant.activation {
                Activation::F32 => dst[..self.k * 4].copy_from_slice(bytemuck::cast_slice(row)),
                Activation::F16 => {
                    for (v, d) in row.iter().zip(dst.chunks_exact_mut(2)) {
                        d.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
                    }
                }
            }
        }
        ctx.queue.write_buffer(&self.x, 0, &host);
        Ok(())
    }

    /// Runs the product: upload, dispatch, read back into `y` ([m, n]).
    pub fn run(&self, ctx: &GpuContext, x: &[f32], y: &mut [f32]) -> Result<()> {
        if y.len() != self.m * self.n {
            return Err(Error::shape("gpu matmul", format!("y of {} x {}", self.m, self.n), y.len()));
        }
        ctx.check_alive()?;
        self.upload_x(ctx, x)?;
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("matmul") });
        self.encode(&mut enc, 1);
        ctx.queue.submit([enc.finish()]);
        ctx.read_f32(&self.y, &self.staging, y)
    }
}

/// Convenience: uploads `w`, plans and runs one product. For tests and one-off calls; loops keep
/// a [`MatmulPlan`].
pub fn matmul_once(ctx: &GpuContext, w: &MatrixView, x: &[f32], m: usize, variant: KernelVariant) -> Result<Vec<f32>> {
    let gw = GpuMatrix::upload(ctx, w)?;
    let plan = MatmulPlan::new(ctx, &gw, m, variant)?;
    let mut y = vec![0f32; m * w.n];
    plan.run(ctx, x, &mut y)?;
    Ok(y)
}

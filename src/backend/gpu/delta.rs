//! One conv layer's temporal delta state on the GPU (`shaders/delta.wgsl`; the CPU twin is
//! `ops::DeltaConv2d`). A step records five dispatches: reset (the fired counter), fire (each
//! input entry that moved by its channel's theta or more updates x_ref and is appended to the
//! fired list by an atomic counter), scatter_args (the list's length becomes the indirect
//! dispatch size, on the GPU: the host never reads the count back, so a step does not stall the
//! queue), scatter (each fired entry times each output channel of its group adds w dx into the
//! outputs its taps reach, with atomic float adds) and activate. A keyframe runs the dense conv
//! kernel into y, activates, and copies the input into x_ref.
//!
//! The layer reads its input from, and writes its output to, any buffer at an element offset:
//! standalone it owns both ([`GpuDeltaConv2d::new`]); in a graph they are the activation arena
//! ([`GpuDeltaConv2d::on_views`], used by the GPU executor's delta mode).

use std::sync::Arc;

use super::context::GpuContext;
use super::graph_ops::{self as gops, GpuStep, GpuView};
use super::shaders;
use crate::error::{Error, Result};
use crate::ops::{conv2d_output_shape, Activation, Conv2d};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    m: u32,
    cg: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    sh: u32,
    sw: u32,
    dh: u32,
    dw: u32,
    pt: u32,
    pl: u32,
    group: u32,
    x_off: u32,
    act: u32,
    out_off: u32,
}

/// Threads per workgroup and workgroups per grid row (the shader's WG and ROW).
const WG: u32 = 64;
const ROW: u32 = 32768;

fn grid(threads: usize) -> (u32, u32) {
    let groups = (threads as u32).div_ceil(WG).max(1);
    (groups.min(ROW), groups.div_ceil(ROW))
}

struct Dispatch {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
}

impl Dispatch {
    fn set(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
    }
}

/// Where a standalone layer keeps its input and output.
struct Own {
    input: wgpu::Buffer,
    out: wgpu::Buffer,
}

/// A conv layer's delta state on the GPU.
pub struct GpuDeltaConv2d {
    x_shape: Vec<usize>,
    out_shape: [usize; 4],
    x_ref: wgpu::Buffer,
    counter: wgpu::Buffer,
    staging: wgpu::Buffer,
    reset: Dispatch,
    fire: Dispatch,
    args_step: Dispatch,
    scatter: Dispatch,
    activate: Dispatch,
    copy_ref: Dispatch,
    args: wgpu::Buffer,
    dense: Vec<GpuStep>,
    own: Option<Own>,
    _keep: Vec<wgpu::Buffer>,
}

impl GpuDeltaConv2d {
    /// A standalone delta layer for inputs of `x_shape`, owning its input and output buffers.
    /// `theta` >= 0 is one value for every input channel, or one per channel; 0 tracks the dense
    /// conv up to float rounding. The activation may be none, ReLU, sigmoid or SiLU.
    pub fn new(
        ctx: &GpuContext,
        x_shape: &[usize],
        w: &[f32],
        w_shape: &[usize],
        bias: Option<&[f32]>,
        p: &Conv2d,
        theta: &[f32],
    ) -> Result<Self> {
        let out_shape = conv2d_output_shape(x_shape, w_shape, p)?;
        let rw = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let x_len: usize = x_shape.iter().product();
        let input = ctx.zeroed_buffer("delta input", (x_len * 4) as u64, rw)?;
        let out = ctx.zeroed_buffer("delta output", (out_shape.iter().product::<usize>() * 4) as u64, rw)?;
        let mut layer = Self::on_views(
            ctx,
            GpuView::new(&input, 0, x_shape),
            w,
            w_shape,
            bias,
            p,
            theta,
            GpuView::new(&out, 0, &out_shape),
        )?;
        layer.own = Some(Own { input, out });
        Ok(layer)
    }

    /// A delta layer reading `x` and writing `out` (views into any storage buffers, such as a
    /// graph's activation arena).
    #[allow(clippy::too_many_arguments)]
    pub fn on_views(
        ctx: &GpuContext,
        x: GpuView,
        w: &[f32],
        w_shape: &[usize],
        bias: Option<&[f32]>,
        p: &Conv2d,
        theta: &[f32],
        out: GpuView,
    ) -> Result<Self> {
        let op = "gpu delta_conv2d";
        let xs = x.shape;
        let out_shape = conv2d_output_shape(xs, w_shape, p)?;
        crate::ops::check_len(op, "weights", w.len(), w_shape)?;
        crate::ops::check_len(op, "output", out.numel(), &out_shape)?;
        if let Some(b) = bias {
            if b.len() != w_shape[0] {
                return Err(Error::shape(op, format!("bias of {} values", w_shape[0]), b.len()));
            }
        }
        if theta.iter().any(|t| !t.is_finite() || *t < 0.0) || !(theta.len() == 1 || theta.len() == xs[1]) {
            return Err(Error::InvalidArgument {
                reason: format!("{op}: {} thresholds for {} channels, each finite and >= 0", theta.len(), xs[1]),
            });
        }
        let act = match p.activation {
            Activation::None => 0,
            Activation::Relu => 1,
            Activation::Sigmoid => 2,
            Activation::Silu => 3,
            ref other => return Err(Error::Unsupported { what: format!("{op} with activation {other:?}") }),
        };
        let ws = w_shape;
        let (x_off, out_off) = (x.offset / 4, out.offset / 4);
        let params = Params {
            n: xs[0] as u32,
            c: xs[1] as u32,
            h: xs[2] as u32,
            w: xs[3] as u32,
            m: ws[0] as u32,
            cg: ws[1] as u32,
            kh: ws[2] as u32,
            kw: ws[3] as u32,
            oh: out_shape[2] as u32,
            ow: out_shape[3] as u32,
            sh: p.strides[0] as u32,
            sw: p.strides[1] as u32,
            dh: p.dilations[0] as u32,
            dw: p.dilations[1] as u32,
            pt: p.pads[0] as u32,
            pl: p.pads[1] as u32,
            group: p.group as u32,
            x_off: x_off as u32,
            act,
            out_off: out_off as u32,
        };
        let x_len: usize = xs.iter().product();
        let out_len: usize = out_shape.iter().product();
        let rw = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let x_ref = ctx.zeroed_buffer("delta x_ref", (x_len * 4) as u64, rw)?;
        let counter = ctx.zeroed_buffer("delta counter", 16, rw)?;
        let fired = ctx.zeroed_buffer("delta fired list", (x_len * 4) as u64, rw)?;
        let dxs = ctx.zeroed_buffer("delta fired dx", (x_len * 4) as u64, rw)?;
        let weights = ctx.storage_buffer("delta weights", bytemuck::cast_slice(w))?;
        let per_channel: Vec<f32> = if theta.len() == 1 { vec![theta[0]; xs[1]] } else { theta.to_vec() };
        let thetas = ctx.storage_buffer("delta thresholds", bytemuck::cast_slice(&per_channel))?;
        let bias_buf = bias.map(|b| ctx.storage_buffer("delta bias", bytemuck::cast_slice(b))).transpose()?;
        let y = ctx.zeroed_buffer("delta y", (out_len * 4) as u64, rw)?;
        let args = ctx.zeroed_buffer(
            "delta indirect args",
            16,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::INDIRECT | wgpu::BufferUsages::COPY_DST,
        )?;
        let staging = ctx.zeroed_buffer(
            "delta read-back",
            (out_len.max(x_len).max(4) * 4) as u64,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let uniform =
            ctx.zeroed_buffer("delta params", 80, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST)?;
        ctx.queue.write_buffer(&uniform, 0, bytemuck::bytes_of(&params));
        let dispatch = |entry: &'static str, bindings: &[(u32, &wgpu::Buffer)]| -> Result<Dispatch> {
            let pipeline = ctx.pipeline("delta", || shaders::DELTA.to_string(), entry, &[], false)?;
            let entries: Vec<wgpu::BindGroupEntry> = bindings
                .iter()
                .map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() })
                .collect();
            let bind_group = ctx.scoped(&format!("binding delta {entry}"), || {
                ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(entry),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                })
            })?;
            Ok(Dispatch { pipeline, bind_group })
        };
        let reset = dispatch("reset", &[(3, &counter)])?;
        let fire = dispatch(
            "fire",
            &[(0, &uniform), (1, x.buffer), (2, &x_ref), (3, &counter), (4, &fired), (5, &dxs), (10, &thetas)],
        )?;
        let args_step = dispatch("scatter_args", &[(0, &uniform), (3, &counter), (9, &args)])?;
        let scatter =
            dispatch("scatter", &[(0, &uniform), (3, &counter), (4, &fired), (5, &dxs), (6, &weights), (7, &y)])?;
        let activate = dispatch("activate", &[(0, &uniform), (7, &y), (8, out.buffer)])?;
        let copy_ref = dispatch("copy_ref", &[(0, &uniform), (1, x.buffer), (2, &x_ref)])?;
        let linear = Conv2d { activation: Activation::None, ..p.clone() };
        let b_shape = [ws[0]];
        let dense = gops::conv2d(
            ctx,
            x,
            GpuView::new(&weights, 0, ws),
            bias_buf.as_ref().map(|b| GpuView::new(b, 0, &b_shape)),
            &linear,
            GpuView::new(&y, 0, &out_shape),
        )?;
        let mut keep = vec![fired, dxs, weights, thetas, uniform, y];
        keep.extend(bias_buf);
        Ok(Self {
            x_shape: xs.to_vec(),
            out_shape,
            x_ref,
            counter,
            staging,
            reset,
            fire,
            args_step,
            scatter,
            activate,
            copy_ref,
            args,
            dense,
            own: None,
            _keep: keep,
        })
    }

    pub fn output_shape(&self) -> [usize; 4] {
        self.out_shape
    }

    /// Records a keyframe into `pass`: the dense conv into y, the activation, x_ref = x.
    pub fn encode_keyframe(&self, pass: &mut wgpu::ComputePass<'_>) {
        for s in &self.dense {
            s.encode(pass);
        }
        let (gx, gy) = grid(self.out_shape.iter().product());
        self.activate.set(pass);
        pass.dispatch_workgroups(gx, gy, 1);
        let (gx, gy) = grid(self.x_shape.iter().product());
        self.copy_ref.set(pass);
        pass.dispatch_workgroups(gx, gy, 1);
    }

    /// Records a delta step into `pass`.
    pub fn encode_step(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.reset.set(pass);
        pass.dispatch_workgroups(1, 1, 1);
        let (gx, gy) = grid(self.x_shape.iter().product());
        self.fire.set(pass);
        pass.dispatch_workgroups(gx, gy, 1);
        self.args_step.set(pass);
        pass.dispatch_workgroups(1, 1, 1);
        self.scatter.set(pass);
        pass.dispatch_workgroups_indirect(&self.args, 0);
        let (gx, gy) = grid(self.out_shape.iter().product());
        self.activate.set(pass);
        pass.dispatch_workgroups(gx, gy, 1);
    }

    fn own(&self) -> Result<&Own> {
        self.own.as_ref().ok_or_else(|| Error::Unsupported {
            what: "uploading to a delta layer that reads a graph's arena (run the graph instead)".into(),
        })
    }

    fn submit(&self, ctx: &GpuContext, x: &[f32], key: bool) -> Result<()> {
        let own = self.own()?;
        crate::ops::check_len("gpu delta_conv2d", "input", x.len(), &self.x_shape)?;
        ctx.queue.write_buffer(&own.input, 0, bytemuck::cast_slice(x));
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("delta") });
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("delta"), timestamp_writes: None });
            if key {
                self.encode_keyframe(&mut pass);
            } else {
                self.encode_step(&mut pass);
            }
        }
        ctx.scoped("delta layer", || ctx.queue.submit([enc.finish()]))?;
        Ok(())
    }

    /// Standalone: the dense conv of `x`; both states restart from it.
    pub fn keyframe(&self, ctx: &GpuContext, x: &[f32]) -> Result<()> {
        self.submit(ctx, x, true)
    }

    /// Standalone: adds the fired part of `x - x_ref` to the output. Call
    /// [`GpuDeltaConv2d::keyframe`] first.
    pub fn step(&self, ctx: &GpuContext, x: &[f32]) -> Result<()> {
        self.submit(ctx, x, false)
    }

    /// Standalone: the activated output of the last step ([N, M, OH, OW]).
    pub fn read_output(&self, ctx: &GpuContext, out: &mut [f32]) -> Result<()> {
        crate::ops::check_len("gpu delta_conv2d", "output", out.len(), &self.out_shape)?;
        ctx.read_f32(&self.own()?.out, &self.staging, out)
    }

    /// Inputs that fired in the last step (reads the counter back: for tests and reports).
    pub fn fired(&self, ctx: &GpuContext) -> Result<usize> {
        let mut v = [0f32; 1];
        ctx.read_f32(&self.counter, &self.staging, &mut v)?;
        Ok(v[0].to_bits() as usize)
    }

    /// The fired counter (one u32 at offset 0), for callers batching their read-backs.
    pub fn counter(&self) -> &wgpu::Buffer {
        &self.counter
    }

    /// Input entries per step.
    pub fn input_len(&self) -> usize {
        self.x_shape.iter().product()
    }

    /// The reference input (for tests).
    pub fn read_reference(&self, ctx: &GpuContext, out: &mut [f32]) -> Result<()> {
        crate::ops::check_len("gpu delta_conv2d", "reference", out.len(), &self.x_shape)?;
        ctx.read_f32(&self.x_ref, &self.staging, out)
    }
}

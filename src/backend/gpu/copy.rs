//! The bandwidth ceiling for GPU benchmarks: a WGSL kernel copying vec4<u32> words.

use std::sync::Arc;

use super::context::GpuContext;
use super::shaders;
use crate::error::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CopyParams {
    len: u32,
    stride: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<CopyParams>() == 16);

const COPY_WG: u32 = 256;

/// A source and destination buffer of the same size and the recorded copy between them.
pub struct CopyBench {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: u32,
    _buffers: [wgpu::Buffer; 3],
    /// Bytes read plus bytes written by one copy.
    pub bytes_moved: usize,
}

impl CopyBench {
    /// Buffers of at least `bytes` each (rounded up to 16).
    pub fn new(ctx: &GpuContext, bytes: usize) -> Result<Self> {
        let bytes = bytes.max(16).next_multiple_of(16);
        let len = (bytes / 16) as u32;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let src = ctx.zeroed_buffer("copy src", bytes as u64, usage)?;
        let dst = ctx.zeroed_buffer("copy dst", bytes as u64, usage)?;
        // Enough threads to fill a large GPU, each copying a strided run of words.
        let groups = len.div_ceil(COPY_WG).clamp(1, 8192);
        let params = CopyParams { len, stride: groups * COPY_WG, _pad: [0; 2] };
        let pbuf = ctx.zeroed_buffer("copy params", 16, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST)?;
        ctx.queue.write_buffer(&pbuf, 0, bytemuck::bytes_of(&params));
        let pipeline = ctx.pipeline("copy", || shaders::COPY.to_string(), "copy", &[], false)?;
        let bind_group = ctx.scoped("binding copy buffers", || {
            ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("copy"),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: pbuf.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: src.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 2, resource: dst.as_entire_binding() },
                ],
            })
        })?;
        Ok(Self { pipeline, bind_group, groups, _buffers: [src, dst, pbuf], bytes_moved: 2 * bytes })
    }

    /// Records the copy `repeat` times, with GPU timestamps around the pass if given.
    pub fn encode(
        &self,
        enc: &mut wgpu::CommandEncoder,
        repeat: usize,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
    ) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("copy"), timestamp_writes });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        for _ in 0..repeat {
            pass.dispatch_workgroups(self.groups, 1, 1);
        }
    }
}

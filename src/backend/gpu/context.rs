//! The GPU device: adapter choice, feature probing, the pipeline cache, and error mapping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::pool::{size_class, BufferPool, PooledBuffer};
use crate::error::{Error, Result};

/// Environment variable that allows software adapters (lavapipe, WARP); tests and CI set it.
pub const ALLOW_SOFTWARE_ENV: &str = "KESTREL_ALLOW_SOFTWARE_GPU";

/// How to choose an adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Accept a software (CPU) adapter such as lavapipe.
    pub allow_software: bool,
}

impl GpuOptions {
    /// Options from the environment: `KESTREL_ALLOW_SOFTWARE_GPU=1` allows software adapters.
    pub fn from_env() -> Self {
        let allow = std::env::var(ALLOW_SOFTWARE_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        Self { allow_software: allow }
    }
}

/// What the device can do, as probed at start.
#[derive(Clone, Copy, Debug)]
pub struct GpuFeatures {
    pub shader_f16: bool,
    pub subgroup: bool,
    pub timestamp_query: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    module: String,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
}

/// A wgpu device and queue with kestrel's pipeline cache.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub features: GpuFeatures,
    pub limits: wgpu::Limits,
    /// The binding layout every matmul kernel declares (params, weights, scales, x, y). Explicit
    /// rather than derived, because a format that ignores its scales still binds a buffer there.
    pub matmul_layout: wgpu::BindGroupLayout,
    matmul_pipeline_layout: wgpu::PipelineLayout,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    pool: Arc<BufferPool>,
    lost: Arc<Mutex<Option<String>>>,
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl GpuContext {
    /// Chooses an adapter (Vulkan first, hardware before software), logs it, and opens a device
    /// with every optional feature kestrel has kernels for.
    pub fn new(options: &GpuOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let mut seen = Vec::new();
        let mut best: Option<(u32, wgpu::Adapter)> = None;
        for a in adapters {
            let info = a.get_info();
            seen.push(format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type));
            if info.device_type == wgpu::DeviceType::Cpu && !options.allow_software {
                log::info!("skipping software adapter {} (set {ALLOW_SOFTWARE_ENV}=1 to use it)", info.name);
                continue;
            }
            let backend_rank = if info.backend == wgpu::Backend::Vulkan { 0 } else { 1 };
            let score = type_rank(info.device_type) * 2 + backend_rank;
            if best.as_ref().is_none_or(|(s, _)| score < *s) {
                best = Some((score, a));
            }
        }
        let Some((_, adapter)) = best else {
            let reason = if seen.is_empty() {
                "no Vulkan, Metal or DX12 adapter found (is a Vulkan driver installed?)".to_string()
            } else {
                format!("only software adapters found [{}]; set {ALLOW_SOFTWARE_ENV}=1 to use them", seen.join(", "))
            };
            return Err(Error::NoAdapter { reason });
        };
        let info = adapter.get_info();
        log::info!(
            "GPU adapter: {} ({:?}, {:?}, driver {} {})",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info
        );

        let available = adapter.features();
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
        let required_features = available & wanted;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("kestrel"),
            required_features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::DeviceRequest { reason: e.to_string() })?;

        let lost = Arc::new(Mutex::new(None));
        let lost_flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut l) = lost_flag.lock() {
                *l = Some(format!("{reason:?}: {message}"));
            }
        });
        // Errors outside an error scope would otherwise panic inside wgpu: log them instead; the
        // operations that can fail run inside scopes and return typed errors.
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| log::error!("uncaptured GPU error: {e}")));

        let features = GpuFeatures {
            shader_f16: required_features.contains(wgpu::Features::SHADER_F16),
            subgroup: required_features.contains(wgpu::Features::SUBGROUP),
            timestamp_query: required_features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroup_min_size: adapter.get_info().subgroup_min_size,
            subgroup_max_size: adapter.get_info().subgroup_max_size,
        };
        log::info!("GPU features: {features:?}");
        let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        };
        let read = wgpu::BufferBindingType::Storage { read_only: true };
        let matmul_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("matmul"),
            entries: &[
                entry(0, wgpu::BufferBindingType::Uniform),
                entry(1, read),
                entry(2, read),
                entry(3, read),
                entry(4, wgpu::BufferBindingType::Storage { read_only: false }),
            ],
        });
        let matmul_pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("matmul"),
            bind_group_layouts: &[Some(&matmul_layout)],
            immediate_size: 0,
        });
        Ok(Self {
            device,
            queue,
            info,
            features,
            limits,
            matmul_layout,
            matmul_pipeline_layout,
            pipelines: Mutex::new(HashMap::new()),
            pool: Arc::new(BufferPool::default()),
            lost,
        })
    }

    /// A one-line description of the adapter.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?}, {:?})", self.info.name, self.info.backend, self.info.device_type)
    }

    /// The device-lost reason, if the device is gone.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    /// Fails with [`Error::DeviceLost`] once the device is gone.
    pub fn check_alive(&self) -> Result<()> {
        match self.lost_reason() {
            Some(reason) => Err(Error::DeviceLost { reason }),
            None => Ok(()),
        }
    }

    /// Runs `f` inside out-of-memory and validation error scopes and maps what they catch.
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check_alive()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = o {
            return Err(Error::GpuOutOfMemory { what: format!("{what}: {e}") });
        }
        if let Some(e) = v {
            return Err(Error::GpuValidation { what: what.to_string(), reason: e.to_string() });
        }
        self.check_alive()?;
        Ok(value)
    }

    /// Waits for all submitted work; a lost device or a timeout becomes a typed error.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: Some(std::time::Duration::from_secs(60)) })
            .map_err(|e| Error::DeviceLost { reason: format!("waiting for the GPU: {e}") })?;
        self.check_alive()
    }

    /// A compute pipeline from the cache, compiled on first use.
    pub fn pipeline(
        &self,
        module_name: &str,
        source: impl FnOnce() -> String,
        entry: &'static str,
        constants: &[(&'static str, f64)],
        matmul_layout: bool,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = PipelineKey {
            module: module_name.to_string(),
            entry,
            constants: constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(),
        };
        if let Some(p) = self.pipelines.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(p.clone());
        }
        let src = source();
        let pipeline = self.scoped(&format!("compiling {module_name}::{entry}"), || {
            let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(module_name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: matmul_layout.then_some(&self.matmul_pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
                cache: None,
            })
        })?;
        let pipeline = Arc::new(pipeline);
        self.pipelines.lock().map_err(|_| poisoned())?.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// A storage buffer holding `bytes` (uploaded straight from a file mapping, no repacking).
    pub fn storage_buffer(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let size = (bytes.len() as u64).max(16).next_multiple_of(4);
        self.check_size(label, size)?;
        self.scoped(&format!("allocating {label} ({size} bytes)"), || {
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            if !bytes.is_empty() {
                self.queue.write_buffer(&buf, 0, bytes);
            }
            buf
        })
    }

    /// A zeroed buffer with the given usage.
    pub fn zeroed_buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        let size = size.max(16).next_multiple_of(4);
        self.check_size(label, size)?;
        self.scoped(&format!("allocating {label} ({size} bytes)"), || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        })
    }

    /// A zeroed buffer of at least `size` bytes from the pool (allocated if none is free).
    pub fn pooled_buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<PooledBuffer> {
        let class = size_class(size);
        let buffer = match self.pool.take(usage, class) {
            Some(b) => b,
            None => {
                self.check_size(label, class)?;
                self.scoped(&format!("allocating {label} ({class} bytes)"), || {
                    self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(label),
                        size: class,
                        usage,
                        mapped_at_creation: false,
                    })
                })?
            }
        };
        // Reused buffers hold old values (possibly NaN); kernels rely on zero padding.
        if usage.contains(wgpu::BufferUsages::COPY_DST) && !usage.contains(wgpu::BufferUsages::MAP_READ) {
            let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("clear") });
            enc.clear_buffer(&buffer, 0, None);
            self.queue.submit([enc.finish()]);
        }
        Ok(PooledBuffer::new(buffer, self.pool.clone()))
    }

    /// Buffers waiting in the pool.
    pub fn pooled_free(&self) -> usize {
        self.pool.free_count()
    }

    fn check_size(&self, label: &str, size: u64) -> Result<()> {
        let limit = self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size);
        if size > limit {
            return Err(Error::GpuOutOfMemory {
                what: format!("allocating {label}: {size} bytes exceeds the device's binding limit of {limit}"),
            });
        }
        Ok(())
    }

    /// Reads `out.len()` f32 values back from `buf` through `staging` (a MAP_READ buffer).
    pub fn read_f32(&self, buf: &wgpu::Buffer, staging: &wgpu::Buffer, out: &mut [f32]) -> Result<()> {
        let bytes = (out.len() * 4) as u64;
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        enc.copy_buffer_to_buffer(buf, 0, staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        self.read_mapped(staging, out)
    }

    /// Maps `staging` (a MAP_READ buffer whose copy has been submitted) and reads `out.len()`
    /// f32 values from its start.
    pub fn read_mapped(&self, staging: &wgpu::Buffer, out: &mut [f32]) -> Result<()> {
        let bytes = (out.len() * 4) as u64;
        let slice = staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        // The callback fires during some thread's poll; poll until it has.
        let mut result = None;
        for _ in 0..1000 {
            self.wait()?;
            if let Ok(r) = rx.recv_timeout(std::time::Duration::from_millis(5)) {
                result = Some(r);
                break;
            }
        }
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::DeviceLost { reason: format!("mapping the read-back buffer: {e}") }),
            None => return Err(Error::DeviceLost { reason: "read-back never completed".into() }),
        }
        {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::DeviceLost { reason: format!("reading the read-back buffer: {e}") })?;
            out.copy_from_slice(bytemuck::cast_slice(&view));
        }
        staging.unmap();
        Ok(())
    }
}

fn poisoned() -> Error {
    Error::Unsupported { what: "GPU pipeline cache lock poisoned by an earlier panic".into() }
}

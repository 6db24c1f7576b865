//! A pool of GPU buffers for activations, outputs and read-back, so plans made and dropped
//! repeatedly (a model reloaded, a self-test, a benchmark sweep) reuse allocations instead of
//! growing device memory. Sizes are rounded up to powers of two so buffers fit many requests.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

/// Free buffers by (usage, size class).
#[derive(Default)]
pub struct BufferPool {
    free: Mutex<HashMap<(u32, u64), Vec<wgpu::Buffer>>>,
}

/// Smallest pooled size: small enough for parameter-sized requests, a multiple of every
/// alignment the kernels bind with.
const MIN_CLASS: u64 = 256;

/// The size class a request of `size` bytes is served from.
pub fn size_class(size: u64) -> u64 {
    size.max(MIN_CLASS).next_power_of_two()
}

impl BufferPool {
    /// A free buffer of this usage and class, if one is pooled.
    pub fn take(&self, usage: wgpu::BufferUsages, class: u64) -> Option<wgpu::Buffer> {
        self.free.lock().ok()?.get_mut(&(usage.bits(), class)).and_then(Vec::pop)
    }

    fn give(&self, buffer: wgpu::Buffer) {
        if let Ok(mut free) = self.free.lock() {
            free.entry((buffer.usage().bits(), buffer.size())).or_default().push(buffer);
        }
    }

    /// Buffers currently pooled (free).
    pub fn free_count(&self) -> usize {
        self.free.lock().map_or(0, |f| f.values().map(Vec::len).sum())
    }
}

/// A buffer on loan from the pool; it goes back when dropped.
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    pub(super) fn new(buffer: wgpu::Buffer, pool: Arc<BufferPool>) -> Self {
        Self { buffer: Some(buffer), pool }
    }
}

impl Deref for PooledBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.pool.give(b);
        }
    }
}

// Bandwidth ceiling: copies vec4<u32> words, grid-stride. kestrel bench reports every kernel's
// bytes/s against this copy measured in the same run (copy_buffer_to_buffer is not used: on
// NVIDIA's Vulkan driver it reaches only a fraction of the bandwidth).

struct CopyParams {
    len: u32,  // vec4 words
    stride: u32, // threads in the grid
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> cp: CopyParams;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>) {
    for (var i = gid.x; i < cp.len; i += cp.stride) {
        dst[i] = src[i];
    }
}

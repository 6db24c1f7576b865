// Strided copy: y[y_off + sum idx_d * y_str_d] = x[x_off + sum idx_d * x_str_d] over a loop
// nest of at most 8 dims. One kernel serves Transpose (permuted input strides), Slice (start
// offset and signed step strides), Concat and Split (one dispatch per piece, writing or reading a
// block of the larger tensor) and reshape copies. Twins: ops::{transpose, slice, concat, split}.

// Mirrors `GatherParams` in graph_ops/data.rs.
struct Params {
    len: u32,
    rank: u32,
    x_slot: u32,
    x_off: u32,
    y_off: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    shape: array<vec4<u32>, 2>,
    // Input strides may be negative (Slice with negative steps).
    x_str: array<vec4<i32>, 2>,
    y_str: array<vec4<u32>, 2>,
}

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    for (var i = gid.x; i < p.len; i += stride) {
        var rest = i;
        var ix = i32(p.x_off);
        var iy = p.y_off;
        for (var d = p.rank; d > 0u; d--) {
            let k = d - 1u;
            let n = p.shape[k / 4u][k % 4u];
            let idx = rest % n;
            rest = rest / n;
            ix += i32(idx) * p.x_str[k / 4u][k % 4u];
            iy += idx * p.y_str[k / 4u][k % 4u];
        }
        dst[iy] = load(p.x_slot, u32(ix));
    }
}

// Row reductions: Softmax along one axis and LayerNormalization over the trailing dims. Twins:
// ops::{softmax, layer_norm}. A contiguous row (softmax on the last axis, every layer norm)
// gets one workgroup that reduces in workgroup memory; softmax on an inner axis gets one thread
// per (outer, inner) lane, walking the axis at stride `inner` (neighbouring threads read
// neighbouring values). Every pass reads x again, so y may be x itself (in place).

// Mirrors `RowParams` in graph_ops/rows.rs.
struct Params {
    x_slot: u32,
    x_off: u32,
    y_off: u32,
    // Rows (workgroup kernels) or lanes (strided softmax).
    rows: u32,
    len: u32,
    inner: u32,
    s_slot: u32,
    s_off: u32,
    b_slot: u32,
    b_off: u32,
    has_bias: u32,
    eps: f32,
}

const WG: u32 = 256u;
const LOWEST: f32 = -3.4028235e38;

var<workgroup> red: array<f32, WG>;

// Sum (or max) of `v` over the workgroup; call from uniform control flow.
fn wg_reduce(v: f32, li: u32, is_max: bool) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        if li < off {
            red[li] = select(red[li] + red[li + off], max(red[li], red[li + off]), is_max);
        }
        workgroupBarrier();
    }
    let r = red[0];
    // Nobody may overwrite red[0] for the next reduction before every thread has read it.
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn softmax_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = wg.y * nwg.x + wg.x;
    if row >= p.rows {
        return;
    }
    let xb = p.x_off + row * p.len;
    let yb = p.y_off + row * p.len;
    var m = LOWEST;
    for (var j = li; j < p.len; j += WG) {
        m = max(m, load(p.x_slot, xb + j));
    }
    m = wg_reduce(m, li, true);
    var s = 0.0;
    for (var j = li; j < p.len; j += WG) {
        s += exp(load(p.x_slot, xb + j) - m);
    }
    s = wg_reduce(s, li, false);
    let inv = 1.0 / s;
    for (var j = li; j < p.len; j += WG) {
        dst[yb + j] = exp(load(p.x_slot, xb + j) - m) * inv;
    }
}

@compute @workgroup_size(256)
fn softmax_strided(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    for (var r = gid.x; r < p.rows; r += stride) {
        let o = r / p.inner;
        let i = r % p.inner;
        let xb = p.x_off + o * p.len * p.inner + i;
        let yb = p.y_off + o * p.len * p.inner + i;
        var m = LOWEST;
        for (var a = 0u; a < p.len; a++) {
            m = max(m, load(p.x_slot, xb + a * p.inner));
        }
        var s = 0.0;
        for (var a = 0u; a < p.len; a++) {
            s += exp(load(p.x_slot, xb + a * p.inner) - m);
        }
        let inv = 1.0 / s;
        for (var a = 0u; a < p.len; a++) {
            dst[yb + a * p.inner] = exp(load(p.x_slot, xb + a * p.inner) - m) * inv;
        }
    }
}

@compute @workgroup_size(256)
fn layer_norm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = wg.y * nwg.x + wg.x;
    if row >= p.rows {
        return;
    }
    let xb = p.x_off + row * p.len;
    let yb = p.y_off + row * p.len;
    let inv_n = 1.0 / f32(p.len);
    var s = 0.0;
    for (var j = li; j < p.len; j += WG) {
        s += load(p.x_slot, xb + j);
    }
    let mean = wg_reduce(s, li, false) * inv_n;
    var q = 0.0;
    for (var j = li; j < p.len; j += WG) {
        let d = load(p.x_slot, xb + j) - mean;
        q += d * d;
    }
    let variance = wg_reduce(q, li, false) * inv_n;
    let r = 1.0 / sqrt(variance + p.eps);
    for (var j = li; j < p.len; j += WG) {
        var y = (load(p.x_slot, xb + j) - mean) * r * load(p.s_slot, p.s_off + j);
        if p.has_bias != 0u {
            y += load(p.b_slot, p.b_off + j);
        }
        dst[yb + j] = y;
    }
}

// 2-D pooling on NCHW: `pool2d` (MaxPool, AveragePool with or without the padding in the count;
// one thread per output) and `global_pool` (GlobalAveragePool / GlobalMaxPool; one workgroup
// per plane). Twins: ops::{max_pool2d, avg_pool2d, global_avg_pool, global_max_pool}. Windows
// are summed row by row, left to right, as the twin does.

// Mirrors `PoolParams` in graph_ops/pool.rs.
struct Params {
    x_slot: u32,
    x_off: u32,
    y_off: u32,
    len: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    dh: u32,
    dw: u32,
    pt: u32,
    pl: u32,
    pb: u32,
    pr: u32,
    // 0 max, 1 average over input values, 2 average including padding.
    mode: u32,
    // Global pooling: planes and values per plane.
    planes: u32,
    plane_len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;
const MODE_MAX: u32 = 0u;
const MODE_AVG_INCLUDE_PAD: u32 = 2u;

// Taps t in 0..k whose padded position o * s + t * d lies below `limit` (in padded coordinates).
fn taps_below(o: u32, s: u32, d: u32, k: u32, limit: u32) -> u32 {
    var n = 0u;
    for (var t = 0u; t < k; t++) {
        if o * s + t * d < limit {
            n += 1u;
        }
    }
    return n;
}

@compute @workgroup_size(256)
fn pool2d(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    for (var i = gid.x; i < p.len; i += stride) {
        let ox = i % p.ow;
        let rest = i / p.ow;
        let oy = rest % p.oh;
        let plane = rest / p.oh;
        let base = p.x_off + plane * p.h * p.w;
        let y0 = i32(oy * p.sh) - i32(p.pt);
        let x0 = i32(ox * p.sw) - i32(p.pl);
        var m = -3.4028235e38;
        var found = false;
        var s = 0.0;
        var count = 0u;
        for (var ki = 0u; ki < p.kh; ki++) {
            let iy = y0 + i32(ki * p.dh);
            if iy < 0 || iy >= i32(p.h) {
                continue;
            }
            for (var kj = 0u; kj < p.kw; kj++) {
                let ix = x0 + i32(kj * p.dw);
                if ix < 0 || ix >= i32(p.w) {
                    continue;
                }
                let v = load(p.x_slot, base + u32(iy) * p.w + u32(ix));
                if !found || v > m {
                    m = v;
                }
                found = true;
                s += v;
                count += 1u;
            }
        }
        var y: f32;
        if p.mode == MODE_MAX {
            y = m;
        } else {
            if p.mode == MODE_AVG_INCLUDE_PAD {
                count = taps_below(oy, p.sh, p.dh, p.kh, p.pt + p.h + p.pb)
                    * taps_below(ox, p.sw, p.dw, p.kw, p.pl + p.w + p.pr);
            }
            y = s / f32(count);
        }
        dst[p.y_off + i] = y;
    }
}

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(256)
fn global_pool(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let plane = wg.y * nwg.x + wg.x;
    if plane >= p.planes {
        return;
    }
    let base = p.x_off + plane * p.plane_len;
    let is_max = p.mode == MODE_MAX;
    var acc = select(0.0, -3.4028235e38, is_max);
    for (var j = li; j < p.plane_len; j += WG) {
        let v = load(p.x_slot, base + j);
        acc = select(acc + v, max(acc, v), is_max);
    }
    red[li] = acc;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        if li < off {
            red[li] = select(red[li] + red[li + off], max(red[li], red[li + off]), is_max);
        }
        workgroupBarrier();
    }
    if li == 0u {
        dst[p.y_off + plane] = select(red[0] / f32(p.plane_len), red[0], is_max);
    }
}

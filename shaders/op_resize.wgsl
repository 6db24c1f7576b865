// ONNX Resize on NCHW, nearest or bilinear on H and W. Twin: ops::resize. The host maps every
// output row and column to its source taps in f64 exactly as the twin does and passes them as
// tables in `aux` (indices stored as exact f32 integers), so rounding ties and non-integer
// scales pick the same source pixels; the kernel only gathers and blends.

// Mirrors `ResizeParams` in graph_ops/resize.rs.
struct Params {
    x_slot: u32,
    x_off: u32,
    y_off: u32,
    len: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    // 0 nearest (tables hold one index per row / column), 1 linear (i0, i1, weight of i1).
    mode: u32,
    tab_y: u32,
    tab_x: u32,
    _pad0: u32,
}

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn resize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    for (var i = gid.x; i < p.len; i += stride) {
        let ox = i % p.ow;
        let rest = i / p.ow;
        let oy = rest % p.oh;
        let plane = rest / p.oh;
        let base = p.x_off + plane * p.h * p.w;
        var y: f32;
        if p.mode == 0u {
            let iy = u32(load(SLOT_AUX, p.tab_y + oy));
            let ix = u32(load(SLOT_AUX, p.tab_x + ox));
            y = load(p.x_slot, base + iy * p.w + ix);
        } else {
            let ty = p.tab_y + 3u * oy;
            let tx = p.tab_x + 3u * ox;
            let r0 = base + u32(load(SLOT_AUX, ty)) * p.w;
            let r1 = base + u32(load(SLOT_AUX, ty + 1u)) * p.w;
            let wy = load(SLOT_AUX, ty + 2u);
            let x0 = u32(load(SLOT_AUX, tx));
            let x1 = u32(load(SLOT_AUX, tx + 1u));
            let wx = load(SLOT_AUX, tx + 2u);
            let a = load(p.x_slot, r0 + x0);
            let b = load(p.x_slot, r0 + x1);
            let c = load(p.x_slot, r1 + x0);
            let d = load(p.x_slot, r1 + x1);
            let top = a + wx * (b - a);
            let bottom = c + wx * (d - c);
            y = top + wy * (bottom - top);
        }
        dst[p.y_off + i] = y;
    }
}

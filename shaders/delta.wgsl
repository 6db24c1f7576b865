// Temporal delta convolution on the GPU (PAPERS.md section 2; the CPU twin is ops::DeltaConv2d).
// One step of a stream is five dispatches over one layer's state:
//   reset:    the fired counter to 0
//   fire:     every input entry: dx = x - x_ref; where |dx| >= theta (and dx != 0), x_ref = x and
//             the entry is appended to the fired list (compaction with an atomic counter)
//   args:     one thread turns the fired count into the scatter's indirect dispatch size
//   scatter:  a thread per (fired entry, output channel of its group) adds w * dx into every
//             output its taps reach: work proportional to the fired count. Entries at nearby
//             positions reach the same outputs, so the adds are atomic (a compare-exchange loop
//             on the f32 bits: WGSL has no float atomics)
//   activate: out = act(y) over the layer's output
// y holds the pre-activation output (NCHW, f32 bits); a keyframe writes it with the dense conv,
// then copy_ref sets x_ref. x and the output live at element offsets x_off and out_off of their
// buffers (a graph's activation arena); theta is per input channel.

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    m: u32, cg: u32, kh: u32, kw: u32,
    oh: u32, ow: u32, sh: u32, sw: u32,
    dh: u32, dw: u32, pt: u32, pl: u32,
    group: u32, x_off: u32, act: u32, out_off: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> xref: array<f32>;
@group(0) @binding(3) var<storage, read_write> counter: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> fired: array<u32>;
@group(0) @binding(5) var<storage, read_write> dxs: array<f32>;
@group(0) @binding(6) var<storage, read> wts: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<atomic<u32>>;
@group(0) @binding(8) var<storage, read_write> outv: array<f32>;
@group(0) @binding(9) var<storage, read_write> args: array<u32>;
@group(0) @binding(10) var<storage, read> theta: array<f32>;

const WG: u32 = 64u;
// Workgroups per row of a 2-D grid: dispatch sizes stop at 65535 per dimension.
const ROW: u32 = 32768u;

fn flat(wid: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * ROW + wid.x) * WG + lid.x;
}

@compute @workgroup_size(64)
fn fire(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, lid);
    if (i >= p.n * p.c * p.h * p.w) {
        return;
    }
    let xv = x[p.x_off + i];
    let dx = xv - xref[i];
    // NaN compares false: it never fires. theta = 0 fires every change.
    if (dx != 0.0 && abs(dx) >= theta[(i / (p.h * p.w)) % p.c]) {
        xref[i] = xv;
        let slot = atomicAdd(&counter[0], 1u);
        fired[slot] = i;
        dxs[slot] = dx;
    }
}

@compute @workgroup_size(1)
fn reset() {
    atomicStore(&counter[0], 0u);
}

@compute @workgroup_size(64)
fn copy_ref(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, lid);
    if (i < p.n * p.c * p.h * p.w) {
        xref[i] = x[p.x_off + i];
    }
}

@compute @workgroup_size(1)
fn scatter_args() {
    let items = atomicLoad(&counter[0]) * (p.m / p.group);
    let groups = (items + WG - 1u) / WG;
    args[0] = min(groups, ROW);
    args[1] = (groups + ROW - 1u) / ROW;
    args[2] = 1u;
}

fn add_f32(k: u32, v: f32) {
    var old = atomicLoad(&y[k]);
    loop {
        let r = atomicCompareExchangeWeak(&y[k], old, bitcast<u32>(bitcast<f32>(old) + v));
        if (r.exchanged) {
            break;
        }
        old = r.old_value;
    }
}

@compute @workgroup_size(64)
fn scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let item = flat(wid, lid);
    let mg = p.m / p.group;
    if (item >= atomicLoad(&counter[0]) * mg) {
        return;
    }
    let f = item / mg;
    let mol = item % mg;
    let e = fired[f];
    let dx = dxs[f];
    let iw = e % p.w;
    let ih = (e / p.w) % p.h;
    let ci = (e / (p.w * p.h)) % p.c;
    let b = e / (p.w * p.h * p.c);
    let g = ci / p.cg;
    let cl = ci % p.cg;
    let mo = g * mg + mol;
    for (var i = 0u; i < p.kh; i++) {
        // Output row reached by tap row i: orow * sh + i * dh - pt = ih.
        let num = i32(ih + p.pt) - i32(i * p.dh);
        if (num < 0 || num % i32(p.sh) != 0 || u32(num) / p.sh >= p.oh) {
            continue;
        }
        let orow = u32(num) / p.sh;
        for (var j = 0u; j < p.kw; j++) {
            let numc = i32(iw + p.pl) - i32(j * p.dw);
            if (numc < 0 || numc % i32(p.sw) != 0 || u32(numc) / p.sw >= p.ow) {
                continue;
            }
            let ocol = u32(numc) / p.sw;
            let wv = wts[((mo * p.cg + cl) * p.kh + i) * p.kw + j];
            add_f32(((b * p.m + mo) * p.oh + orow) * p.ow + ocol, wv * dx);
        }
    }
}

@compute @workgroup_size(64)
fn activate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, lid);
    if (i >= p.n * p.m * p.oh * p.ow) {
        return;
    }
    let v = bitcast<f32>(atomicLoad(&y[i]));
    var r = v;
    switch p.act {
        case 1u: { r = max(v, 0.0); }                  // relu
        case 2u: { r = 1.0 / (1.0 + exp(-v)); }        // sigmoid
        case 3u: { r = v / (1.0 + exp(-v)); }          // silu
        default: {}
    }
    outv[p.out_off + i] = r;
}

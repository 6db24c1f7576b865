// Elementwise graph ops: `binary` (Add, Sub, Mul, Div with ONNX broadcasting) and `activation`
// (every ops::Activation, per-channel clip thresholds on axis 1). Twins: ops::binary,
// ops::activation. The host collapses the broadcast into at most 8 dims (size-1 dims dropped,
// contiguous neighbours merged), so equal shapes are one flat loop here.

// Mirrors `EltParams` in graph_ops/elementwise.rs.
struct Params {
    len: u32,
    rank: u32,
    y_off: u32,
    op: u32,
    a_slot: u32,
    a_off: u32,
    b_slot: u32,
    b_off: u32,
    act: Act,
    // Per-channel activation: channel of element i is (i / inner) % channels.
    channels: u32,
    inner: u32,
    _pad0: u32,
    _pad1: u32,
    // Output dims (outer first) and each operand's element stride per dim (0 where it broadcasts).
    shape: array<vec4<u32>, 2>,
    a_str: array<vec4<u32>, 2>,
    b_str: array<vec4<u32>, 2>,
}

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    for (var i = gid.x; i < p.len; i += stride) {
        var rest = i;
        var ia = p.a_off;
        var ib = p.b_off;
        for (var d = p.rank; d > 0u; d--) {
            let k = d - 1u;
            let n = p.shape[k / 4u][k % 4u];
            let idx = rest % n;
            rest = rest / n;
            ia += idx * p.a_str[k / 4u][k % 4u];
            ib += idx * p.b_str[k / 4u][k % 4u];
        }
        let a = load(p.a_slot, ia);
        let b = load(p.b_slot, ib);
        var y: f32;
        switch p.op {
            case 0u: { y = a + b; }
            case 1u: { y = a - b; }
            case 2u: { y = a * b; }
            default: { y = a / b; }
        }
        dst[p.y_off + i] = y;
    }
}

@compute @workgroup_size(256)
fn activation(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    let a = p.act;
    for (var i = gid.x; i < p.len; i += stride) {
        let ch = (i / p.inner) % p.channels;
        dst[p.y_off + i] = act(a, load(p.a_slot, p.a_off + i), ch);
    }
}

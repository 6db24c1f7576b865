// Attention over [heads, N, D] queries and keys and [heads, N, Dv] values. Twins:
// ops::{linear_attention, softmax_attention}.
//
// linear_attention (CARE): one workgroup per head. Its threads first reduce the keys into
// KV = phi(K)^T V / N and kmean = mean_j phi(k_j), both kept in workgroup memory (kmean as an
// extra column of KV, as if V had a column of ones), then each thread applies them to output
// elements: out_ie = (phi(q_i) . KV[:, e]) / (phi(q_i) . kmean + 1e-6). phi = ELU + 1.
//
// softmax_attention: one thread per query row, with the online softmax (a running maximum and
// sum, rescaling the accumulator when the maximum grows), so no N-long score row is stored.

// Mirrors `AttentionParams` in graph_ops/attention.rs.
struct Params {
    q_slot: u32,
    q_off: u32,
    k_slot: u32,
    k_off: u32,
    v_slot: u32,
    v_off: u32,
    y_off: u32,
    heads: u32,
    n: u32,
    d: u32,
    dv: u32,
    scale: f32,
}

const WG: u32 = 256u;
// D x (Dv + 1) floats of KV and kmean: 16000 bytes, inside WebGPU's 16 KiB default.
const MAX_KV: u32 = 4000u;
// Dv of the softmax kernel's per-thread accumulator.
const MAX_DV: u32 = 128u;
const LOWEST: f32 = -3.4028235e38;
const CARE_EPSILON: f32 = 1e-6;

var<workgroup> kv: array<f32, MAX_KV>;

fn phi(x: f32) -> f32 {
    return select(exp(x), x + 1.0, x > 0.0);
}

@compute @workgroup_size(256)
fn linear_attention(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let head = wg.y * nwg.x + wg.x;
    if head >= p.heads {
        return;
    }
    let qb = p.q_off + head * p.n * p.d;
    let kb = p.k_off + head * p.n * p.d;
    let vb = p.v_off + head * p.n * p.dv;
    let yb = p.y_off + head * p.n * p.dv;
    let cols = p.dv + 1u;
    let inv_n = 1.0 / f32(p.n);
    for (var t = li; t < p.d * cols; t += WG) {
        let c = t / cols;
        let e = t % cols;
        var acc = 0.0;
        for (var j = 0u; j < p.n; j++) {
            let pk = phi(load(p.k_slot, kb + j * p.d + c));
            acc += select(pk, pk * load(p.v_slot, vb + j * p.dv + e), e < p.dv);
        }
        kv[t] = acc * inv_n;
    }
    workgroupBarrier();
    for (var t = li; t < p.n * p.dv; t += WG) {
        let i = t / p.dv;
        let e = t % p.dv;
        var num = 0.0;
        var den = 0.0;
        for (var c = 0u; c < p.d; c++) {
            let pq = phi(load(p.q_slot, qb + i * p.d + c));
            num += pq * kv[c * cols + e];
            den += pq * kv[c * cols + p.dv];
        }
        dst[yb + t] = num / (den + CARE_EPSILON);
    }
}

@compute @workgroup_size(256)
fn softmax_attention(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    for (var row = gid.x; row < p.heads * p.n; row += stride) {
        let head = row / p.n;
        let qb = p.q_off + row * p.d;
        let kb = p.k_off + head * p.n * p.d;
        let vb = p.v_off + head * p.n * p.dv;
        var acc: array<f32, MAX_DV>;
        var m = LOWEST;
        var l = 0.0;
        for (var j = 0u; j < p.n; j++) {
            var s = 0.0;
            for (var c = 0u; c < p.d; c++) {
                s += load(p.q_slot, qb + c) * load(p.k_slot, kb + j * p.d + c);
            }
            s *= p.scale;
            let m_new = max(m, s);
            let rescale = exp(m - m_new);
            let w = exp(s - m_new);
            l = l * rescale + w;
            for (var e = 0u; e < p.dv; e++) {
                acc[e] = acc[e] * rescale + w * load(p.v_slot, vb + j * p.dv + e);
            }
            m = m_new;
        }
        let yb = p.y_off + row * p.dv;
        for (var e = 0u; e < p.dv; e++) {
            dst[yb + e] = acc[e] / l;
        }
    }
}

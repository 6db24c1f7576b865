// Tiled f32 GEMM for the graph ops: `matmul` (ONNX MatMul with batch broadcasting, and Gemm /
// linear through operand strides), `conv2d` (implicit GEMM: the im2col matrix is never stored,
// its tile is gathered from the NCHW input straight into workgroup memory) and `conv2d_direct`
// (one thread per output; depthwise and other convs with few output channels per group).
// Twins: ops::{matmul, linear, conv2d}.
//
// The module header (generated, see graph_ops/gemm.rs) sets the tile: BM output rows x BN output
// columns per workgroup of 16 x 16 threads, each thread holding TM x TN accumulators at rows
// ty + 16 i and columns tx + 16 j (so stores and B reads are contiguous across tx). K advances
// BK at a time through padded workgroup tiles (stride + 1 avoids bank conflicts on transposed
// loads).

// Mirrors `GemmParams` in graph_ops/gemm.rs.
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch_rank: u32,
    // A(m, k) = a[a_off + m * a_rs + k * a_cs]; for conv, the weights of group 0.
    a_slot: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    // B(k, n) = b[b_off + k * b_rs + n * b_cs]; for conv, the input (b_off at image 0).
    b_slot: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    // Y(m, n) = dst[y_off + m * y_rs + n] (plus the batch or image / group offset).
    y_off: u32,
    y_rs: u32,
    bias_slot: u32,
    bias_off: u32,
    // 0 no bias, 1 one per row (conv output channel), 2 one per column (linear feature).
    bias_mode: u32,
    // conv2d_direct: outputs in all.
    len: u32,
    // conv: groups (passed, not derived: C / cg is 0 / 0 for an empty input).
    groups: u32,
    _pad0: u32,
    act: Act,
    // matmul: broadcast batch dims (outer first) and each operand's element stride per dim.
    batch_dims: array<vec4<u32>, 2>,
    a_bstr: array<vec4<u32>, 2>,
    b_bstr: array<vec4<u32>, 2>,
    // conv geometry (input [N, c, h, w], weights [m_total, cg, kh, kw], output [N, m_total, oh, ow]).
    c: u32,
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
    cg: u32,
    mg: u32,
    m_total: u32,
    // conv2d_packed (op_conv_packed.wgsl): the weights' auxiliary component (scales or group
    // parameters; a_slot / a_off locate the main one) and the packed layout: u32 words per row of
    // each component, words of codes per group along K.
    s_slot: u32,
    s_off: u32,
    row_words: u32,
    aux_row_words: u32,
    group_words: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

const BK: u32 = 16u;
const TM: u32 = BM / 16u;
const TN: u32 = BN / 16u;
const AS: u32 = BM + 1u;
const BS: u32 = BN + 1u;
const THREADS: u32 = 256u;

var<workgroup> a_tile: array<f32, BK * AS>;
var<workgroup> b_tile: array<f32, BK * BS>;
var<private> acc: array<f32, TM * TN>;

// A tile rows m0.., depth k0..: BM * BK values, TM per thread. Neighbouring threads take
// neighbouring addresses of whichever A index is contiguous.
fn load_a_tile(a_base: u32, m0: u32, k0: u32, li: u32) {
    let k_fast = p.a_cs == 1u;
    for (var r = 0u; r < TM; r++) {
        let e = li + r * THREADS;
        let kk = select(e / BM, e % BK, k_fast);
        let mm = select(e % BM, e / BK, k_fast);
        let gm = m0 + mm;
        let gk = k0 + kk;
        var v = 0.0;
        if gm < p.m && gk < p.k {
            v = load(p.a_slot, a_base + gm * p.a_rs + gk * p.a_cs);
        }
        a_tile[kk * AS + mm] = v;
    }
}

fn load_b_tile(b_base: u32, n0: u32, k0: u32, li: u32) {
    let n_fast = p.b_cs == 1u;
    for (var r = 0u; r < TN; r++) {
        let e = li + r * THREADS;
        let nn = select(e / BK, e % BN, n_fast);
        let kk = select(e % BK, e / BN, n_fast);
        let gn = n0 + nn;
        let gk = k0 + kk;
        var v = 0.0;
        if gn < p.n && gk < p.k {
            v = load(p.b_slot, b_base + gk * p.b_rs + gn * p.b_cs);
        }
        b_tile[kk * BS + nn] = v;
    }
}

// The im2col tile of one (image, group): column n is output pixel (n / ow, n % ow), row k is tap
// (c, ki, kj) = (k / (kh kw), k / kw % kh, k % kw); zero where the tap lands in the padding.
fn load_im2col_tile(x_base: u32, n0: u32, k0: u32, li: u32) {
    let khw = p.kh * p.kw;
    for (var r = 0u; r < TN; r++) {
        let e = li + r * THREADS;
        let nn = e % BN;
        let kk = e / BN;
        let gn = n0 + nn;
        let gk = k0 + kk;
        var v = 0.0;
        if gn < p.n && gk < p.k {
            let c = gk / khw;
            let rem = gk % khw;
            let ki = rem / p.kw;
            let kj = rem % p.kw;
            let iy = i32((gn / p.ow) * p.sh + ki * p.dh) - i32(p.pt);
            let ix = i32((gn % p.ow) * p.sw + kj * p.dw) - i32(p.pl);
            if iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w) {
                v = load(p.b_slot, x_base + (c * p.h + u32(iy)) * p.w + u32(ix));
            }
        }
        b_tile[kk * BS + nn] = v;
    }
}

fn clear_acc() {
    for (var t = 0u; t < TM * TN; t++) {
        acc[t] = 0.0;
    }
}

fn mac_tile(li: u32) {
    let tx = li % 16u;
    let ty = li / 16u;
    for (var kk = 0u; kk < BK; kk++) {
        var a: array<f32, TM>;
        var b: array<f32, TN>;
        for (var i = 0u; i < TM; i++) {
            a[i] = a_tile[kk * AS + ty + 16u * i];
        }
        for (var j = 0u; j < TN; j++) {
            b[j] = b_tile[kk * BS + tx + 16u * j];
        }
        for (var i = 0u; i < TM; i++) {
            for (var j = 0u; j < TN; j++) {
                acc[i * TN + j] += a[i] * b[j];
            }
        }
    }
}

// Adds the bias, applies the activation (channel ch0 + row) and stores the valid outputs.
fn store_tile(y_base: u32, m0: u32, n0: u32, ch0: u32, li: u32) {
    let tx = li % 16u;
    let ty = li / 16u;
    let a = p.act;
    for (var i = 0u; i < TM; i++) {
        let gm = m0 + ty + 16u * i;
        if gm >= p.m {
            continue;
        }
        for (var j = 0u; j < TN; j++) {
            let gn = n0 + tx + 16u * j;
            if gn >= p.n {
                continue;
            }
            var v = acc[i * TN + j];
            if p.bias_mode == 1u {
                v += load(p.bias_slot, p.bias_off + ch0 + gm);
            } else if p.bias_mode == 2u {
                v += load(p.bias_slot, p.bias_off + gn);
            }
            dst[y_base + gm * p.y_rs + gn] = act(a, v, ch0 + gm);
        }
    }
}

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    var rest = wg.z;
    var a_base = p.a_off;
    var b_base = p.b_off;
    for (var d = p.batch_rank; d > 0u; d--) {
        let q = d - 1u;
        let n = p.batch_dims[q / 4u][q % 4u];
        let idx = rest % n;
        rest = rest / n;
        a_base += idx * p.a_bstr[q / 4u][q % 4u];
        b_base += idx * p.b_bstr[q / 4u][q % 4u];
    }
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    clear_acc();
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        load_a_tile(a_base, m0, k0, li);
        load_b_tile(b_base, n0, k0, li);
        workgroupBarrier();
        mac_tile(li);
        workgroupBarrier();
    }
    store_tile(p.y_off + wg.z * p.m * p.y_rs, m0, n0, 0u, li);
}

// One (image, group) per wg.z: Y_g[mg, oh * ow] = W_g[mg, cg kh kw] x im2col(X_g).
@compute @workgroup_size(256)
fn conv2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let image = wg.z / p.groups;
    let g = wg.z % p.groups;
    let ch0 = g * p.mg;
    let x_base = p.b_off + (image * p.c + g * p.cg) * p.h * p.w;
    let y_base = p.y_off + (image * p.m_total + ch0) * p.n;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    clear_acc();
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        load_conv_weight_tile(ch0, m0, k0, li);
        load_im2col_tile(x_base, n0, k0, li);
        workgroupBarrier();
        mac_tile(li);
        workgroupBarrier();
    }
    store_tile(y_base, m0, n0, ch0, li);
}

// One thread per output, summing bias + w x over (c, ki, kj) in the twin's order.
@compute @workgroup_size(256)
fn conv2d_direct(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * THREADS;
    let a = p.act;
    for (var i = gid.x; i < p.len; i += stride) {
        let ox = i % p.ow;
        var rest = i / p.ow;
        let oy = rest % p.oh;
        rest = rest / p.oh;
        let ch = rest % p.m_total;
        let image = rest / p.m_total;
        let g = ch / p.mg;
        let y0 = i32(oy * p.sh) - i32(p.pt);
        let x0 = i32(ox * p.sw) - i32(p.pl);
        var s = 0.0;
        if p.bias_mode != 0u {
            s = load(p.bias_slot, p.bias_off + ch);
        }
        for (var c = 0u; c < p.cg; c++) {
            let xc = p.b_off + (image * p.c + g * p.cg + c) * p.h * p.w;
            for (var ki = 0u; ki < p.kh; ki++) {
                let iy = y0 + i32(ki * p.dh);
                if iy < 0 || iy >= i32(p.h) {
                    continue;
                }
                let col = (c * p.kh + ki) * p.kw;
                for (var kj = 0u; kj < p.kw; kj++) {
                    let ix = x0 + i32(kj * p.dw);
                    if ix < 0 || ix >= i32(p.w) {
                        continue;
                    }
                    s += conv_weight(ch, col + kj) * load(p.b_slot, xc + u32(iy) * p.w + u32(ix));
                }
            }
        }
        dst[p.y_off + i] = act(a, s, ch);
    }
}

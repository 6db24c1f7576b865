// int4 weights in groups along K: 8 codes per word (code c of a row in bits 4*(c%8) of word c/8),
// one word of group parameters per group holding f16 (s, m = -z*s): w = q*s + m.
// Per word, sum(w x) = s * sum(q x) + m * sum(x), so dequantisation is one FMA per 8 weights.

@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> aux: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn nibbles_lo(word: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
}

fn nibbles_hi(word: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
}

fn weight_at(row: u32, col: u32) -> f32 {
    let word = w[row * p.row_words + col / 8u];
    let q = f32((word >> (4u * (col % 8u))) & 15u);
    let sm = unpack2x16float(aux[row * p.aux_row_words + col / (p.group_words * 8u)]);
    return q * sm.x + sm.y;
}

@compute @workgroup_size(WG)
fn gemv(lane: Lane) {
    let row0 = flat_group(lane.wid, lane.nwg) * ROWS;
    var acc: array<f32, ROWS>;
    for (var j = lane.lid; j < p.row_words; j += WG) {
        let x0 = x4(2u * j);
        let x1 = x4(2u * j + 1u);
        let xsum = dot(x0, vec4<f32>(1.0)) + dot(x1, vec4<f32>(1.0));
        let g = j / p.group_words;
        for (var r = 0u; r < ROWS; r++) {
            let row = min(row0 + r, p.n - 1u);
            let word = w[row * p.row_words + j];
            let sm = unpack2x16float(aux[row * p.aux_row_words + g]);
            let qx = dot(nibbles_lo(word), x0) + dot(nibbles_hi(word), x1);
            acc[r] = fma(sm.x, qx, fma(sm.y, xsum, acc[r]));
        }
    }
    let total = reduce_rows(lane, acc);
    if (lane.lid < ROWS && row0 + lane.lid < p.n) {
        store_output(0u, row0 + lane.lid, total);
    }
}

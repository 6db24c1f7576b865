// int4 weights in groups along K: 8 codes per word (code c of a row in bits 4*(c%8) of word c/8),
// one word of group parameters per group holding f16 (s, m = -z*s): w = q*s + m.
// Per word, sum(w x) = s * sum(q x) + m * sum(x), so dequantisation is one FMA per 8 weights.
// The GEMV reads 16 bytes (32 codes) per thread and row: a row is a whole number of groups of at
// least 4 words, so it is a whole number of vec4<u32>, and one vec4 never spans two groups.

@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> aux: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn nibbles_lo(word: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
}

fn nibbles_hi(word: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
}

fn word_at(i: u32) -> u32 {
    return w[i / 4u][i % 4u];
}

// sum over the 8 codes of `word` times the 8 activations starting at vec4 index xi.
fn word_dot(word: u32, xi: u32) -> f32 {
    return dot(nibbles_lo(word), x4(xi)) + dot(nibbles_hi(word), x4(xi + 1u));
}

fn weight_at(row: u32, col: u32) -> f32 {
    let word = word_at(row * p.row_words + col / 8u);
    let q = f32((word >> (4u * (col % 8u))) & 15u);
    let sm = unpack2x16float(aux[row * p.aux_row_words + col / (p.group_words * 8u)]);
    return q * sm.x + sm.y;
}

@compute @workgroup_size(WG)
fn gemv(lane: Lane) {
    let row0 = flat_group(lane.wid, lane.nwg) * ROWS;
    let row_vecs = p.row_words / 4u;
    var acc: array<f32, ROWS>;
    for (var j = lane.lid; j < row_vecs; j += WG) {
        // 32 activations as 8 vec4 (x index 8j..8j+7), shared by every row below.
        let xi = 8u * j;
        var xsum = 0.0;
        for (var t = 0u; t < 8u; t++) {
            xsum += dot(x4(xi + t), vec4<f32>(1.0));
        }
        let g = (4u * j) / p.group_words;
        for (var r = 0u; r < ROWS; r++) {
            let row = min(row0 + r, p.n - 1u);
            let wv = w[row * row_vecs + j];
            let sm = unpack2x16float(aux[row * p.aux_row_words + g]);
            let qx = word_dot(wv.x, xi) + word_dot(wv.y, xi + 2u) + word_dot(wv.z, xi + 4u) + word_dot(wv.w, xi + 6u);
            acc[r] = fma(sm.x, qx, fma(sm.y, xsum, acc[r]));
        }
    }
    let total = reduce_rows(lane, acc);
    if (lane.lid < ROWS && row0 + lane.lid < p.n) {
        store_output(0u, row0 + lane.lid, total);
    }
}

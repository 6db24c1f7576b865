// fp4 (E2M1) weights in groups along K, packed like int4, with one scale per group: E8M0 (four
// bytes per word) or f16 (two per word), chosen by the FP4_SCALE_F16 override.
// E2M1 codes are turned into f32 bit patterns arithmetically (no table): for magnitude code
// c >= 2 the value is 2^((c>>1)-1) * (1 + (c&1)/2), i.e. exponent (c>>1)+126 and mantissa bit
// c&1; code 1 is 0.5 and code 0 is 0; bit 3 is the sign. (Building 0.5 as a subnormal and
// rescaling would be cheaper, but WGSL lets implementations flush subnormals to zero.)
// The GEMV reads 16 bytes (32 codes) per thread and row, as the q4 kernel does.

override FP4_SCALE_F16: bool = false;

@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> aux: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn e2m1(codes: vec4<u32>) -> vec4<f32> {
    let mag = codes & vec4<u32>(7u);
    let normal = (((mag >> vec4<u32>(1u)) + vec4<u32>(126u)) << vec4<u32>(23u)) | ((mag & vec4<u32>(1u)) << vec4<u32>(22u));
    let small = select(vec4<u32>(0u), vec4<u32>(0x3F000000u), mag == vec4<u32>(1u));
    let bits = select(small, normal, mag >= vec4<u32>(2u)) | ((codes & vec4<u32>(8u)) << vec4<u32>(28u));
    return bitcast<vec4<f32>>(bits);
}

fn group_scale(row: u32, g: u32) -> f32 {
    let base = row * p.aux_row_words;
    if (FP4_SCALE_F16) {
        let pair = unpack2x16float(aux[base + g / 2u]);
        return select(pair.x, pair.y, (g % 2u) == 1u);
    }
    let e = (aux[base + g / 4u] >> (8u * (g % 4u))) & 255u;
    // 2^(e - 127); e = 0 is the subnormal 2^-127.
    return select(bitcast<f32>(e << 23u), bitcast<f32>(1u << 22u), e == 0u);
}

fn word_at(i: u32) -> u32 {
    return w[i / 4u][i % 4u];
}

// sum over the 8 codes of `word` times the 8 activations starting at vec4 index xi.
fn word_dot(word: u32, xi: u32) -> f32 {
    let lo = e2m1((vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
    let hi = e2m1((vec4<u32>(word) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
    return dot(lo, x4(xi)) + dot(hi, x4(xi + 1u));
}

fn weight_at(row: u32, col: u32) -> f32 {
    let word = word_at(row * p.row_words + col / 8u);
    let v = e2m1(vec4<u32>((word >> (4u * (col % 8u))) & 15u));
    return v.x * group_scale(row, col / (p.group_words * 8u));
}

@compute @workgroup_size(WG)
fn gemv(lane: Lane) {
    let row0 = flat_group(lane.wid, lane.nwg) * ROWS;
    let row_vecs = p.row_words / 4u;
    var acc: array<f32, ROWS>;
    for (var j = lane.lid; j < row_vecs; j += WG) {
        let xi = 8u * j;
        let g = (4u * j) / p.group_words;
        for (var r = 0u; r < ROWS; r++) {
            let row = min(row0 + r, p.n - 1u);
            let wv = w[row * row_vecs + j];
            let vx = word_dot(wv.x, xi) + word_dot(wv.y, xi + 2u) + word_dot(wv.z, xi + 4u) + word_dot(wv.w, xi + 6u);
            acc[r] = fma(group_scale(row, g), vx, acc[r]);
        }
    }
    let total = reduce_rows(lane, acc);
    if (lane.lid < ROWS && row0 + lane.lid < p.n) {
        store_output(0u, row0 + lane.lid, total);
    }
}

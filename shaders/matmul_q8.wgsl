// int8 weights, four per word (code c of a row in byte c%4 of word c/4), one f32 scale per row.

@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> aux: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn bytes_i8(word: u32) -> vec4<f32> {
    // Shift each byte to the top, then an arithmetic shift back sign-extends it.
    let v = bitcast<vec4<i32>>(vec4<u32>(word) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    return vec4<f32>(v);
}

fn weight_at(row: u32, col: u32) -> f32 {
    let q = bytes_i8(w[row * p.row_words + col / 4u]);
    return q[col % 4u] * bitcast<f32>(aux[row]);
}

@compute @workgroup_size(WG)
fn gemv(lane: Lane) {
    let row0 = flat_group(lane.wid, lane.nwg) * ROWS;
    var acc: array<f32, ROWS>;
    for (var j = lane.lid; j < p.row_words; j += WG) {
        let xv = x4(j);
        for (var r = 0u; r < ROWS; r++) {
            let row = min(row0 + r, p.n - 1u);
            acc[r] += dot(bytes_i8(w[row * p.row_words + j]), xv);
        }
    }
    let total = reduce_rows(lane, acc);
    let row = row0 + lane.lid;
    if (lane.lid < ROWS && row < p.n) {
        store_output(0u, row, total * bitcast<f32>(aux[row]));
    }
}

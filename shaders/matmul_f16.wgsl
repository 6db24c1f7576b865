// f16 weights, two per word (element c of a row in half c%2 of word c/2), rows padded to whole
// words. Also runs the LoRC factors, which are f16 matrices.

@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> aux: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn weight_at(row: u32, col: u32) -> f32 {
    return unpack2x16float(w[row * p.row_words + col / 2u])[col % 2u];
}

@compute @workgroup_size(WG)
fn gemv(lane: Lane) {
    let row0 = flat_group(lane.wid, lane.nwg) * ROWS;
    var acc: array<f32, ROWS>;
    for (var j = lane.lid; j < p.row_words; j += WG) {
        let quad = x4(j / 2u);
        let xv = select(quad.xy, quad.zw, (j & 1u) == 1u);
        for (var r = 0u; r < ROWS; r++) {
            let row = min(row0 + r, p.n - 1u);
            acc[r] += dot(unpack2x16float(w[row * p.row_words + j]), xv);
        }
    }
    let total = reduce_rows(lane, acc);
    if (lane.lid < ROWS && row0 + lane.lid < p.n) {
        store_output(0u, row0 + lane.lid, total);
    }
}

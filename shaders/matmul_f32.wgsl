// f32 weights, one per word, row-major.

@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> aux: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn weight_at(row: u32, col: u32) -> f32 {
    return w[row * p.row_words + col];
}

@compute @workgroup_size(WG)
fn gemv(lane: Lane) {
    let row0 = flat_group(lane.wid, lane.nwg) * ROWS;
    var acc: array<f32, ROWS>;
    for (var j = lane.lid; j < p.row_words; j += WG) {
        let xv = x_at(j);
        for (var r = 0u; r < ROWS; r++) {
            let row = min(row0 + r, p.n - 1u);
            acc[r] = fma(w[row * p.row_words + j], xv, acc[r]);
        }
    }
    let total = reduce_rows(lane, acc);
    if (lane.lid < ROWS && row0 + lane.lid < p.n) {
        store_output(0u, row0 + lane.lid, total);
    }
}

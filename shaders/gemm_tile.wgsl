// The tiled GEMM shared by every format: each format supplies weight_at(row, col), which
// dequantises one element; tiles of X and W are staged in workgroup memory.

var<workgroup> x_tile: array<array<f32, TILE + 1u>, TILE>; // +1 column: no bank conflicts
var<workgroup> w_tile: array<array<f32, TILE + 1u>, TILE>;

@compute @workgroup_size(TILE, TILE)
fn gemm(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let n0 = wid.x * TILE;
    let m0 = wid.y * TILE;
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += TILE) {
        let kx = k0 + l.x;
        var xv = 0.0;
        if (m0 + l.y < p.m && kx < p.k) {
            xv = x_at((m0 + l.y) * p.x_stride + kx);
        }
        x_tile[l.y][l.x] = xv;
        var wv = 0.0;
        if (n0 + l.y < p.n && kx < p.k) {
            wv = weight_at(n0 + l.y, kx);
        }
        w_tile[l.y][l.x] = wv;
        workgroupBarrier();
        for (var kk = 0u; kk < TILE; kk++) {
            acc += x_tile[l.y][kk] * w_tile[l.x][kk];
        }
        workgroupBarrier();
    }
    if (m0 + l.y < p.m && n0 + l.x < p.n) {
        store_output(m0 + l.y, n0 + l.x, acc);
    }
}

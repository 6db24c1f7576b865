// Shared by every matmul kernel: the parameter block and the output store. Mirrored field for field
// by `MatmulParams` in src/backend/gpu/kernels.rs (size asserted there).

struct Params {
    n: u32,             // output rows (weight rows)
    k: u32,             // reduction length
    m: u32,             // activation rows (1 for GEMV)
    row_words: u32,     // u32 words per weight row (main component)
    aux_row_words: u32, // u32 words per row of scales / params
    x_stride: u32,      // floats per activation row (k padded to the format's row length)
    y_stride: u32,      // floats per output row
    accumulate: u32,    // 1: y += result (LoRC's second pass), 0: y = result
    group_words: u32,   // words per quantization group (q4, fp4)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// The module header (written by src/backend/gpu/shaders.rs) defines the variant's constants:
//   WG   threads per GEMV workgroup;
//   ROWS output rows per GEMV workgroup: its threads stride along K, and each activation
//        load is shared by all ROWS rows;
//   TILE the GEMM output tile (TILE x TILE) and K step.

fn store_output(row: u32, col_base: u32, value: f32) {
    let i = row * p.y_stride + col_base;
    if (p.accumulate != 0u) {
        y[i] = y[i] + value;
    } else {
        y[i] = value;
    }
}

// Workgroup index for 2-D dispatches (the grid is folded to stay under 65535 per dimension).
fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// The conv weights of the f32 modules: the weight [M, C/group, kH, kW] read in place as the
// matrix [M, K], K = C/group kH kW (row = output channel, column = (c kH + ki) kW + kj). The
// packed modules define the same two functions in op_conv_packed.wgsl, so op_gemm.wgsl's conv
// entry points serve every weight format.

// Element (row, col) of the weight matrix.
fn conv_weight(row: u32, col: u32) -> f32 {
    return load(p.a_slot, p.a_off + row * p.k + col);
}

// The weight tile of one group: rows ch0 + m0.., taps k0...
fn load_conv_weight_tile(ch0: u32, m0: u32, k0: u32, li: u32) {
    load_a_tile(p.a_off + ch0 * p.k, m0, k0, li);
}

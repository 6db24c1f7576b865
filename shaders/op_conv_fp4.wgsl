// conv2d_packed weights in FP4: E2M1 codes packed like Q4, in groups of 8 group_words codes along
// K, one scale per group in the auxiliary component: E8M0 (four exponent bytes per word) or f16
// (two halves per word), chosen by the header's FP4_SCALE_F16 (one module per scale kind).
// See op_conv_packed.wgsl.

// E2M1 code (bit 3 the sign) to f32, as matmul_fp4.wgsl: magnitude code c >= 2 is
// 2^((c >> 1) - 1) (1 + (c & 1) / 2), code 1 is 0.5, code 0 is 0.
fn e2m1_value(code: u32) -> f32 {
    let mag = code & 7u;
    let normal = (((mag >> 1u) + 126u) << 23u) | ((mag & 1u) << 22u);
    let small = select(0u, 0x3F000000u, mag == 1u);
    return bitcast<f32>(select(small, normal, mag >= 2u) | ((code & 8u) << 28u));
}

fn fp4_group_scale(row: u32, g: u32) -> f32 {
    let base = row * p.aux_row_words;
    if FP4_SCALE_F16 {
        return half_to_f32((packed_aux(base + g / 2u) >> (16u * (g % 2u))) & 0xffffu);
    }
    let e = (packed_aux(base + g / 4u) >> (8u * (g % 4u))) & 255u;
    // 2^(e - 127); e = 0 is the subnormal 2^-127.
    return select(bitcast<f32>(e << 23u), bitcast<f32>(1u << 22u), e == 0u);
}

fn weight_at(row: u32, col: u32) -> f32 {
    let word = packed_word(row * p.row_words + col / 8u);
    let v = e2m1_value((word >> (4u * (col % 8u))) & 15u);
    return v * fp4_group_scale(row, col / (p.group_words * 8u));
}

// conv2d_packed weights in Q4: codes 0..15, eight per word (code c of a row in bits 4 (c % 8) of
// word c / 8), in groups of 8 group_words codes along K; one auxiliary word per group holding the
// f16 pair (s, m = -z s), s in the low half: w = q s + m. See op_conv_packed.wgsl.

fn weight_at(row: u32, col: u32) -> f32 {
    let word = packed_word(row * p.row_words + col / 8u);
    let q = f32((word >> (4u * (col % 8u))) & 15u);
    let sm = packed_aux(row * p.aux_row_words + col / (p.group_words * 8u));
    return q * half_to_f32(sm & 0xffffu) + half_to_f32(sm >> 16u);
}

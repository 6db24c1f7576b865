// conv2d_packed weights in F16: two halves per word (element c of a row in half c % 2 of word
// c / 2), rows padded to whole words; no auxiliary component. See op_conv_packed.wgsl.

fn weight_at(row: u32, col: u32) -> f32 {
    let word = packed_word(row * p.row_words + col / 2u);
    return half_to_f32((word >> (16u * (col % 2u))) & 0xffffu);
}

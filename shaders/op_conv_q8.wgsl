// conv2d_packed weights in Q8: int8 codes, four per word (code c of a row in byte c % 4 of word
// c / 4), one f32 scale per row in the auxiliary component. See op_conv_packed.wgsl.

fn weight_at(row: u32, col: u32) -> f32 {
    let word = packed_word(row * p.row_words + col / 4u);
    // Shift the byte to the top, then an arithmetic shift back sign-extends it.
    let q = bitcast<i32>(word << (24u - 8u * (col % 4u))) >> 24u;
    return f32(q) * bitcast<f32>(packed_aux(row * p.aux_row_words));
}

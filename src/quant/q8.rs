//! q8: int8 weights, symmetric, one f32 scale per output row. Four codes per u32 word, code `c`
//! of a row in byte `c % 4` of word `c / 4`.

/// Returns (quants, scales). Callers have checked shapes and finiteness.
pub(super) fn quantize(w: &[f32], n: usize, k: usize) -> (Vec<u32>, Vec<u32>) {
    let row_words = k.div_ceil(4);
    let mut quants = vec![0u32; n * row_words];
    let mut scales = vec![0u32; n];
    for (r, row) in w.chunks_exact(k).enumerate() {
        let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
        let s = amax / 127.0;
        scales[r] = s.to_bits();
        if s == 0.0 {
            continue;
        }
        for (c, &v) in row.iter().enumerate() {
            let q = (v / s).round_ties_even().clamp(-128.0, 127.0) as i8;
            quants[r * row_words + c / 4] |= (q as u8 as u32) << (8 * (c % 4));
        }
    }
    (quants, scales)
}

// conv2d with packed weights (F16, Q8, Q4, FP4 as src/tensor.rs lays them out). op_gemm.wgsl's
// `conv2d` and `conv2d_direct` read conv weights only through `conv_weight` and
// `load_conv_weight_tile`; this file defines them over `weight_at(row, col)`, element (output
// channel, tap) of the [M, K] weight matrix, which the module's format file
// (op_conv_<format>.wgsl) defines by decoding the packed words in place (op_conv_f32.wgsl defines
// them for f32 weights). The weights stay packed in memory; the decode happens while the weight
// tile is filled.
//
// A module is: generated header (BM, BN, format constants), op_common.wgsl with src0..src2 typed
// array<u32> (so packed words are read as integers, never moved through a float register that
// could flush or canonicalise them; `load` bitcasts them back to f32 for the f32 operands),
// op_gemm.wgsl, this file and one format file. See graph_ops/gemm.rs, `packed_source`.
//
// Params (op_gemm.wgsl): a_slot/a_off locate the main component (codes or halves), s_slot/s_off
// the auxiliary one (scales or group parameters); row_words, aux_row_words and group_words are
// the packed layout, as in the matmul kernels' MatmulParams.

// Word i of a packed operand. The weights never live in the output's buffer in practice, but a
// bitcast from dst keeps the binding model total.
fn load_word(slot: u32, i: u32) -> u32 {
    var v: u32;
    switch slot {
        case 0u: { v = bitcast<u32>(dst[i]); }
        case 1u: { v = src0[i]; }
        case 2u: { v = src1[i]; }
        case 3u: { v = src2[i]; }
        default: { v = bitcast<u32>(aux[i]); }
    }
    return v;
}

// Word i of the main component / of the auxiliary component (scales, group parameters).
fn packed_word(i: u32) -> u32 {
    return load_word(p.a_slot, p.a_off + i);
}

fn packed_aux(i: u32) -> u32 {
    return load_word(p.s_slot, p.s_off + i);
}

// IEEE binary16 bits (low 16 bits of h) to f32, exactly. Done by hand: unpack2x16float needs a
// capability these modules do without. Subnormals are built as an f32 product (2^-24 m is a
// normal f32), so a device that flushes f32 subnormals still gets them right.
fn half_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 31u;
    let m = h & 1023u;
    if e == 0u {
        let v = f32(m) * 5.9604644775390625e-8;
        return select(v, -v, sign != 0u);
    }
    if e == 31u {
        return bitcast<f32>(sign | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// The weight tile of one group: rows ch0 + m0.., taps k0..; K is contiguous in a packed row, so
// neighbouring threads decode neighbouring codes (mostly of the same word).
fn load_conv_weight_tile(ch0: u32, m0: u32, k0: u32, li: u32) {
    for (var r = 0u; r < TM; r++) {
        let e = li + r * THREADS;
        let kk = e % BK;
        let mm = e / BK;
        let gm = m0 + mm;
        let gk = k0 + kk;
        var v = 0.0;
        if gm < p.m && gk < p.k {
            v = weight_at(ch0 + gm, gk);
        }
        a_tile[kk * AS + mm] = v;
    }
}

// Element (row, col) of the weight matrix, decoded (op_gemm.wgsl's conv2d_direct reads it).
fn conv_weight(row: u32, col: u32) -> f32 {
    return weight_at(row, col);
}

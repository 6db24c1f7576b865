// Prelude of every graph-op module (op_*.wgsl): the bindings, the operand loader and the fused
// activation. A module is this file followed by one family file that declares `struct Params`
// (WGSL resolves module-scope names in any order). The Rust side is
// src/backend/gpu/graph_ops.rs, whose header explains the binding model:
//
// - `dst` is the output's buffer (the executor's arena), bound once, read_write. Inputs that live
//   in the same buffer are read through it too: wgpu refuses a buffer bound both read-only and
//   writable in one dispatch, whatever the ranges.
// - `src0`..`src2` are up to three other buffers (constants), bound read-only.
// - `aux` is this step's own parameter buffer bound a second time, read-only: tables the host
//   computed (resize coordinates) and per-channel clip thresholds, after the Params block.
//
// An operand is a (slot, element offset) pair in Params: slot 0 dst, 1..3 src0..src2, 4 aux.
// Every entry point reads through `load`, so every binding is statically used and the derived
// bind group layout is the same six entries for every pipeline.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src0: array<f32>;
@group(0) @binding(3) var<storage, read> src1: array<f32>;
@group(0) @binding(4) var<storage, read> src2: array<f32>;
@group(0) @binding(5) var<storage, read> aux: array<f32>;

const SLOT_AUX: u32 = 4u;

// The slot is uniform across the dispatch, so the switch costs a scalar branch, not divergence.
fn load(slot: u32, i: u32) -> f32 {
    var v: f32;
    switch slot {
        case 0u: { v = dst[i]; }
        case 1u: { v = src0[i]; }
        case 2u: { v = src1[i]; }
        case 3u: { v = src2[i]; }
        default: { v = aux[i]; }
    }
    return v;
}

// Mirrors `ActParams` in graph_ops.rs; `kind` numbers the variants of ops::Activation.
struct Act {
    kind: u32,
    alpha: f32,
    beta: f32,
    // aux element offset of per-channel clip thresholds; NO_TABLE means one threshold (alpha).
    clip_off: u32,
}

const NO_TABLE: u32 = 0xffffffffu;

const ACT_NONE: u32 = 0u;
const ACT_RELU: u32 = 1u;
const ACT_SIGMOID: u32 = 2u;
const ACT_SILU: u32 = 3u;
const ACT_ELU: u32 = 4u;
const ACT_GELU: u32 = 5u;
const ACT_CLIPPED_RELU: u32 = 6u;
const ACT_LEAKY_RELU: u32 = 7u;
const ACT_HARD_SIGMOID: u32 = 8u;
const ACT_HARD_SWISH: u32 = 9u;
const ACT_CLIP: u32 = 10u;
const ACT_CLIPPED_SILU: u32 = 11u;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// Phi(x) = erfc(-x / sqrt 2) / 2 with the Numerical Recipes `erfcc` fit, as ops::math::normal_cdf
// (WGSL has no erf). Relative error about 1.2e-7 plus that of the device's exp.
fn normal_cdf(x: f32) -> f32 {
    let z = abs(x) * 0.70710678118654752;
    let t = 1.0 / (1.0 + 0.5 * z);
    var q = 0.17087277;
    q = q * t - 0.82215223;
    q = q * t + 1.4885159;
    q = q * t - 1.135204;
    q = q * t + 0.27886807;
    q = q * t - 0.18628806;
    q = q * t + 0.09678418;
    q = q * t + 0.37409196;
    q = q * t + 1.0000237;
    q = q * t - 1.2655122;
    let half_erfc = 0.5 * t * exp(q - z * z);
    return select(1.0 - half_erfc, half_erfc, x < 0.0);
}

// The activation of `v` in output channel `ch` (only per-channel clip thresholds use it).
fn act(a: Act, v: f32, ch: u32) -> f32 {
    var y = v;
    switch a.kind {
        case ACT_RELU: { y = max(v, 0.0); }
        case ACT_SIGMOID: { y = sigmoid(v); }
        case ACT_SILU: { y = v * sigmoid(v); }
        case ACT_ELU: { y = select(a.alpha * (exp(v) - 1.0), v, v > 0.0); }
        case ACT_GELU: { y = v * normal_cdf(v); }
        case ACT_CLIPPED_RELU: {
            var t = a.alpha;
            if a.clip_off != NO_TABLE {
                t = load(SLOT_AUX, a.clip_off + ch);
            }
            y = select(0.0, v, v > 0.0 && v <= t);
        }
        case ACT_CLIPPED_SILU: {
            var t = a.alpha;
            if a.clip_off != NO_TABLE {
                t = load(SLOT_AUX, a.clip_off + ch);
            }
            let s = v * sigmoid(v);
            // `s <= t` is false for NaN: a corrupted value goes to 0 as in the CPU twin.
            y = select(0.0, s, s <= t);
        }
        case ACT_LEAKY_RELU: { y = select(a.alpha * v, v, v >= 0.0); }
        case ACT_HARD_SIGMOID: { y = clamp(a.alpha * v + a.beta, 0.0, 1.0); }
        case ACT_HARD_SWISH: { y = v * clamp(v * (1.0 / 6.0) + 0.5, 0.0, 1.0); }
        case ACT_CLIP: { y = min(max(v, a.alpha), a.beta); }
        case ACT_NONE, default: {}
    }
    return y;
}

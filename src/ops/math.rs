//! Scalar math written so that loops over slices vectorise: no libm calls, no branches that LLVM
//! cannot turn into selects.

/// exp(x) to about 2 ulp for x in [-87.3, 88]; inputs outside are clamped (so exp saturates at
/// e^88 ~ 1.7e38 and bottoms out at ~1.2e-38 instead of reaching inf or 0). NaN stays NaN.
///
/// Cody-Waite range reduction x = n ln2 + r with |r| <= ln2 / 2, the degree-7 polynomial of
/// Cephes `expf` for e^r, and 2^n built from exponent bits.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    exp_with::<false>(x)
}

/// [`exp`], with fused multiply-adds in the polynomial when `FMA` (callers compiled with FMA).
#[inline(always)]
pub(crate) fn exp_with<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let k = x * LOG2E + ROUND;
    let n = k - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = fmadd::<FMA>(p, r, 1.398_199_9e-3);
    let p = fmadd::<FMA>(p, r, 8.333_452e-3);
    let p = fmadd::<FMA>(p, r, 4.166_579_6e-2);
    let p = fmadd::<FMA>(p, r, 1.666_666_5e-1);
    let p = fmadd::<FMA>(p, r, 0.5);
    let p = fmadd::<FMA>(p, r * r, r) + 1.0;
    // k's bits are 0x4B40_0000 + n; shifting left by 23 keeps n's low 9 bits in the exponent
    // field (the constant's low bits are zero), and adding the bias 127 makes 2^n for
    // n in [-126, 127], which the clamp guarantees.
    let two_n = f32::from_bits((k.to_bits() << 23).wrapping_add(127 << 23));
    p * two_n
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub(crate) fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp_with::<FMA>(-x))
}

/// x * sigmoid(x), with one division.
#[inline(always)]
pub(crate) fn silu<const FMA: bool>(x: f32) -> f32 {
    x / (1.0 + exp_with::<FMA>(-x))
}

/// The standard normal CDF Phi(x) = erfc(-x / sqrt 2) / 2, with relative error about 1.2e-7
/// everywhere, tails included.
///
/// erfc is the Chebyshev-fitted form of Numerical Recipes (Press et al., 2nd ed., section 6.2,
/// `erfcc`): erfc(z) = t exp(-z^2 - 1.26551223 + t P(t)), t = 1 / (1 + z/2) for z >= 0, and
/// erfc(-z) = 2 - erfc(z). Computing Phi from erfc (not 1 + erf) keeps the relative accuracy
/// for negative x, where GELU's output is small.
#[inline(always)]
pub(crate) fn normal_cdf<const FMA: bool>(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77;
    let p = fmadd::<FMA>(p, t, -0.822_152_23);
    let p = fmadd::<FMA>(p, t, 1.488_515_9);
    let p = fmadd::<FMA>(p, t, -1.135_204);
    let p = fmadd::<FMA>(p, t, 0.278_868_07);
    let p = fmadd::<FMA>(p, t, -0.186_288_06);
    let p = fmadd::<FMA>(p, t, 0.096_784_18);
    let p = fmadd::<FMA>(p, t, 0.374_091_96);
    let p = fmadd::<FMA>(p, t, 1.000_023_7);
    let p = fmadd::<FMA>(p, t, -1.265_512_2);
    // erfc(z) for z = |x| / sqrt 2; Phi(x) = erfc(z) / 2 for x < 0 and 1 - erfc(z) / 2 otherwise.
    let half_erfc = 0.5 * t * exp_with::<FMA>(p - z * z);
    if x < 0.0 {
        half_erfc
    } else {
        1.0 - half_erfc
    }
}

/// a * b + c, fused when the target has FMA (the caller is compiled with it), else two ops.
#[inline(always)]
pub(crate) fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

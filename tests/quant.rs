//! The codecs: round trips, quantization error per format against the original float weights,
//! E2M1 and E8M0 encodings, bit switching, and LoRC.

use kestrel::quant::{self, e2m1_decode, e2m1_encode, round_half_even_shift, E2M1_VALUES};
use kestrel::rng::SplitMix64;
use kestrel::tensor::{Fp4Scale, Scheme};
use kestrel::tol::rel_l2;

/// Expected relative L2 error of quantizing N(0,1) weights, per format: what each codec's
/// resolution allows (a broken codec lands far above these, a lossless one at ~0).
fn codec_bound(s: Scheme) -> f64 {
    match s {
        Scheme::F32 => 1e-7,
        Scheme::F16 => 1e-3,
        Scheme::Q8 => 1.5e-2,
        Scheme::Q4 { group: 32, .. } => 0.11,
        Scheme::Q4 { .. } => 0.14,
        Scheme::Fp4 { .. } => 0.16,
    }
}

#[test]
fn quantization_error_is_within_each_formats_resolution() {
    let mut rng = SplitMix64::new(SplitMix64::from_time().next_u64());
    let (n, k) = (37, 300);
    let w = rng.normal_vec(n * k);
    for scheme in kestrel::selftest::all_schemes() {
        let p = quant::quantize(&w, n, k, scheme).unwrap();
        let deq = quant::dequantize(&p.view());
        let err = rel_l2(&w, &deq);
        assert!(err < codec_bound(scheme), "{}: {err}", scheme.label());
        // And not suspiciously exact for the lossy ones.
        if scheme.is_quantized() {
            assert!(err > 1e-4, "{}: {err}", scheme.label());
        }
    }
}

#[test]
fn quantizers_reject_non_finite_weights_and_bad_shapes() {
    let mut w = vec![0.5f32; 64];
    w[17] = f32::NAN;
    let e = quant::quantize(&w, 2, 32, Scheme::Q8).unwrap_err();
    assert!(matches!(e, kestrel::Error::InvalidQuantization { .. }), "{e}");
    assert!(e.to_string().contains("row 0, column 17"), "{e}");
    assert!(quant::quantize(&[1.0; 10], 3, 4, Scheme::Q8).is_err());
    assert!(quant::quantize(&[1.0; 64], 2, 32, Scheme::Q4 { group: 48, symmetric: false }).is_err());
    assert!(quant::quantize(&[1.0; 64], 2, 32, Scheme::Fp4 { group: 64, scale: Fp4Scale::E8M0 }).is_err());
}

#[test]
fn constant_and_zero_groups_are_exact() {
    for scheme in [Scheme::Q4 { group: 32, symmetric: false }, Scheme::Q4 { group: 32, symmetric: true }, Scheme::Q8] {
        let p = quant::quantize(&[0.0; 64], 2, 32, scheme).unwrap();
        assert!(quant::dequantize(&p.view()).iter().all(|&v| v == 0.0), "{}", scheme.label());
    }
    let p = quant::quantize(&[0.25; 32], 1, 32, Scheme::Q4 { group: 32, symmetric: false }).unwrap();
    assert!(quant::dequantize(&p.view()).iter().all(|&v| v == 0.25));
}

#[test]
fn e2m1_codes_round_to_nearest_even_and_saturate() {
    for (code, &v) in E2M1_VALUES.iter().enumerate() {
        assert_eq!(e2m1_decode(code as u8), v);
        if code != 8 {
            assert_eq!(e2m1_encode(v), code as u8, "value {v}");
        }
    }
    // Ties go to the even mantissa: 0.25 -> 0, 0.75 -> 1.0, 1.25 -> 1.0, 2.5 -> 2, 5 -> 4.
    for (v, want) in [
        (0.25, 0.0),
        (0.75, 1.0),
        (1.25, 1.0),
        (1.75, 2.0),
        (2.5, 2.0),
        (3.5, 4.0),
        (5.0, 4.0),
        (100.0, 6.0),
        (-5.5, -6.0),
    ] {
        assert_eq!(e2m1_decode(e2m1_encode(v)), want, "{v}");
    }
}

#[test]
fn mxfp4_scales_are_powers_of_two_that_never_clip() {
    let mut rng = SplitMix64::new(3);
    let w: Vec<f32> = rng.normal_vec(4 * 64).iter().map(|v| v * 37.0).collect();
    let p = quant::quantize(&w, 4, 64, Scheme::Fp4 { group: 32, scale: Fp4Scale::E8M0 }).unwrap();
    let deq = quant::dequantize(&p.view());
    for (g, chunk) in w.chunks(32).enumerate() {
        let amax = chunk.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
        let dmax = deq[g * 32..(g + 1) * 32].iter().fold(0f64, |a, v| a.max(v.abs()));
        // The largest element is representable without clipping: within a quarter of itself.
        assert!((dmax - amax).abs() <= 0.25 * amax, "group {g}: {amax} -> {dmax}");
    }
}

#[test]
fn round_half_even_shift_matches_float_rounding() {
    for q in -128i32..=127 {
        for k in 0..8u32 {
            let want = (q as f64 / (1u32 << k) as f64).round_ties_even() as i32;
            assert_eq!(round_half_even_shift(q, k), want, "q={q} k={k}");
        }
    }
}

#[test]
fn bit_switching_derives_int4_and_int2_from_the_int8_master() {
    let mut rng = SplitMix64::new(SplitMix64::from_time().next_u64());
    let (n, k) = (9, 70);
    let w = rng.normal_vec(n * k);
    let master = quant::quantize(&w, n, k, Scheme::Q8).unwrap();
    let mv = master.view();
    let mut errors = vec![];
    for bits in [8u32, 4, 2] {
        let derived = quant::switch_bits(&mv, bits).unwrap();
        let deq = quant::dequantize(&derived.view());
        for r in 0..n {
            let s = f32::from_bits(mv.aux_row(r)[0]) as f64;
            for c in 0..k {
                let q8 = ((mv.row(r)[c / 4] >> (8 * (c % 4))) & 0xFF) as u8 as i8 as i32;
                let shift = 8 - bits;
                let ql = round_half_even_shift(q8, shift).clamp(-(1 << (bits - 1)), (1 << (bits - 1)) - 1);
                let want = ql as f64 * s * (1u32 << shift) as f64;
                // The switched scale is stored as f16: exact up to its rounding.
                assert!((deq[r * k + c] - want).abs() <= want.abs() * 1e-3 + 1e-12, "bits {bits} r {r} c {c}");
            }
        }
        errors.push(rel_l2(&w, &deq));
    }
    // Fewer bits, more error.
    assert!(errors[0] < errors[1] && errors[1] < errors[2], "{errors:?}");
    assert!(quant::switch_bits(&mv, 3).is_err());
    let q4 = quant::quantize(&w, n, k, Scheme::Q4 { group: 32, symmetric: false }).unwrap();
    assert!(quant::switch_bits(&q4.view(), 4).is_err());
}

#[test]
fn lorc_reduces_the_quantization_error() {
    let mut rng = SplitMix64::new(SplitMix64::from_time().next_u64());
    let (n, k) = (48, 96);
    // Low-rank structure plus noise, as real layers have: LoRC should remove much of the error.
    let a = rng.normal_vec(n * 4);
    let b = rng.normal_vec(4 * k);
    let w: Vec<f32> = (0..n * k)
        .map(|i| (0..4).map(|j| a[(i / k) * 4 + j] * b[j * k + i % k]).sum::<f32>() + 0.1 * rng.normal())
        .collect();
    for scheme in [Scheme::Q4 { group: 32, symmetric: false }, Scheme::Fp4 { group: 32, scale: Fp4Scale::E8M0 }] {
        let mut p = quant::quantize(&w, n, k, scheme).unwrap();
        let plain = rel_l2(&w, &quant::dequantize(&p.view()));
        quant::add_lorc(&mut p, &w, 8).unwrap();
        let deq = quant::dequantize(&p.view());
        let corr = quant::lorc_dense(&p.view()).unwrap();
        let with: Vec<f64> = deq.iter().zip(&corr).map(|(a, b)| a + b).collect();
        let lorc = rel_l2(&w, &with);
        assert!(lorc < 0.9 * plain, "{}: {plain} -> {lorc}", scheme.label());
    }
    let mut p = quant::quantize(&w, n, k, Scheme::Q8).unwrap();
    assert!(quant::add_lorc(&mut p, &w, 0).is_err());
    assert!(quant::add_lorc(&mut p, &w, 65).is_err());
}

#[test]
fn scheme_names_parse_and_print() {
    for name in ["f32", "f16", "q8", "q4g32", "q4g64", "q4g128", "q4g64-sym", "fp4g32-e8m0", "fp4g64-f16"] {
        assert_eq!(Scheme::parse(name).unwrap().label(), name);
    }
    assert_eq!(Scheme::parse("q4").unwrap(), Scheme::Q4 { group: 128, symmetric: false });
    assert_eq!(Scheme::parse("fp4").unwrap(), Scheme::Fp4 { group: 32, scale: Fp4Scale::E8M0 });
    for bad in ["q3", "q4g48", "fp4g64-e8m0", "", "int4"] {
        assert!(Scheme::parse(bad).is_err(), "{bad}");
    }
}

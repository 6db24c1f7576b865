//! ONNX `Resize` on 4-D NCHW tensors: nearest or (bi)linear on H and W, N and C unchanged.
//!
//! The importer turns `scales` / `sizes` into an output shape; when the model gave scales, pass
//! them in [`Resize::scales`] too, because ONNX maps coordinates with the given scale, not with
//! out / in (they differ when in * scale is not an integer).
//!
//! Coordinates are computed in f64 from the integer output index, so integer scale factors (the
//! 2x upsample in YOLO necks) map exactly, as in ONNX Runtime.

use super::check_len;
use crate::error::{Error, Result};

/// Interpolation mode (ONNX `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizeMode {
    Nearest,
    /// Bilinear on H and W.
    Linear,
}

/// How an output index maps to an input coordinate (ONNX `coordinate_transformation_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoordTransform {
    /// (x + 0.5) / scale - 0.5 (the ONNX default).
    HalfPixel,
    /// x / scale.
    Asymmetric,
    /// x * (in - 1) / (out - 1), 0 when out is 1.
    AlignCorners,
    /// As half_pixel, but 0 when out is 1.
    PytorchHalfPixel,
}

/// Rounding of the input coordinate in nearest mode (ONNX `nearest_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NearestMode {
    /// Round to nearest, halves down (the ONNX default).
    RoundPreferFloor,
    /// Round to nearest, halves up.
    RoundPreferCeil,
    Floor,
    Ceil,
}

impl ResizeMode {
    /// From the ONNX attribute; `cubic` is refused.
    pub fn from_onnx(s: &str) -> Result<Self> {
        match s {
            "nearest" => Ok(Self::Nearest),
            "linear" => Ok(Self::Linear),
            other => Err(Error::Unsupported { what: format!("Resize mode '{other}'") }),
        }
    }
}

impl CoordTransform {
    /// From the ONNX attribute; `tf_crop_and_resize`, `half_pixel_symmetric` and
    /// `tf_half_pixel_for_nn` are refused.
    pub fn from_onnx(s: &str) -> Result<Self> {
        match s {
            "half_pixel" => Ok(Self::HalfPixel),
            "asymmetric" => Ok(Self::Asymmetric),
            "align_corners" => Ok(Self::AlignCorners),
            "pytorch_half_pixel" => Ok(Self::PytorchHalfPixel),
            other => Err(Error::Unsupported { what: format!("Resize coordinate_transformation_mode '{other}'") }),
        }
    }
}

impl NearestMode {
    /// From the ONNX attribute.
    pub fn from_onnx(s: &str) -> Result<Self> {
        match s {
            "round_prefer_floor" => Ok(Self::RoundPreferFloor),
            "round_prefer_ceil" => Ok(Self::RoundPreferCeil),
            "floor" => Ok(Self::Floor),
            "ceil" => Ok(Self::Ceil),
            other => Err(Error::Unsupported { what: format!("Resize nearest_mode '{other}'") }),
        }
    }
}

/// Parameters of a resize.
#[derive(Clone, Debug, PartialEq)]
pub struct Resize {
    pub mode: ResizeMode,
    pub coord: CoordTransform,
    /// Used in nearest mode only.
    pub nearest: NearestMode,
    /// The model's [scale_h, scale_w] when it gave scales; None uses out / in.
    pub scales: Option<[f32; 2]>,
}

impl Default for Resize {
    /// The ONNX defaults: nearest, half_pixel, round_prefer_floor, scales from the shapes.
    fn default() -> Self {
        Resize {
            mode: ResizeMode::Nearest,
            coord: CoordTransform::HalfPixel,
            nearest: NearestMode::RoundPreferFloor,
            scales: None,
        }
    }
}

/// Maps output index `o` of an axis (in_len -> out_len, `scale`) to an input coordinate.
pub(crate) fn source_coord(coord: CoordTransform, o: usize, in_len: usize, out_len: usize, scale: f64) -> f64 {
    let o = o as f64;
    match coord {
        CoordTransform::HalfPixel => (o + 0.5) / scale - 0.5,
        CoordTransform::PytorchHalfPixel if out_len > 1 => (o + 0.5) / scale - 0.5,
        CoordTransform::PytorchHalfPixel => 0.0,
        CoordTransform::Asymmetric => o / scale,
        CoordTransform::AlignCorners if out_len > 1 => o * (in_len as f64 - 1.0) / (out_len as f64 - 1.0),
        CoordTransform::AlignCorners => 0.0,
    }
}

pub(crate) fn nearest_index(mode: NearestMode, x: f64, in_len: usize) -> usize {
    let fl = x.floor();
    let r = match mode {
        NearestMode::Floor => fl,
        NearestMode::Ceil => x.ceil(),
        NearestMode::RoundPreferFloor if x - fl == 0.5 => fl,
        NearestMode::RoundPreferCeil if x - fl == 0.5 => fl + 1.0,
        NearestMode::RoundPreferFloor | NearestMode::RoundPreferCeil => x.round(),
    };
    r.clamp(0.0, in_len as f64 - 1.0) as usize
}

/// Linear neighbours of coordinate x: (i0, i1, weight of i1), clamped to the edge.
pub(crate) fn linear_taps(x: f64, in_len: usize) -> (usize, usize, f32) {
    let x = x.clamp(0.0, in_len as f64 - 1.0);
    let i0 = x.floor() as usize;
    let i1 = (i0 + 1).min(in_len - 1);
    (i0, i1, (x - i0 as f64) as f32)
}

/// Output columns handled per pass; their source indices live in stack arrays.
const COLS: usize = 256;

/// Resizes NCHW `x` of `x_shape` to `out_shape` (same N and C).
pub fn resize(x: &[f32], x_shape: &[usize], out_shape: &[usize], p: &Resize, out: &mut [f32]) -> Result<()> {
    let op = "resize";
    let ([n, c, h, w], [on, oc, oh, ow]) = (x_shape, out_shape) else {
        return Err(Error::shape(op, "4-D input and output shapes", format!("{x_shape:?} -> {out_shape:?}")));
    };
    let (n, c, h, w, oh, ow) = (*n, *c, *h, *w, *oh, *ow);
    if *on != n || *oc != c {
        return Err(Error::shape(op, format!("output [{n}, {c}, ..] (N and C unchanged)"), format!("{out_shape:?}")));
    }
    check_len(op, "input", x.len(), x_shape)?;
    check_len(op, "output", out.len(), out_shape)?;
    if out.is_empty() {
        return Ok(());
    }
    if x.is_empty() {
        return Err(Error::shape(op, "a non-empty input", format!("{x_shape:?}")));
    }
    let (sh, sw) = match p.scales {
        Some([a, b]) => {
            if !(a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()) {
                return Err(Error::InvalidArgument { reason: format!("resize scales {a}, {b} must be positive") });
            }
            (a as f64, b as f64)
        }
        None => (oh as f64 / h as f64, ow as f64 / w as f64),
    };
    let (in_plane, out_plane) = (h * w, oh * ow);
    let mut c0 = 0;
    while c0 < ow {
        let cols = COLS.min(ow - c0);
        match p.mode {
            ResizeMode::Nearest => {
                let mut ix = [0usize; COLS];
                for (j, v) in ix[..cols].iter_mut().enumerate() {
                    *v = nearest_index(p.nearest, source_coord(p.coord, c0 + j, w, ow, sw), w);
                }
                for (src, dst) in x.chunks_exact(in_plane).zip(out.chunks_exact_mut(out_plane)) {
                    for y in 0..oh {
                        let iy = nearest_index(p.nearest, source_coord(p.coord, y, h, oh, sh), h);
                        let row = &src[iy * w..][..w];
                        for (o, &i) in dst[y * ow + c0..][..cols].iter_mut().zip(&ix[..cols]) {
                            *o = row[i];
                        }
                    }
                }
            }
            ResizeMode::Linear => {
                let (mut i0, mut i1, mut wx) = ([0usize; COLS], [0usize; COLS], [0f32; COLS]);
                for j in 0..cols {
                    (i0[j], i1[j], wx[j]) = linear_taps(source_coord(p.coord, c0 + j, w, ow, sw), w);
                }
                for (src, dst) in x.chunks_exact(in_plane).zip(out.chunks_exact_mut(out_plane)) {
                    for y in 0..oh {
                        let (y0, y1, wy) = linear_taps(source_coord(p.coord, y, h, oh, sh), h);
                        let (r0, r1) = (&src[y0 * w..][..w], &src[y1 * w..][..w]);
                        let d = &mut dst[y * ow + c0..][..cols];
                        for j in 0..cols {
                            let top = r0[i0[j]] + wx[j] * (r0[i1[j]] - r0[i0[j]]);
                            let bottom = r1[i0[j]] + wx[j] * (r1[i1[j]] - r1[i0[j]]);
                            d[j] = top + wy * (bottom - top);
                        }
                    }
                }
            }
        }
        c0 += cols;
    }
    Ok(())
}

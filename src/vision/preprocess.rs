//! Frames to network inputs: letterbox (aspect kept, centred on grey 114 padding), scaled to
//! [0, 1], NCHW f32 — the ultralytics convention the shipped models were trained with.
//!
//! The resize is PIL's `Image.resize(..., BILINEAR)`, which the training script uses: a
//! separable triangle filter whose support widens with the downscale factor (so shrinking
//! averages every source pixel instead of sampling a few), horizontal pass first, rounded to
//! 8 bits between the passes. Matching it keeps what the model sees at run time the same as in
//! training, to within one grey level.

use super::image::Image;

/// Padding grey level (ultralytics' letterbox colour).
pub const PAD: u8 = 114;

/// Where a frame landed in the letterboxed square: input = frame * scale + (dx, dy).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub dx: f32,
    pub dy: f32,
    pub size: usize,
}

impl Letterbox {
    /// The placement of a `width` x `height` frame in a `size` square.
    pub fn new(width: usize, height: usize, size: usize) -> Letterbox {
        let scale = (size as f32 / width as f32).min(size as f32 / height as f32);
        let (nw, nh) = ((width as f32 * scale).round() as usize, (height as f32 * scale).round() as usize);
        Letterbox { scale, dx: ((size - nw.min(size)) / 2) as f32, dy: ((size - nh.min(size)) / 2) as f32, size }
    }

    /// Resized size (width, height) inside the square.
    pub fn inner(&self, width: usize, height: usize) -> (usize, usize) {
        (
            ((width as f32 * self.scale).round() as usize).min(self.size),
            ((height as f32 * self.scale).round() as usize).min(self.size),
        )
    }

    /// A box in letterboxed input pixels back to frame pixels.
    pub fn unmap(&self, b: [f32; 4]) -> [f32; 4] {
        [
            (b[0] - self.dx) / self.scale,
            (b[1] - self.dy) / self.scale,
            (b[2] - self.dx) / self.scale,
            (b[3] - self.dy) / self.scale,
        ]
    }
}

/// Buffers for letterboxing a stream of frames: once they have grown to the stream's sizes,
/// [`letterbox_with`] allocates nothing (the steady-state control loop relies on it).
#[derive(Clone, Debug, Default)]
pub struct LetterboxScratch {
    converted: Image,
    horizontal: Image,
    resized: Image,
}

/// Letterboxes `img` into `out` ([channels, size, size] f32 in [0, 1]; `channels` 1 or 3, gray
/// or RGB converted as needed). Returns the placement.
pub fn letterbox_into(img: &Image, size: usize, channels: usize, out: &mut [f32]) -> Letterbox {
    letterbox_with(img, size, channels, out, &mut LetterboxScratch::default())
}

/// [`letterbox_into`] with reusable buffers.
pub fn letterbox_with(
    img: &Image,
    size: usize,
    channels: usize,
    out: &mut [f32],
    scratch: &mut LetterboxScratch,
) -> Letterbox {
    let LetterboxScratch { converted, horizontal, resized } = scratch;
    let img = match (img.channels, channels) {
        (3, 1) => {
            img.gray_into(converted);
            &*converted
        }
        (1, 3) => {
            img.rgb_into(converted);
            &*converted
        }
        _ => img,
    };
    let lb = Letterbox::new(img.width, img.height, size);
    let (nw, nh) = lb.inner(img.width, img.height);
    let resized = resize_with(img, nw, nh, horizontal, resized);
    let (dx, dy) = (lb.dx as usize, lb.dy as usize);
    let plane = size * size;
    out[..channels * plane].fill(PAD as f32 / 255.0);
    for y in 0..nh {
        for x in 0..nw {
            for c in 0..channels {
                out[c * plane + (y + dy) * size + x + dx] = resized.get(x, y, c) as f32 / 255.0;
            }
        }
    }
    lb
}

/// PIL-compatible bilinear resize (triangle filter, support scaled when shrinking).
pub fn resize_bilinear(img: &Image, width: usize, height: usize) -> Image {
    let (mut horizontal, mut out) = (Image::default(), Image::default());
    resize_with(img, width, height, &mut horizontal, &mut out).clone()
}

/// [`resize_bilinear`] into `out`, through the reusable `scratch`: allocation-free once both
/// have grown (a camera thread resampling every frame).
pub fn resize_bilinear_into(img: &Image, width: usize, height: usize, scratch: &mut Image, out: &mut Image) {
    match (width != img.width, height != img.height) {
        (false, false) => {
            out.reshape(img.width, img.height, img.channels);
            out.data.copy_from_slice(&img.data);
        }
        (true, false) => pass_into(img, width, true, out),
        (false, true) => pass_into(img, height, false, out),
        (true, true) => {
            pass_into(img, width, true, scratch);
            pass_into(scratch, height, false, out);
        }
    }
}

/// [`resize_bilinear`] through reusable buffers; returns `img` itself when no pass is needed.
fn resize_with<'a>(
    img: &'a Image,
    width: usize,
    height: usize,
    horizontal: &'a mut Image,
    out: &'a mut Image,
) -> &'a Image {
    let img = if width == img.width {
        img
    } else {
        pass_into(img, width, true, horizontal);
        &*horizontal
    };
    if height == img.height {
        return img;
    }
    pass_into(img, height, false, out);
    out
}

/// Filter taps held on the stack per output sample (a 30x downscale needs about 61).
const MAX_TAPS: usize = 64;

/// One separable pass along x (`along_x`) or y to `len` samples, rounded to 8 bits, into `out`.
fn pass_into(img: &Image, len: usize, along_x: bool, out: &mut Image) {
    let in_len = if along_x { img.width } else { img.height };
    let (w, h) = if along_x { (len, img.height) } else { (img.width, len) };
    out.reshape(w, h, img.channels);
    let scale = in_len as f64 / len as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // triangle support 1, widened when shrinking
    for o in 0..len {
        let center = (o as f64 + 0.5) * scale;
        let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
        let hi = ((center + support + 0.5).floor() as usize).min(in_len);
        let weight = |i: usize| (1.0 - ((i as f64 + 0.5 - center) / filter_scale).abs()).max(0.0);
        let total: f64 = (lo..hi).map(weight).sum();
        let norm = if total > 0.0 { total } else { 1.0 };
        // The normalised taps of this output, on the stack (no table to allocate); shrinking by
        // more than 30x has more taps than fit, and computes them where they are used.
        let mut taps = [0.0f64; MAX_TAPS];
        let tabled = hi - lo <= MAX_TAPS;
        if tabled {
            for (t, i) in taps.iter_mut().zip(lo..hi) {
                *t = weight(i) / norm;
            }
        }
        let other = if along_x { h } else { w };
        for q in 0..other {
            for c in 0..img.channels {
                let mut acc = 0.0;
                for i in lo..hi {
                    let px = if along_x { img.get(i, q, c) } else { img.get(q, i, c) };
                    let wt = if tabled { taps[i - lo] } else { weight(i) / norm };
                    acc += wt * px as f64;
                }
                let v = acc.round().clamp(0.0, 255.0) as u8;
                let (x, y) = if along_x { (o, q) } else { (q, o) };
                out.data[(y * w + x) * img.channels + c] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_into_buffers_matches_the_allocating_resize_for_every_pass() {
        let mut img = Image::new(40, 30, 1);
        img.data.iter_mut().enumerate().for_each(|(i, v)| *v = (i * 37 % 251) as u8);
        let (mut scratch, mut out) = (Image::default(), Image::default());
        // Same size (a copy), one pass along x, one along y, and both.
        for (w, h) in [(40, 30), (64, 30), (40, 48), (64, 48), (20, 12)] {
            resize_bilinear_into(&img, w, h, &mut scratch, &mut out);
            let expected = resize_bilinear(&img, w, h);
            assert_eq!((out.width, out.height, out.channels), (w, h, 1));
            assert_eq!(out.data, expected.data, "{w}x{h}");
        }
    }
}

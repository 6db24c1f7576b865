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
    let src_row = nw * channels;
    for y in 0..nh {
        let src = &resized.data[y * src_row..][..src_row];
        for c in 0..channels {
            let dst = &mut out[c * plane + (y + dy) * size + dx..][..nw];
            for (d, &v) in dst.iter_mut().zip(src.iter().skip(c).step_by(channels)) {
                *d = v as f32 / 255.0;
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

/// The filter of one output sample: its source range and normalised taps.
struct Filter {
    lo: usize,
    hi: usize,
    center: f64,
    filter_scale: f64,
    norm: f64,
    /// The taps, when they fit (`tabled`; a 30x downscale needs about 61); past that they are
    /// computed where they are used.
    taps: [f64; MAX_TAPS],
    tabled: bool,
}

impl Filter {
    fn new(o: usize, in_len: usize, scale: f64) -> Filter {
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // triangle support 1, widened when shrinking
        let center = (o as f64 + 0.5) * scale;
        let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
        let hi = ((center + support + 0.5).floor() as usize).min(in_len);
        let mut f = Filter { lo, hi, center, filter_scale, norm: 1.0, taps: [0.0; MAX_TAPS], tabled: false };
        let total: f64 = (lo..hi).map(|i| f.weight(i)).sum();
        f.norm = if total > 0.0 { total } else { 1.0 };
        if hi - lo <= MAX_TAPS {
            for i in lo..hi {
                f.taps[i - lo] = f.weight(i) / f.norm;
            }
            f.tabled = true;
        }
        f
    }

    fn weight(&self, i: usize) -> f64 {
        (1.0 - ((i as f64 + 0.5 - self.center) / self.filter_scale).abs()).max(0.0)
    }

    /// The normalised tap of source sample `lo + k`.
    #[inline(always)]
    fn tap(&self, k: usize) -> f64 {
        if self.tabled {
            self.taps[k]
        } else {
            self.weight(self.lo + k) / self.norm
        }
    }

    /// [`Filter::apply`] on four rows.
    #[inline(always)]
    fn apply4(&self, rows: [&[u8]; 4], ch: usize, c: usize) -> [f64; 4] {
        if !self.tabled {
            return rows.map(|r| self.apply(r, ch, c));
        }
        let at = self.lo * ch + c;
        let px: [&[u8]; 4] = rows.map(|r| &r[at..at + (self.hi - self.lo).saturating_sub(1) * ch + 1]);
        let mut acc = [0.0f64; 4];
        for (k, &t) in self.taps[..self.hi - self.lo].iter().enumerate() {
            for (a, p) in acc.iter_mut().zip(&px) {
                *a += t * p[k * ch] as f64;
            }
        }
        acc
    }

    /// The filtered value of one channel of `row` (`ch` interleaved channels).
    #[inline(always)]
    fn apply(&self, row: &[u8], ch: usize, c: usize) -> f64 {
        let px = &row[self.lo * ch + c..];
        let mut acc = 0.0;
        if self.tabled {
            for (k, &t) in self.taps[..self.hi - self.lo].iter().enumerate() {
                acc += t * px[k * ch] as f64;
            }
        } else {
            for k in 0..self.hi - self.lo {
                acc += self.tap(k) * px[k * ch] as f64;
            }
        }
        acc
    }
}

/// Outputs whose filters the pass along x works out together, then applies to each row.
const BLOCK: usize = 16;

/// Row lanes summed together by the pass along y.
const LANES: usize = 256;

/// One separable pass along x (`along_x`) or y to `len` samples, rounded to 8 bits, into `out`.
///
/// The taps of an output are worked out once and applied to every row (or column) and channel
/// with plain slice reads, in an order that keeps the sums independent: along x, a block of
/// outputs at a time over each row (which stays in cache); along y, each tap adds a whole source
/// row into a row of sums. (It runs on every frame of both cameras; pixel by pixel through
/// `Image::get` it took a sixth of a frame's time.) The arithmetic and its order per sample are
/// those of PIL's filter in f64, as before.
fn pass_into(img: &Image, len: usize, along_x: bool, out: &mut Image) {
    let in_len = if along_x { img.width } else { img.height };
    let (w, h) = if along_x { (len, img.height) } else { (img.width, len) };
    out.reshape(w, h, img.channels);
    let ch = img.channels;
    let scale = in_len as f64 / len as f64;
    if along_x {
        let (src_row, dst_row) = (img.width * ch, w * ch);
        for block in (0..len).step_by(BLOCK) {
            let outputs = block..(block + BLOCK).min(len);
            let fs: [Filter; BLOCK] = std::array::from_fn(|k| Filter::new((block + k).min(len - 1), in_len, scale));
            // Four rows at a time: four independent sums per tap (one would wait on its adds).
            let mut q = 0;
            while q + 4 <= h {
                let src: [&[u8]; 4] = std::array::from_fn(|r| &img.data[(q + r) * src_row..][..src_row]);
                for (f, o) in fs.iter().zip(outputs.clone()) {
                    for c in 0..ch {
                        for (r, v) in f.apply4(src, ch, c).into_iter().enumerate() {
                            out.data[(q + r) * dst_row + o * ch + c] = round_u8(v);
                        }
                    }
                }
                q += 4;
            }
            for q in q..h {
                let src = &img.data[q * src_row..][..src_row];
                let dst = &mut out.data[q * dst_row..][..dst_row];
                for (f, o) in fs.iter().zip(outputs.clone()) {
                    for c in 0..ch {
                        dst[o * ch + c] = round_u8(f.apply(src, ch, c));
                    }
                }
            }
        }
    } else {
        let row = w * ch;
        for o in 0..len {
            let f = Filter::new(o, in_len, scale);
            let dst = &mut out.data[o * row..][..row];
            for first in (0..row).step_by(LANES) {
                let n = LANES.min(row - first);
                let mut acc = [0.0f64; LANES];
                for (k, i) in (f.lo..f.hi).enumerate() {
                    let t = f.tap(k);
                    for (a, &px) in acc[..n].iter_mut().zip(&img.data[i * row + first..][..n]) {
                        *a += t * px as f64;
                    }
                }
                for (d, &a) in dst[first..first + n].iter_mut().zip(&acc[..n]) {
                    *d = round_u8(a);
                }
            }
        }
    }
}

/// `v.round().clamp(0, 255)` for a filter sum (>= 0 up to rounding), without the libm call
/// `f64::round` compiles to and without a branch (the fraction of a noisy pixel is a coin toss
/// to the predictor): truncate, then add 1 where the fraction is at least a half.
#[inline(always)]
#[allow(clippy::manual_clamp)] // clamp would keep a NaN, which the unchecked cast must not see
fn round_u8(v: f64) -> u8 {
    // max and min return the other operand for a NaN, so v is in [0, 255] whatever came in.
    let v = v.max(0.0).min(255.0);
    // SAFETY: v is finite and in [0, 255], which i32 holds (the checked `as` costs a third of
    // the pass).
    let t = unsafe { v.to_int_unchecked::<i32>() };
    (t + i32::from(v - t as f64 >= 0.5)) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pixel-by-pixel pass this module used to run (`Image::get` per tap), kept as the
    /// reference [`pass_into`] must match bit for bit.
    fn pass_into_reference(img: &Image, len: usize, along_x: bool, out: &mut Image) {
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

    #[test]
    fn each_pass_matches_the_pixel_by_pixel_reference_bit_for_bit() {
        let mut rng = crate::rng::SplitMix64::new(11);
        for (w, h, ch) in [(320, 240, 3), (320, 240, 1), (37, 23, 3), (5, 400, 1), (200, 3, 3)] {
            let mut img = Image::new(w, h, ch);
            img.data.iter_mut().for_each(|v| *v = (rng.next_u64() % 256) as u8);
            // Shrinking (by up to 100x: past MAX_TAPS taps), enlarging, and both axes.
            for len in [1, 2, 3, 17, 64, 192, 333, 500] {
                for along_x in [true, false] {
                    let (mut got, mut want) = (Image::default(), Image::default());
                    pass_into(&img, len, along_x, &mut got);
                    pass_into_reference(&img, len, along_x, &mut want);
                    assert_eq!(got.data, want.data, "{w}x{h}x{ch} to {len} along x: {along_x}");
                }
            }
        }
    }

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

//! 8-bit images in memory and as files: the frames `synth` writes and `detect` reads.
//!
//! An [`Image`] is row-major, interleaved, 1 (gray) or 3 (RGB) channels. Writing is PNG only:
//! lossless, so a generated dataset reads back exactly. Reading takes PNG and JPEG (LLVIP and
//! M3FD ship JPEG), told apart by their first bytes, not the file name. Gray+alpha and RGBA PNGs
//! are accepted and their alpha dropped; 16-bit PNGs are reduced to 8 bits; CMYK JPEGs are
//! refused by name.

use std::io::BufWriter;
use std::path::Path;

use crate::error::{Error, Result};

/// Largest width or height accepted when reading: a hostile header cannot ask for more.
pub const MAX_SIDE: u32 = 16384;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// 1 (gray) or 3 (RGB).
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Image {
    pub fn new(width: usize, height: usize, channels: usize) -> Image {
        Image { width, height, channels, data: vec![0; width * height * channels] }
    }

    /// Pixel (x, y), channel c.
    #[inline]
    pub fn get(&self, x: usize, y: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * self.channels + c]
    }

    /// Makes this a `width` x `height` x `channels` image, reusing its buffer (no allocation when
    /// it has held one this large before). The pixels are unspecified until written.
    pub fn reshape(&mut self, width: usize, height: usize, channels: usize) {
        (self.width, self.height, self.channels) = (width, height, channels);
        self.data.resize(width * height * channels, 0);
    }

    /// The image with 3 channels (gray replicated, as DEYOLO feeds infrared).
    pub fn to_rgb(&self) -> Image {
        let mut out = Image::default();
        self.rgb_into(&mut out);
        out
    }

    /// [`Image::to_rgb`] into a reusable image.
    pub fn rgb_into(&self, out: &mut Image) {
        out.reshape(self.width, self.height, 3);
        if self.channels == 3 {
            out.data.copy_from_slice(&self.data);
            return;
        }
        for (dst, &v) in out.data.chunks_exact_mut(3).zip(&self.data) {
            dst.fill(v);
        }
    }

    /// The image with 1 channel (ITU-R BT.601 luma of RGB).
    pub fn to_gray(&self) -> Image {
        let mut out = Image::default();
        self.gray_into(&mut out);
        out
    }

    /// [`Image::to_gray`] into a reusable image.
    pub fn gray_into(&self, out: &mut Image) {
        out.reshape(self.width, self.height, 1);
        if self.channels == 1 {
            out.data.copy_from_slice(&self.data);
            return;
        }
        for (dst, p) in out.data.iter_mut().zip(self.data.chunks_exact(3)) {
            *dst = ((299 * p[0] as u32 + 587 * p[1] as u32 + 114 * p[2] as u32 + 500) / 1000) as u8;
        }
    }

    /// Writes a PNG (fast compression: datasets are written by the thousand).
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let err = |reason: String| Error::Image { path: path.to_path_buf(), reason };
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut enc = png::Encoder::new(BufWriter::new(file), self.width as u32, self.height as u32);
        enc.set_color(if self.channels == 3 { png::ColorType::Rgb } else { png::ColorType::Grayscale });
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header().map_err(|e| err(e.to_string()))?;
        w.write_image_data(&self.data).map_err(|e| err(e.to_string()))?;
        w.finish().map_err(|e| err(e.to_string()))
    }

    /// Reads a PNG or a JPEG (by content) as 1 or 3 channels of 8 bits.
    pub fn load(path: &Path) -> Result<Image> {
        let mut magic = [0u8; 2];
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let _ = std::io::Read::read(&mut file, &mut magic).map_err(|e| Error::io(path, e))?;
        if magic == [0xFF, 0xD8] {
            Image::load_jpeg(path)
        } else {
            Image::load_png(path)
        }
    }

    /// Reads a baseline or progressive JPEG (gray or RGB).
    pub fn load_jpeg(path: &Path) -> Result<Image> {
        let err = |reason: String| Error::Image { path: path.to_path_buf(), reason };
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut dec = jpeg_decoder::Decoder::new(std::io::BufReader::new(file));
        dec.read_info().map_err(|e| err(format!("not a readable JPEG ({e})")))?;
        let info = dec.info().ok_or_else(|| err("no JPEG header".into()))?;
        let (width, height) = (info.width as usize, info.height as usize);
        if width == 0 || height == 0 || width > MAX_SIDE as usize || height > MAX_SIDE as usize {
            return Err(err(format!("size {width}x{height} is outside 1..={MAX_SIDE}")));
        }
        let channels = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => 1,
            jpeg_decoder::PixelFormat::RGB24 => 3,
            other => return Err(err(format!("unsupported JPEG pixel format {other:?}"))),
        };
        let data = dec.decode().map_err(|e| err(format!("truncated or corrupt JPEG ({e})")))?;
        if data.len() != width * height * channels {
            return Err(err("JPEG pixel data does not match the header".into()));
        }
        Ok(Image { width, height, channels, data })
    }

    /// Reads a PNG as 1 or 3 channels of 8 bits.
    pub fn load_png(path: &Path) -> Result<Image> {
        let err = |reason: String| Error::Image { path: path.to_path_buf(), reason };
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut dec = png::Decoder::new(std::io::BufReader::new(file));
        dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = dec.read_info().map_err(|e| err(format!("not a readable PNG ({e})")))?;
        let (w, h) = (reader.info().width, reader.info().height);
        if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
            return Err(err(format!("size {w}x{h} is outside 1..={MAX_SIDE}")));
        }
        let size = reader.output_buffer_size().ok_or_else(|| err("image too large".into()))?;
        let mut buf = vec![0; size];
        let frame = reader.next_frame(&mut buf).map_err(|e| err(format!("truncated or corrupt ({e})")))?;
        buf.truncate(frame.buffer_size());
        let (width, height) = (w as usize, h as usize);
        let (channels, data) = match frame.color_type {
            png::ColorType::Grayscale => (1, buf),
            png::ColorType::Rgb => (3, buf),
            png::ColorType::GrayscaleAlpha => (1, buf.chunks_exact(2).map(|p| p[0]).collect()),
            png::ColorType::Rgba => (3, buf.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect()),
            other => return Err(err(format!("unsupported color type {other:?}"))),
        };
        if data.len() != width * height * channels {
            return Err(err("pixel data does not match the header".into()));
        }
        Ok(Image { width, height, channels, data })
    }
}

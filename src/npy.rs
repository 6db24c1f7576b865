//! NumPy `.npy` files (format version 1.0/2.0): little-endian f32 arrays in C order, which is
//! what `kestrel run` reads and writes and what the fixture tools produce.

use std::path::Path;

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidArgument { reason: format!("{}: {}", path.display(), reason.into()) }
}

/// Parses a .npy file's bytes: (shape, values). Only `<f4`, C order.
pub fn parse(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let (shape, width, data) = parse_raw(bytes, path, &[4])?;
    debug_assert_eq!(width, 4);
    Ok((shape, data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()))
}

/// Parses `<f4` or `<f8` data as f64: float64 references (PyTorch in double) keep their digits.
pub fn parse_f64(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let (shape, width, data) = parse_raw(bytes, path, &[4, 8])?;
    let values = if width == 8 {
        data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
    } else {
        data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64).collect()
    };
    Ok((shape, values))
}

/// Reads a float32 or float64 .npy file as f64.
pub fn read_f64(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_f64(&bytes, path)
}

/// (shape, bytes per element, data) of a little-endian float array of one of `widths` (4, 8).
fn parse_raw<'a>(bytes: &'a [u8], path: &Path, widths: &[usize]) -> Result<(Vec<usize>, usize, &'a [u8])> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "not a .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize, 12),
        v => return Err(bad(path, format!("unsupported .npy version {v}"))),
    };
    let end =
        start.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or_else(|| bad(path, "truncated header"))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| bad(path, "header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").ok_or_else(|| bad(path, "no descr"))?;
    let width = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else {
        0
    };
    if !widths.contains(&width) {
        let allowed = if widths.contains(&8) { "'<f4' or '<f8'" } else { "little-endian float32 '<f4'" };
        return Err(bad(path, format!("element type {} (only {allowed})", descr.split(',').next().unwrap_or(""))));
    }
    if !field("fortran_order").is_some_and(|f| f.starts_with("False")) {
        return Err(bad(path, "Fortran-order arrays are not supported"));
    }
    let shape_text = field("shape").ok_or_else(|| bad(path, "no shape"))?;
    let close = shape_text.find(')').ok_or_else(|| bad(path, "malformed shape"))?;
    let shape: Vec<usize> = shape_text[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(path, format!("bad dimension '{s}'"))))
        .collect::<Result<_>>()?;
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad(path, "shape overflows"))?;
    let data = &bytes[end..];
    if Some(data.len()) != n.checked_mul(width) {
        return Err(bad(path, format!("{} data bytes for shape {shape:?} ({} needed)", data.len(), n * width)));
    }
    Ok((shape, width, data))
}

/// Reads a .npy file.
pub fn read(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, path)
}

/// The bytes of a .npy (version 1.0) file holding `data` with `shape`.
pub fn encode(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so the data starts on a 64-byte boundary, ending the header with a newline.
    let total = (10 + header.len() + 1).next_multiple_of(64);
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a .npy file.
pub fn write(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    std::fs::write(path, encode(shape, data)).map_err(|e| Error::io(path, e))
}

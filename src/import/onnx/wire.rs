//! Protocol-buffer wire format, read directly (ONNX files are protobuf). Only what ONNX needs:
//! varints, fixed 32/64-bit values and length-delimited fields; groups are rejected.

use crate::error::{Error, Result};

/// The wire type of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

/// A bounds-checked cursor over one message's bytes. `base` is the message's offset in the file,
/// for error messages.
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

pub(crate) fn parse_error(offset: usize, reason: impl Into<String>) -> Error {
    Error::OnnxParse { offset: offset as u64, reason: reason.into() }
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0, base: 0 }
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Offset of the cursor in the whole file.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    pub fn varint(&mut self) -> Result<u64> {
        let start = self.offset();
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(parse_error(start, "truncated varint"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(parse_error(start, "varint longer than 64 bits"));
            }
            value |= ((b & 0x7F) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(parse_error(start, "varint longer than 10 bytes"))
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n).filter(|&end| end <= self.buf.len()) {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(parse_error(
                self.offset(),
                format!("{what} of {n} bytes runs past the end ({} left)", self.buf.len() - self.pos),
            )),
        }
    }

    pub fn fixed32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(4, "fixed32")?.try_into().expect("4 bytes")))
    }

    pub fn fixed64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(8, "fixed64")?.try_into().expect("8 bytes")))
    }

    /// The next field's number and wire type, or None at the end of the message.
    pub fn key(&mut self) -> Result<Option<(u32, Wire)>> {
        if self.at_end() {
            return Ok(None);
        }
        let at = self.offset();
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u32::MAX as u64 >> 3 {
            return Err(parse_error(at, format!("invalid field number {field}")));
        }
        let wire = match key & 7 {
            0 => Wire::Varint,
            1 => Wire::Fixed64,
            2 => Wire::Len,
            5 => Wire::Fixed32,
            w => return Err(parse_error(at, format!("unsupported wire type {w} (groups are not used by ONNX)"))),
        };
        Ok(Some((field as u32, wire)))
    }

    /// A length-delimited field's bytes as a sub-reader.
    pub fn message(&mut self) -> Result<Reader<'a>> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| parse_error(self.offset(), "length overflows"))?;
        let base = self.offset();
        Ok(Reader { buf: self.bytes(len, "length-delimited field")?, pos: 0, base })
    }

    /// A length-delimited field's bytes.
    pub fn len_bytes(&mut self) -> Result<&'a [u8]> {
        Ok(self.message()?.buf)
    }

    pub fn string(&mut self) -> Result<String> {
        let at = self.offset();
        let b = self.len_bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| parse_error(at, "string is not valid UTF-8"))
    }

    /// Skips a field of the given wire type (unknown fields are allowed, as protobuf requires).
    pub fn skip(&mut self, wire: Wire) -> Result<()> {
        match wire {
            Wire::Varint => self.varint().map(drop),
            Wire::Fixed64 => self.bytes(8, "fixed64").map(drop),
            Wire::Fixed32 => self.bytes(4, "fixed32").map(drop),
            Wire::Len => self.len_bytes().map(drop),
        }
    }

    /// Fails unless `wire` is what a known field must have.
    pub fn expect(&self, field: u32, wire: Wire, want: Wire, message: &str) -> Result<()> {
        if wire == want {
            Ok(())
        } else {
            Err(parse_error(
                self.offset(),
                format!("{message} field {field} has wire type {wire:?}, expected {want:?}"),
            ))
        }
    }

    /// A repeated varint field, packed (one Len field) or not (one varint).
    pub fn push_varints(&mut self, wire: Wire, out: &mut Vec<i64>) -> Result<()> {
        match wire {
            Wire::Varint => out.push(self.varint()? as i64),
            Wire::Len => {
                let mut r = self.message()?;
                while !r.at_end() {
                    out.push(r.varint()? as i64);
                }
            }
            _ => return Err(parse_error(self.offset(), format!("repeated integer field with wire type {wire:?}"))),
        }
        Ok(())
    }

    /// A repeated float field, packed or not.
    pub fn push_floats(&mut self, wire: Wire, out: &mut Vec<f32>) -> Result<()> {
        match wire {
            Wire::Fixed32 => out.push(f32::from_bits(self.fixed32()?)),
            Wire::Len => {
                let b = self.len_bytes()?;
                if b.len() % 4 != 0 {
                    return Err(parse_error(self.offset(), "packed floats are not a multiple of 4 bytes"));
                }
                out.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))));
            }
            _ => return Err(parse_error(self.offset(), format!("repeated float field with wire type {wire:?}"))),
        }
        Ok(())
    }

    /// A repeated double field, packed or not.
    pub fn push_doubles(&mut self, wire: Wire, out: &mut Vec<f64>) -> Result<()> {
        match wire {
            Wire::Fixed64 => out.push(f64::from_bits(self.fixed64()?)),
            Wire::Len => {
                let b = self.len_bytes()?;
                if b.len() % 8 != 0 {
                    return Err(parse_error(self.offset(), "packed doubles are not a multiple of 8 bytes"));
                }
                out.extend(b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))));
            }
            _ => return Err(parse_error(self.offset(), format!("repeated double field with wire type {wire:?}"))),
        }
        Ok(())
    }
}

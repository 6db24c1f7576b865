//! Reads and verifies .kpak files, zero-copy: tensor components are slices of the memory map.
//!
//! Every count, offset and length is checked against the file before it is used, and nothing is
//! allocated in proportion to a count that the file's own length does not bound.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::*;
use crate::error::{Error, Result};
use crate::tensor::{ComponentKind, FormatCode, Fp4Scale, LorcView, MatrixView, PackedMatrix, Scheme};

/// How much of a file to verify when opening it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    /// Structure, bounds, alignment, sizes, and every checksum (header, sections, components).
    #[default]
    Full,
    /// Structure, bounds, alignment, sizes, and the header, META and TENSORS checksums; tensor
    /// data is not hashed. For files already verified once (on a board after flashing).
    Structure,
}

/// One entry of the section table.
#[derive(Clone, Copy, Debug)]
pub struct SectionInfo {
    pub kind: SectionKind,
    pub offset: u64,
    pub len: u64,
    pub crc32: u32,
}

/// One component of a tensor: a checksummed, 256-byte-aligned byte range of the DATA section.
#[derive(Clone, Copy, Debug)]
pub struct Component {
    pub kind: ComponentKind,
    pub offset: u64,
    pub len: u64,
    pub crc32: u32,
}

/// One record of the tensor table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub scheme: Scheme,
    pub shape: Vec<u64>,
    pub lorc_rank: usize,
    pub bitswitch_master: bool,
    pub components: Vec<Component>,
}

impl TensorInfo {
    pub fn component(&self, kind: ComponentKind) -> Option<&Component> {
        self.components.iter().find(|c| c.kind == kind)
    }

    /// Bytes of all components.
    pub fn bytes(&self) -> u64 {
        self.components.iter().map(|c| c.len).sum()
    }

    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

enum Storage {
    Mapped(memmap2::Mmap),
    /// u64 words keep the base 8-byte aligned, so component slices cast to u32 and f32.
    Owned {
        words: Vec<u64>,
        len: usize,
    },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned { words, len } => &bytemuck::cast_slice(words)[..*len],
        }
    }
}

/// An opened, verified .kpak file.
pub struct Kpak {
    storage: Storage,
    version: (u16, u16),
    sections: Vec<SectionInfo>,
    metadata: Vec<(String, String)>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_verified: bool,
    graph: Option<crate::graph::Graph>,
}

/// A weight matrix ready for the kernels: borrowed from the mapping, or derived at load (bit
/// switching).
pub enum LoadedMatrix<'a> {
    Borrowed(MatrixView<'a>),
    Owned(PackedMatrix),
}

impl LoadedMatrix<'_> {
    pub fn view(&self) -> MatrixView<'_> {
        match self {
            LoadedMatrix::Borrowed(v) => *v,
            LoadedMatrix::Owned(p) => p.view(),
        }
    }
}

/// Bounds-checked little-endian reads over one section, with offsets for error messages.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    base: u64,
    section: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()) {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::malformed(
                self.section,
                self.base + self.pos as u64,
                format!("{what} needs {n} bytes, {} left in the section", self.bytes.len() - self.pos),
            )),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn str(&mut self, n: usize, what: &str) -> Result<&'a str> {
        let at = self.base + self.pos as u64;
        let b = self.take(n, what)?;
        std::str::from_utf8(b).map_err(|_| Error::malformed(self.section, at, format!("{what} is not valid UTF-8")))
    }
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }
}

/// The header checksum: CRC-32 of the header and section table without the checksum field
/// itself (bytes 12..16), so magic and version are covered too.
pub fn header_crc(header_and_table: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header_and_table[..12]);
    h.update(&header_and_table[16..]);
    h.finalize()
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Kpak {
    /// Memory-maps and verifies `path`.
    pub fn open(path: impl AsRef<Path>, verify: Verify) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < HEADER_LEN as u64 {
            // Too short to map usefully (and empty maps fail on some systems): read and report.
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            return Self::from_bytes(&bytes, verify);
        }
        // SAFETY: the map is read-only. A file truncated or rewritten by another process while
        // mapped is outside what any mmap-based loader can defend against (SIGBUS); .kpak
        // writers replace files by rename, which leaves existing maps intact.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(Storage::Mapped(map), verify)
    }

    /// Verifies a file held in memory (copied once into an aligned buffer).
    pub fn from_bytes(bytes: &[u8], verify: Verify) -> Result<Self> {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self::parse(Storage::Owned { words, len: bytes.len() }, verify)
    }

    fn parse(storage: Storage, verify: Verify) -> Result<Self> {
        let b = storage.bytes();
        let file_len = b.len() as u64;
        let magic_len = b.len().min(MAGIC.len());
        if b[..magic_len] != MAGIC[..magic_len] {
            return Err(Error::BadMagic { found: b[..magic_len].to_vec() });
        }
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated { what: "header".into(), needed: HEADER_LEN as u64, file_len });
        }
        let (major, minor) = (le_u16(b, 8), le_u16(b, 10));
        if major != VERSION_MAJOR {
            return Err(Error::UnsupportedVersion { major, minor, supported: VERSION_MAJOR });
        }
        let section_count = le_u32(b, 24);
        if section_count == 0 {
            return Err(Error::malformed("header", 24, "section count is 0 (META, TENSORS and DATA are required)"));
        }
        if section_count > MAX_SECTIONS {
            return Err(Error::LimitExceeded {
                what: "section count",
                value: section_count as u64,
                limit: MAX_SECTIONS as u64,
            });
        }
        let table_end = (HEADER_LEN + SECTION_ENTRY_LEN * section_count as usize) as u64;
        if table_end > file_len {
            return Err(Error::Truncated { what: "section table".into(), needed: table_end, file_len });
        }
        let stored = le_u32(b, 12);
        let computed = header_crc(&b[..table_end as usize]);
        if stored != computed {
            return Err(Error::HeaderChecksum { stored, computed });
        }
        let declared = le_u64(b, 16);
        if declared > file_len {
            return Err(Error::Truncated { what: "file".into(), needed: declared, file_len });
        }
        if declared != file_len {
            return Err(Error::FileLengthMismatch { declared, actual: file_len });
        }
        if let Some(i) = b[28..HEADER_LEN].iter().position(|&x| x != 0) {
            return Err(Error::malformed("header", 28 + i as u64, "reserved header bytes must be zero"));
        }

        let sections = Self::parse_sections(b, section_count as usize, table_end)?;
        let section = |kind: SectionKind| {
            sections.iter().find(|s| s.kind == kind).copied().ok_or(Error::MissingSection { section: kind.name() })
        };
        let (meta_s, tensors_s, data_s) =
            (section(SectionKind::Meta)?, section(SectionKind::Tensors)?, section(SectionKind::Data)?);
        Self::check_padding(b, &sections, table_end)?;
        for s in &sections {
            if s.kind == SectionKind::Data && verify == Verify::Structure {
                continue;
            }
            let computed = crc32(&b[s.offset as usize..(s.offset + s.len) as usize]);
            if computed != s.crc32 {
                return Err(Error::SectionChecksum { section: s.kind.name(), stored: s.crc32, computed });
            }
        }

        let metadata = Self::parse_metadata(b, meta_s)?;
        let tensors = Self::parse_tensors(b, tensors_s, data_s)?;
        let graph = match sections.iter().find(|s| s.kind == SectionKind::Graph) {
            Some(s) => Some(crate::graph::codec::decode(&b[s.offset as usize..(s.offset + s.len) as usize], s.offset)?),
            None => None,
        };
        let mut by_name = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(Error::DuplicateTensor { name: t.name.clone() });
            }
        }
        if let Some(g) = &graph {
            Self::check_graph_constants(g, &tensors, &by_name)?;
        }
        let mut pak = Kpak {
            version: (major, minor),
            sections,
            metadata,
            tensors,
            by_name,
            data_verified: false,
            graph,
            storage,
        };
        if verify == Verify::Full {
            for t in &pak.tensors {
                pak.verify_tensor(t)?;
                pak.validate_values(t)?;
            }
            pak.data_verified = true;
        }
        pak.validate_graph()?;
        Ok(pak)
    }

    /// Every f32 constant of the graph has a tensor of the same name with the same element count.
    fn check_graph_constants(
        g: &crate::graph::Graph,
        tensors: &[TensorInfo],
        by_name: &HashMap<String, usize>,
    ) -> Result<()> {
        for (&id, c) in &g.constants {
            if !matches!(c, crate::graph::ConstData::F32(_)) {
                continue;
            }
            let v = &g.values[id];
            let bad = |reason: String| Err(Error::malformed("GRAPH", 0, format!("constant '{}': {reason}", v.name)));
            match by_name.get(&v.name).map(|&i| &tensors[i]) {
                None => return bad("no tensor of that name".into()),
                Some(t) if t.numel() != v.numel() as u64 => {
                    return bad(format!("tensor has {} elements, the value {}", t.numel(), v.numel()))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Bytes outside the header, the table and the sections carry no checksum: they must be
    /// zero, so that no byte of a valid file can change unnoticed.
    fn check_padding(b: &[u8], sections: &[SectionInfo], table_end: u64) -> Result<()> {
        let file_len = b.len() as u64;
        let mut spans: Vec<(u64, u64)> = sections.iter().map(|s| (s.offset, s.offset + s.len)).collect();
        spans.sort_unstable();
        let mut at = table_end;
        for (start, end) in spans.into_iter().chain([(file_len, file_len)]) {
            if let Some(i) = b[at as usize..start as usize].iter().position(|&x| x != 0) {
                return Err(Error::malformed("padding", at + i as u64, "bytes between sections must be zero"));
            }
            at = end;
        }
        Ok(())
    }

    fn parse_sections(b: &[u8], count: usize, table_end: u64) -> Result<Vec<SectionInfo>> {
        let file_len = b.len() as u64;
        let mut sections: Vec<SectionInfo> = Vec::with_capacity(count);
        for i in 0..count {
            let e = HEADER_LEN + i * SECTION_ENTRY_LEN;
            let raw_kind = le_u32(b, e);
            let kind = SectionKind::from_u32(raw_kind).ok_or(Error::UnknownSection { kind: raw_kind })?;
            let (crc32, offset, len) = (le_u32(b, e + 4), le_u64(b, e + 8), le_u64(b, e + 16));
            if le_u64(b, e + 24) != 0 {
                return Err(Error::malformed("section table", (e + 24) as u64, "reserved field must be zero"));
            }
            if sections.iter().any(|s| s.kind == kind) {
                return Err(Error::DuplicateSection { section: kind.name() });
            }
            let end = offset.checked_add(len);
            match end {
                Some(end) if offset >= table_end && end <= file_len => {}
                _ => {
                    return Err(Error::SectionOutOfBounds {
                        section: kind.name(),
                        offset,
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    })
                }
            }
            let align = if kind == SectionKind::Data { DATA_ALIGN } else { SECTION_ALIGN };
            if offset % align != 0 {
                return Err(Error::SectionMisaligned { section: kind.name(), offset, align });
            }
            for s in &sections {
                if offset < s.offset + s.len && s.offset < offset + len {
                    return Err(Error::SectionOverlap { a: s.kind.name(), b: kind.name() });
                }
            }
            sections.push(SectionInfo { kind, offset, len, crc32 });
        }
        Ok(sections)
    }

    fn parse_metadata(b: &[u8], s: SectionInfo) -> Result<Vec<(String, String)>> {
        let mut c = Cursor {
            bytes: &b[s.offset as usize..(s.offset + s.len) as usize],
            pos: 0,
            base: s.offset,
            section: "META",
        };
        let count = c.u32("entry count")?;
        // Each entry takes at least 8 bytes, so the section length bounds the allocation.
        if count > MAX_META_ENTRIES || count as u64 * 8 > s.len {
            return Err(Error::LimitExceeded {
                what: "metadata entry count",
                value: count as u64,
                limit: (MAX_META_ENTRIES as u64).min(s.len / 8),
            });
        }
        let mut out: Vec<(String, String)> = Vec::with_capacity(count as usize);
        let mut seen = HashSet::with_capacity(count as usize);
        for _ in 0..count {
            let (klen, vlen) = (c.u32("key length")? as usize, c.u32("value length")? as usize);
            if klen == 0 || klen > MAX_NAME_LEN {
                return Err(Error::malformed(
                    "META",
                    c.offset(),
                    format!("key length {klen} outside 1..={MAX_NAME_LEN}"),
                ));
            }
            if vlen > MAX_META_VALUE_LEN {
                return Err(Error::LimitExceeded {
                    what: "metadata value length",
                    value: vlen as u64,
                    limit: MAX_META_VALUE_LEN as u64,
                });
            }
            let key = c.str(klen, "metadata key")?;
            let value = c.str(vlen, "metadata value")?;
            if !seen.insert(key) {
                return Err(Error::DuplicateMetadata { key: key.to_string() });
            }
            out.push((key.to_string(), value.to_string()));
        }
        if c.pos != c.bytes.len() {
            return Err(Error::malformed("META", c.offset(), "trailing bytes after the last entry"));
        }
        Ok(out)
    }

    fn parse_tensors(b: &[u8], s: SectionInfo, data: SectionInfo) -> Result<Vec<TensorInfo>> {
        const MIN_RECORD: u64 = 2 + 12;
        let mut c = Cursor {
            bytes: &b[s.offset as usize..(s.offset + s.len) as usize],
            pos: 0,
            base: s.offset,
            section: "TENSORS",
        };
        let count = c.u32("tensor count")?;
        if c.u32("reserved")? != 0 {
            return Err(Error::malformed("TENSORS", s.offset + 4, "reserved field must be zero"));
        }
        if count > MAX_TENSORS || count as u64 * MIN_RECORD > s.len {
            return Err(Error::LimitExceeded {
                what: "tensor count",
                value: count as u64,
                limit: (MAX_TENSORS as u64).min(s.len / MIN_RECORD),
            });
        }
        let mut tensors = Vec::with_capacity(count as usize);
        let mut spans: Vec<(u64, u64, usize)> = Vec::new();
        for _ in 0..count {
            let t = Self::parse_record(&mut c, data)?;
            for comp in &t.components {
                spans.push((comp.offset, comp.offset + comp.len, tensors.len()));
            }
            tensors.push(t);
        }
        if c.pos != c.bytes.len() {
            return Err(Error::malformed("TENSORS", c.offset(), "trailing bytes after the last record"));
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(Error::TensorOverlap { a: tensors[w[0].2].name.clone(), b: tensors[w[1].2].name.clone() });
            }
        }
        Ok(tensors)
    }

    fn parse_record(c: &mut Cursor, data: SectionInfo) -> Result<TensorInfo> {
        let name_len = c.u16("name length")? as usize;
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(Error::malformed(
                "TENSORS",
                c.offset(),
                format!("tensor name length {name_len} outside 1..={MAX_NAME_LEN}"),
            ));
        }
        let name = c.str(name_len, "tensor name")?.to_string();
        let code = c.u8("format")?;
        let rank = c.u8("rank")? as usize;
        let flags = c.u8("flags")?;
        let ncomp = c.u8("component count")? as usize;
        let group = c.u32("group size")?;
        let lorc_rank = c.u32("LoRC rank")? as usize;
        let bad = |reason: String| Err(Error::invalid_tensor(&name, reason));

        let format = FormatCode::from_u8(code).ok_or_else(|| Error::UnknownFormat { tensor: name.clone(), code })?;
        if flags & !KNOWN_FLAGS != 0 {
            return bad(format!("unknown flag bits {:#04x}", flags & !KNOWN_FLAGS));
        }
        if rank > MAX_RANK {
            return Err(Error::LimitExceeded { what: "tensor rank", value: rank as u64, limit: MAX_RANK as u64 });
        }
        if ncomp == 0 || ncomp > MAX_COMPONENTS {
            return bad(format!("component count {ncomp} outside 1..={MAX_COMPONENTS}"));
        }
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            let d = c.u64("dimension")?;
            if d == 0 || d > MAX_DIM {
                return bad(format!("dimension {d} outside 1..={MAX_DIM}"));
            }
            shape.push(d);
        }
        let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS);
        let Some(numel) = numel else { return bad(format!("shape {shape:?} has too many elements")) };

        let scheme = match format {
            FormatCode::F32 => Scheme::F32,
            FormatCode::F16 => Scheme::F16,
            FormatCode::Q8 => Scheme::Q8,
            FormatCode::Q4 => Scheme::Q4 { group, symmetric: flags & FLAG_SYMMETRIC != 0 },
            FormatCode::Fp4 => Scheme::Fp4 {
                group,
                scale: if flags & FLAG_FP4_SCALE_F16 != 0 { Fp4Scale::F16 } else { Fp4Scale::E8M0 },
            },
        };
        if scheme.group().is_none() && group != 0 {
            return bad(format!("format {} has no groups, but group size is {group}", format.name()));
        }
        if let Err(e) = scheme.validate() {
            return bad(e.to_string());
        }
        let flag_ok = match scheme {
            Scheme::Q4 { .. } => flags & !FLAG_SYMMETRIC == 0,
            Scheme::Fp4 { .. } => flags & !FLAG_FP4_SCALE_F16 == 0,
            Scheme::Q8 => flags & !FLAG_BITSWITCH_MASTER == 0,
            _ => flags == 0,
        };
        if !flag_ok {
            return bad(format!("flags {flags:#04x} do not apply to format {}", format.name()));
        }
        if (scheme.is_quantized() || lorc_rank > 0) && rank != 2 {
            return bad(format!("{} tensors must be matrices [n, k], not rank {rank}", scheme.label()));
        }
        if lorc_rank > crate::quant::MAX_LORC_RANK {
            return Err(Error::LimitExceeded {
                what: "LoRC rank",
                value: lorc_rank as u64,
                limit: crate::quant::MAX_LORC_RANK as u64,
            });
        }

        // Layout: rows of the last dimension.
        let k = shape.last().copied().unwrap_or(1) as usize;
        let rows = (numel / k as u64) as usize;
        let mut expected: Vec<(ComponentKind, u64)> = Vec::with_capacity(4);
        expected.push((scheme.components()[0], (rows * scheme.row_words(k) * 4) as u64));
        if let Some(&aux) = scheme.components().get(1) {
            expected.push((aux, (rows * scheme.aux_row_words(k) * 4) as u64));
        }
        if lorc_rank > 0 {
            expected.push((ComponentKind::LorcU, (rows * Scheme::F16.row_words(lorc_rank) * 4) as u64));
            expected.push((ComponentKind::LorcV, (lorc_rank * Scheme::F16.row_words(k) * 4) as u64));
        }

        let mut components = Vec::with_capacity(ncomp);
        for _ in 0..ncomp {
            let at = c.offset();
            let raw = c.u8("component kind")?;
            let reserved = c.take(3, "component reserved bytes")?;
            let crc32 = c.u32("component checksum")?;
            let offset = c.u64("component offset")?;
            let len = c.u64("component length")?;
            let kind = ComponentKind::from_u8(raw).ok_or_else(|| {
                Error::malformed("TENSORS", at, format!("tensor '{name}': unknown component kind {raw}"))
            })?;
            if reserved != [0, 0, 0] {
                return Err(Error::malformed(
                    "TENSORS",
                    at + 1,
                    format!("tensor '{name}': reserved bytes must be zero"),
                ));
            }
            if components.iter().any(|x: &Component| x.kind == kind) {
                return bad(format!("component {} appears twice", kind.name()));
            }
            let Some(&(_, want)) = expected.iter().find(|(k, _)| *k == kind) else {
                return bad(format!("component {} does not belong to format {}", kind.name(), scheme.label()));
            };
            let end = offset.saturating_add(len);
            if offset < data.offset || end > data.offset + data.len {
                return Err(Error::TensorOutOfBounds {
                    tensor: name.clone(),
                    component: kind.name(),
                    offset,
                    end,
                    data_start: data.offset,
                    data_end: data.offset + data.len,
                });
            }
            if offset % DATA_ALIGN != 0 {
                return Err(Error::TensorMisaligned {
                    tensor: name.clone(),
                    component: kind.name(),
                    offset,
                    align: DATA_ALIGN,
                });
            }
            if len != want {
                return Err(Error::ComponentSize {
                    tensor: name.clone(),
                    component: kind.name(),
                    expected: want,
                    actual: len,
                });
            }
            components.push(Component { kind, offset, len, crc32 });
        }
        if let Some((missing, _)) = expected.iter().find(|(k, _)| components.iter().all(|x| x.kind != *k)) {
            return bad(format!("component {} is missing", missing.name()));
        }
        Ok(TensorInfo {
            name,
            scheme,
            shape,
            lorc_rank,
            bitswitch_master: flags & FLAG_BITSWITCH_MASTER != 0,
            components,
        })
    }

    /// Hashes every component of `t` and compares with the stored checksums.
    pub fn verify_tensor(&self, t: &TensorInfo) -> Result<()> {
        for c in &t.components {
            let computed = crc32(self.component_bytes(c));
            if computed != c.crc32 {
                return Err(Error::TensorChecksum {
                    tensor: t.name.clone(),
                    component: c.kind.name(),
                    stored: c.crc32,
                    computed,
                });
            }
        }
        Ok(())
    }

    /// Checks the values a kernel would read: weights, scales and LoRC factors are finite, E8M0
    /// scales are not the NaN code, and f16 row padding is zero (padding meets zero activations,
    /// and NaN * 0 is NaN). Runs in [`Verify::Full`].
    pub fn validate_values(&self, t: &TensorInfo) -> Result<()> {
        let bad = |what: &str, at: usize| Err(Error::invalid_tensor(&t.name, format!("{what} at word {at}")));
        let finite_f32 = |words: &[u32], what: &str| match words.iter().position(|&w| !f32::from_bits(w).is_finite()) {
            Some(i) => bad(&format!("non-finite {what}"), i),
            None => Ok(()),
        };
        // f16 rows of `k` values: every value finite, the padding half (odd k) zero.
        let f16_rows = |words: &[u32], k: usize, what: &str| {
            let row_words = Scheme::F16.row_words(k);
            for (r, row) in words.chunks_exact(row_words.max(1)).enumerate() {
                for (i, &w) in row.iter().enumerate() {
                    let (lo, hi) = (w as u16, (w >> 16) as u16);
                    let hi_is_padding = 2 * i + 1 >= k;
                    if !half::f16::from_bits(lo).is_finite()
                        || (!hi_is_padding && !half::f16::from_bits(hi).is_finite())
                    {
                        return bad(&format!("non-finite {what}"), r * row_words + i);
                    }
                    if hi_is_padding && hi != 0 {
                        return bad(&format!("non-zero {what} row padding"), r * row_words + i);
                    }
                }
            }
            Ok(())
        };
        let k = t.shape.last().copied().unwrap_or(1) as usize;
        match t.scheme {
            Scheme::F32 => finite_f32(self.words(t, ComponentKind::Data), "value")?,
            Scheme::F16 => f16_rows(self.words(t, ComponentKind::Data), k, "value")?,
            Scheme::Q8 => finite_f32(self.words(t, ComponentKind::Scales), "scale")?,
            Scheme::Q4 { .. } => {
                let params = self.words(t, ComponentKind::Params);
                if let Some(i) = params.iter().position(|&p| {
                    !half::f16::from_bits(p as u16).is_finite() || !half::f16::from_bits((p >> 16) as u16).is_finite()
                }) {
                    return bad("non-finite group parameter", i);
                }
            }
            Scheme::Fp4 { scale: Fp4Scale::E8M0, .. } => {
                let groups = t.scheme.groups(k);
                let row_words = t.scheme.aux_row_words(k);
                for (r, row) in self.words(t, ComponentKind::Scales).chunks_exact(row_words).enumerate() {
                    if let Some(g) = (0..groups).find(|&g| (row[g / 4] >> (8 * (g % 4))) & 0xFF == 0xFF) {
                        return bad("E8M0 scale 0xFF (NaN)", r * row_words + g / 4);
                    }
                }
            }
            Scheme::Fp4 { scale: Fp4Scale::F16, .. } => {
                f16_rows(self.words(t, ComponentKind::Scales), t.scheme.groups(k), "scale")?
            }
        }
        if t.lorc_rank > 0 {
            f16_rows(self.words(t, ComponentKind::LorcU), t.lorc_rank, "LoRC U value")?;
            f16_rows(self.words(t, ComponentKind::LorcV), k, "LoRC V value")?;
        }
        Ok(())
    }

    /// Fills the graph's small f32 constants (the ones shape rules read, such as resize scales)
    /// from the tensor table, then checks every node's shapes. Large weights stay in the table.
    fn validate_graph(&mut self) -> Result<()> {
        const SMALL: usize = 64;
        let Some(mut g) = self.graph.take() else { return Ok(()) };
        let small: Vec<usize> = g
            .constants
            .iter()
            .filter(|(&id, c)| {
                matches!(c, crate::graph::ConstData::F32(d) if d.is_empty()) && g.values[id].numel() <= SMALL
            })
            .map(|(&id, _)| id)
            .collect();
        for id in small {
            let name = g.values[id].name.clone();
            let t = self.tensor(&name)?;
            let data = if t.scheme.is_quantized() {
                crate::quant::dequantize(&self.matrix(&name)?).into_iter().map(|v| v as f32).collect()
            } else {
                self.tensor_f32(&name)?
            };
            g.constants.insert(id, crate::graph::ConstData::F32(data));
        }
        let checked = crate::graph::infer::validate(&g)
            .map_err(|e| Error::malformed("GRAPH", 0, format!("the graph does not check: {e}")));
        self.graph = Some(g);
        checked
    }

    /// The model's graph, if the file has one. Its f32 constants are named tensors of this file
    /// (their data in the graph is empty); integer constants are inline.
    pub fn graph(&self) -> Option<&crate::graph::Graph> {
        self.graph.as_ref()
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    pub fn version(&self) -> (u16, u16) {
        self.version
    }

    pub fn sections(&self) -> &[SectionInfo] {
        &self.sections
    }

    /// True when every tensor checksum was verified at open.
    pub fn data_verified(&self) -> bool {
        self.data_verified
    }

    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::TensorNotFound { name: name.to_string() })
    }

    /// A component's bytes, straight from the mapping.
    pub fn component_bytes(&self, c: &Component) -> &[u8] {
        &self.bytes()[c.offset as usize..(c.offset + c.len) as usize]
    }

    fn words(&self, t: &TensorInfo, kind: ComponentKind) -> &[u32] {
        // Offsets are 256-aligned and the base is at least 8-aligned; lengths are whole words.
        t.component(kind).map_or(&[], |c| bytemuck::cast_slice(self.component_bytes(c)))
    }

    /// A rank-2 tensor as a zero-copy weight matrix.
    pub fn matrix(&self, name: &str) -> Result<MatrixView<'_>> {
        let t = self.tensor(name)?;
        if t.shape.len() != 2 {
            return Err(Error::invalid_tensor(name, format!("expected a matrix [n, k], found shape {:?}", t.shape)));
        }
        let comps = t.scheme.components();
        let lorc = (t.lorc_rank > 0).then(|| LorcView {
            rank: t.lorc_rank,
            u: self.words(t, ComponentKind::LorcU),
            v: self.words(t, ComponentKind::LorcV),
        });
        let aux = comps.get(1).map_or(&[][..], |&k| self.words(t, k));
        MatrixView::new(t.shape[0] as usize, t.shape[1] as usize, t.scheme, self.words(t, comps[0]), aux, lorc)
    }

    /// A matrix at the precision a board asks for: `bits` switches int8 masters (8, 4 or 2);
    /// other tensors are returned as stored.
    pub fn matrix_at_bits(&self, name: &str, bits: Option<u32>) -> Result<LoadedMatrix<'_>> {
        let view = self.matrix(name)?;
        match bits {
            Some(b) if b != 8 && self.tensor(name)?.bitswitch_master => {
                Ok(LoadedMatrix::Owned(crate::quant::switch_bits(&view, b)?))
            }
            _ => Ok(LoadedMatrix::Borrowed(view)),
        }
    }

    /// An f32 or f16 tensor's values as f32.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        let k = t.shape.last().copied().unwrap_or(1) as usize;
        let words = self.words(t, ComponentKind::Data);
        match t.scheme {
            Scheme::F32 => Ok(bytemuck::cast_slice::<u32, f32>(words).to_vec()),
            Scheme::F16 => {
                let row_words = Scheme::F16.row_words(k);
                Ok(words
                    .chunks_exact(row_words)
                    .flat_map(|row| (0..k).map(|i| crate::tensor::f16_at(row, i)))
                    .collect())
            }
            s => Err(Error::invalid_tensor(name, format!("is {}, not f32/f16; use matrix()", s.label()))),
        }
    }
}

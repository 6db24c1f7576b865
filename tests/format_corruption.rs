//! Damaged .kpak files, one damage at a time: each test starts from a valid file, breaks it in one
//! specific way and checks that `Kpak::from_bytes(.., Verify::Full)` names exactly that problem.
//!
//! Most structural checks sit behind a checksum, so the tests that reach them re-compute the
//! section and header checksums after the mutation (`fix_crcs`), as a careless or malicious writer
//! would. The file layout is found by a small independent parser written from docs/FORMAT.md
//! (`FileLayout`), which doubles as a check of the specification.

use std::ops::Range;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use half::f16;
use kestrel::format::{self, Kpak, KpakWriter, LoadedMatrix, SectionKind, Verify};
use kestrel::quant::{add_lorc, dequantize, quantize, round_half_even_shift};
use kestrel::rng::SplitMix64;
use kestrel::tensor::{ComponentKind, Fp4Scale, PackedMatrix, Scheme};
use kestrel::Error;

// ---------------------------------------------------------------------------------------------
// Allocation accounting: proves that hostile counts fail before anything is allocated for them.
// ---------------------------------------------------------------------------------------------

mod common;
use common::measure_allocs;

#[global_allocator]
static ALLOC: common::CountingAlloc = common::CountingAlloc;

// ---------------------------------------------------------------------------------------------
// The fixture: a small valid file with every kind of tensor.
// ---------------------------------------------------------------------------------------------

/// Tensor names all have four bytes, metadata keys "model" and "board" five, so one name can be
/// overwritten with another in place.
const BIAS: &str = "bias";
const Q4_LORC: &str = "wq4l";
const FP4_E8M0: &str = "wfp4";
const FP4_F16: &str = "wfph";
const Q8_MASTER: &str = "wq8m";
const NORM_F16: &str = "nf16";

const Q4_LORC_RANK: usize = 4;

struct Fixture {
    writer: KpakWriter,
    bytes: Vec<u8>,
    bias: Vec<f32>,
    norm: Vec<f32>,
    norm_shape: [usize; 2],
    matrices: Vec<(&'static str, PackedMatrix)>,
    metadata: Vec<(&'static str, &'static str)>,
}

impl Fixture {
    fn matrix(&self, name: &str) -> &PackedMatrix {
        &self.matrices.iter().find(|(n, _)| *n == name).unwrap().1
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = SplitMix64::new(0x6b70_616b_0001);
        let metadata = vec![("model", "corruption-fixture"), ("board", "none"), ("classes", "person,car,λ")];
        let bias = rng.normal_vec(16);
        let norm_shape = [3, 5];
        let norm = rng.normal_vec(15);

        // q4, asymmetric, group 64, K = 200 (padded to 256), with rank-4 LoRC factors.
        let (n, k) = (16, 200);
        let w = rng.normal_vec(n * k);
        let mut q4 = quantize(&w, n, k, Scheme::Q4 { group: 64, symmetric: false }).unwrap();
        add_lorc(&mut q4, &w, Q4_LORC_RANK).unwrap();
        // MXFP4: group 32, E8M0 scales; K = 80 is not a whole number of groups.
        let fp4 = quantize(&rng.normal_vec(8 * 80), 8, 80, Scheme::Fp4 { group: 32, scale: Fp4Scale::E8M0 }).unwrap();
        // fp4 with f16 scales, group 64, K = 100.
        let fph = quantize(&rng.normal_vec(4 * 100), 4, 100, Scheme::Fp4 { group: 64, scale: Fp4Scale::F16 }).unwrap();
        // An int8 master for bit switching; K = 130 is not a multiple of 4.
        let mut q8 = quantize(&rng.normal_vec(12 * 130), 12, 130, Scheme::Q8).unwrap();
        q8.bitswitch_master = true;

        let mut writer = KpakWriter::new();
        for (k, v) in &metadata {
            writer.metadata(k, v).unwrap();
        }
        writer.add_f32(BIAS, &[16], &bias).unwrap();
        writer.add_matrix(Q4_LORC, &q4).unwrap();
        writer.add_matrix(FP4_E8M0, &fp4).unwrap();
        writer.add_matrix(FP4_F16, &fph).unwrap();
        writer.add_matrix(Q8_MASTER, &q8).unwrap();
        writer.add_f16(NORM_F16, &norm_shape, &norm).unwrap();
        let bytes = writer.to_bytes();
        let matrices = vec![(Q4_LORC, q4), (FP4_E8M0, fp4), (FP4_F16, fph), (Q8_MASTER, q8)];
        Fixture { writer, bytes, bias, norm, norm_shape, matrices, metadata }
    })
}

// ---------------------------------------------------------------------------------------------
// Byte helpers and an independent layout parser (docs/FORMAT.md).
// ---------------------------------------------------------------------------------------------

fn rd_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn wr_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn wr_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn wr_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// CRC-32/ISO-HDLC written out bit by bit (reflected polynomial 0xEDB88320, init and final xor
/// 0xFFFFFFFF), independent of the crate's implementation.
fn crc32_bitwise(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[derive(Clone, Debug)]
struct SectionEntry {
    /// Position of the entry in the section table.
    at: usize,
    kind: u32,
    crc: u32,
    offset: u64,
    len: u64,
}

impl SectionEntry {
    fn range(&self) -> Range<usize> {
        self.offset as usize..(self.offset + self.len) as usize
    }
}

#[derive(Clone, Debug)]
struct MetaEntry {
    /// Position of the key-length field.
    at: usize,
    key: Range<usize>,
    value: Range<usize>,
}

#[derive(Clone, Debug)]
struct ComponentEntry {
    /// Position of the 24-byte component entry.
    at: usize,
    kind: u8,
    crc: u32,
    offset: u64,
    len: u64,
}

impl ComponentEntry {
    fn range(&self) -> Range<usize> {
        self.offset as usize..(self.offset + self.len) as usize
    }
}

/// Field positions of one tensor record.
#[derive(Clone, Debug)]
struct Record {
    name_len_at: usize,
    name: String,
    name_at: usize,
    /// format, then rank, flags, component count (one byte each), group (u32), LoRC rank (u32).
    format_at: usize,
    dims_at: usize,
    shape: Vec<u64>,
    comps: Vec<ComponentEntry>,
}

impl Record {
    fn rank_at(&self) -> usize {
        self.format_at + 1
    }
    fn flags_at(&self) -> usize {
        self.format_at + 2
    }
    fn ncomp_at(&self) -> usize {
        self.format_at + 3
    }
    fn group_at(&self) -> usize {
        self.format_at + 4
    }
    fn lorc_at(&self) -> usize {
        self.format_at + 8
    }
    fn comp(&self, kind: ComponentKind) -> &ComponentEntry {
        self.comps.iter().find(|c| c.kind == kind as u8).unwrap()
    }
}

#[derive(Clone, Debug)]
struct FileLayout {
    sections: Vec<SectionEntry>,
    meta: Vec<MetaEntry>,
    records: Vec<Record>,
}

impl FileLayout {
    /// Parses a valid file (panics on anything else: it is a test fixture reader).
    fn parse(b: &[u8]) -> Self {
        assert_eq!(b[..8], format::MAGIC);
        let count = rd_u32(b, 24) as usize;
        let sections: Vec<SectionEntry> = (0..count)
            .map(|i| {
                let at = 64 + 32 * i;
                SectionEntry {
                    at,
                    kind: rd_u32(b, at),
                    crc: rd_u32(b, at + 4),
                    offset: rd_u64(b, at + 8),
                    len: rd_u64(b, at + 16),
                }
            })
            .collect();
        let find = |kind: u32| sections.iter().find(|s| s.kind == kind).unwrap().clone();

        let meta_s = find(1);
        let mut pos = meta_s.offset as usize;
        let n = rd_u32(b, pos) as usize;
        pos += 4;
        let mut meta = Vec::new();
        for _ in 0..n {
            let (klen, vlen) = (rd_u32(b, pos) as usize, rd_u32(b, pos + 4) as usize);
            let key = pos + 8..pos + 8 + klen;
            let value = key.end..key.end + vlen;
            meta.push(MetaEntry { at: pos, key, value: value.clone() });
            pos = value.end;
        }
        assert_eq!(pos, meta_s.range().end);

        let tensors_s = find(2);
        let mut pos = tensors_s.offset as usize;
        let n = rd_u32(b, pos) as usize;
        pos += 8;
        let mut records = Vec::new();
        for _ in 0..n {
            let name_len_at = pos;
            let name_len = rd_u16(b, pos) as usize;
            let name_at = pos + 2;
            let name = String::from_utf8(b[name_at..name_at + name_len].to_vec()).unwrap();
            let format_at = name_at + name_len;
            let rank = b[format_at + 1] as usize;
            let ncomp = b[format_at + 3] as usize;
            let dims_at = format_at + 12;
            let shape = (0..rank).map(|i| rd_u64(b, dims_at + 8 * i)).collect();
            let mut comps = Vec::new();
            pos = dims_at + 8 * rank;
            for _ in 0..ncomp {
                comps.push(ComponentEntry {
                    at: pos,
                    kind: b[pos],
                    crc: rd_u32(b, pos + 4),
                    offset: rd_u64(b, pos + 8),
                    len: rd_u64(b, pos + 16),
                });
                pos += 24;
            }
            records.push(Record { name_len_at, name, name_at, format_at, dims_at, shape, comps });
        }
        assert_eq!(pos, tensors_s.range().end);
        FileLayout { sections, meta, records }
    }

    fn section(&self, kind: u32) -> &SectionEntry {
        self.sections.iter().find(|s| s.kind == kind).unwrap()
    }
    fn meta_s(&self) -> &SectionEntry {
        self.section(1)
    }
    fn tensors_s(&self) -> &SectionEntry {
        self.section(2)
    }
    fn data_s(&self) -> &SectionEntry {
        self.section(3)
    }
    fn record(&self, name: &str) -> &Record {
        self.records.iter().find(|r| r.name == name).unwrap()
    }
}

fn layout() -> &'static FileLayout {
    static LAYOUT: OnceLock<FileLayout> = OnceLock::new();
    LAYOUT.get_or_init(|| FileLayout::parse(&fixture().bytes))
}

/// Recomputes every section checksum, then the header checksum, from the (possibly damaged)
/// bytes, so that a mutation passes the checksums and reaches the structural check behind them.
/// Entries that point outside the file are left alone.
fn fix_crcs(b: &mut [u8]) {
    if b.len() < format::HEADER_LEN {
        return;
    }
    let count = (rd_u32(b, 24) as usize).min(format::MAX_SECTIONS as usize);
    let table_end = format::HEADER_LEN + format::SECTION_ENTRY_LEN * count;
    if table_end > b.len() {
        return;
    }
    for i in 0..count {
        let e = format::HEADER_LEN + format::SECTION_ENTRY_LEN * i;
        let (offset, len) = (rd_u64(b, e + 8), rd_u64(b, e + 16));
        if let Some(end) = offset.checked_add(len).filter(|&end| end <= b.len() as u64) {
            let crc = format::crc32(&b[offset as usize..end as usize]);
            wr_u32(b, e + 4, crc);
        }
    }
    let crc = format::header_crc(&b[..table_end]);
    wr_u32(b, 12, crc);
}

/// The fixture's bytes after `f`, checksums left as they were.
fn damaged(f: impl FnOnce(&mut Vec<u8>, &FileLayout)) -> Vec<u8> {
    let mut b = fixture().bytes.clone();
    f(&mut b, layout());
    b
}

/// The fixture's bytes after `f`, with section and header checksums made consistent again.
fn damaged_fixed(f: impl FnOnce(&mut Vec<u8>, &FileLayout)) -> Vec<u8> {
    let mut b = damaged(f);
    fix_crcs(&mut b);
    b
}

fn open_err(bytes: &[u8]) -> Error {
    match Kpak::from_bytes(bytes, Verify::Full) {
        Ok(_) => panic!("the damaged file opened without error"),
        Err(e) => e,
    }
}

/// Opens `bytes` with full verification and asserts the error matches the pattern.
macro_rules! assert_err {
    ($bytes:expr, $pat:pat $(if $guard:expr)?) => {{
        let e = open_err(&$bytes);
        assert!(matches!(e, $pat $(if $guard)?), "unexpected error: {e:?} ({e})");
        e
    }};
}

fn reason_has(reason: &str, needle: &str) -> bool {
    reason.contains(needle)
}

fn u32_words_as_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Framing: length, magic, version, header.
// ---------------------------------------------------------------------------------------------

#[test]
fn fixture_is_valid_and_checksums_are_consistent() {
    let f = fixture();
    let pak = Kpak::from_bytes(&f.bytes, Verify::Full).unwrap();
    assert!(pak.data_verified());
    // fix_crcs on a valid file changes nothing.
    let mut b = f.bytes.clone();
    fix_crcs(&mut b);
    assert_eq!(b, f.bytes);
}

#[test]
fn empty_file() {
    assert_err!(Vec::<u8>::new(), Error::Truncated { ref what, needed: 64, file_len: 0 } if what == "header");
}

#[test]
fn short_file_with_a_valid_magic() {
    let b = fixture().bytes[..40].to_vec();
    assert_err!(b, Error::Truncated { ref what, needed: 64, file_len: 40 } if what == "header");
    let b = fixture().bytes[..5].to_vec();
    assert_err!(b, Error::Truncated { needed: 64, file_len: 5, .. });
}

#[test]
fn short_file_that_is_not_kpak() {
    assert_err!(*b"hello", Error::BadMagic { ref found } if found == b"hello");
}

#[test]
fn bad_magic() {
    let b = damaged(|b, _| b[1] = b'X');
    assert_err!(b, Error::BadMagic { ref found } if found[..] == b"\x89XPAK\r\n\x1a"[..]);
}

#[test]
fn text_mode_transfer_is_caught_by_the_magic() {
    // A CR LF -> LF conversion drops byte 5.
    let mut b = fixture().bytes.clone();
    b.remove(5);
    assert_err!(b, Error::BadMagic { .. });
}

#[test]
fn unsupported_major_version() {
    for major in [0u16, 2, 0xFFFF] {
        let b = damaged(|b, _| wr_u16(b, 8, major));
        assert_err!(b, Error::UnsupportedVersion { major: m, minor: 0, supported: 1 } if m == major);
    }
}

#[test]
fn newer_minor_version_is_accepted() {
    // A newer minor version (written with its checksum) is read.
    let b = damaged_fixed(|b, _| wr_u16(b, 10, 9));
    let pak = Kpak::from_bytes(&b, Verify::Full).unwrap();
    assert_eq!(pak.version(), (1, 9));
}

#[test]
fn a_flipped_version_bit_is_caught() {
    // The header checksum covers the version: a damaged minor version is a checksum error, and a
    // damaged major version reads as unsupported (it is checked first and names the value).
    let stored = rd_u32(&fixture().bytes, 12);
    let b = damaged(|b, _| b[10] ^= 0x04);
    assert_err!(b, Error::HeaderChecksum { stored: s, .. } if s == stored);
    let b = damaged(|b, _| b[9] ^= 0x01);
    assert_err!(b, Error::UnsupportedVersion { major: 0x0101, .. });
}

#[test]
fn non_zero_padding_between_sections() {
    // The gap before TENSORS (META ends off an 8-byte boundary) and the gap before DATA.
    let l = layout();
    let meta_end = (l.meta_s().offset + l.meta_s().len) as usize;
    let tensors_end = (l.tensors_s().offset + l.tensors_s().len) as usize;
    let data_start = l.data_s().offset as usize;
    assert!(tensors_end < data_start, "the fixture has a gap before DATA");
    for at in [meta_end, tensors_end, data_start - 1] {
        if at >= l.tensors_s().offset as usize && at < tensors_end {
            continue;
        }
        let b = damaged_fixed(|b, _| b[at] = 0x5A);
        assert_err!(b, Error::Malformed { section: "padding", offset, .. } if offset == at as u64);
    }
}

#[test]
fn truncated_section_table() {
    let b = fixture().bytes[..100].to_vec();
    assert_err!(b, Error::Truncated { ref what, needed: 160, file_len: 100 } if what == "section table");
    // A section count whose table runs past the end of a short file.
    let mut b = fixture().bytes[..200].to_vec();
    wr_u32(&mut b, 24, 16);
    assert_err!(b, Error::Truncated { ref what, needed: 576, file_len: 200 } if what == "section table");
}

#[test]
fn truncated_data_section() {
    let full = fixture().bytes.len() as u64;
    for cut in [1u64, 17, 256, full - layout().data_s().offset] {
        let b = fixture().bytes[..(full - cut) as usize].to_vec();
        assert_err!(b, Error::Truncated { ref what, needed, file_len } if what == "file" && needed == full && file_len == full - cut);
    }
}

#[test]
fn trailing_bytes() {
    let full = fixture().bytes.len() as u64;
    let mut b = fixture().bytes.clone();
    b.push(0);
    assert_err!(b, Error::FileLengthMismatch { declared, actual } if declared == full && actual == full + 1);
    // A header that declares less than there is, with its checksum made consistent.
    let b = damaged_fixed(|b, _| wr_u64(b, 16, full - 256));
    assert_err!(b, Error::FileLengthMismatch { declared, actual } if declared == full - 256 && actual == full);
}

#[test]
fn header_checksum_mismatch() {
    let stored = rd_u32(&fixture().bytes, 12);
    // One bit of the section table (META length).
    let b = damaged(|b, l| b[l.meta_s().at + 16] ^= 0x01);
    assert_err!(b, Error::HeaderChecksum { stored: s, computed } if s == stored && computed != stored);
    // The declared file length.
    let b = damaged(|b, _| b[17] ^= 0x80);
    assert_err!(b, Error::HeaderChecksum { stored: s, .. } if s == stored);
    // The stored checksum itself.
    let b = damaged(|b, _| b[15] ^= 0x10);
    assert_err!(b, Error::HeaderChecksum { stored: s, computed } if s == stored ^ 0x1000_0000 && computed == stored);
}

#[test]
fn header_checksum_is_crc32_iso_hdlc_over_header_and_table_without_its_field() {
    assert_eq!(crc32_bitwise(b"123456789"), 0xCBF4_3926);
    assert_eq!(format::crc32(b"123456789"), 0xCBF4_3926);
    let b = &fixture().bytes;
    let table_end = 64 + 32 * rd_u32(b, 24) as usize;
    let covered: Vec<u8> = b[..12].iter().chain(&b[16..table_end]).copied().collect();
    assert_eq!(rd_u32(b, 12), crc32_bitwise(&covered));
    for s in &layout().sections {
        assert_eq!(s.crc, crc32_bitwise(&b[s.range()]), "section kind {}", s.kind);
    }
    for r in &layout().records {
        for c in &r.comps {
            assert_eq!(c.crc, crc32_bitwise(&b[c.range()]), "{} component kind {}", r.name, c.kind);
        }
    }
}

#[test]
fn section_count_out_of_range() {
    let b = damaged_fixed(|b, _| wr_u32(b, 24, 0));
    assert_err!(b, Error::Malformed { section: "header", offset: 24, ref reason } if reason_has(reason, "section count is 0"));
    for count in [17u32, 0xFFFF_FFFF] {
        let b = damaged_fixed(|b, _| wr_u32(b, 24, count));
        let (e, largest, _) = measure_allocs(|| open_err(&b));
        assert!(
            matches!(e, Error::LimitExceeded { what: "section count", value, limit: 16 } if value == count as u64),
            "{e:?}"
        );
        // The copy of the file is seen (the counter works), nothing larger is.
        assert!((b.len()..=b.len() + 4096).contains(&largest), "allocated {largest} bytes");
    }
}

#[test]
fn reserved_header_fields_must_be_zero() {
    for at in [28usize, 31, 32, 47, 63] {
        let b = damaged_fixed(|b, _| b[at] = 0x01);
        assert_err!(b, Error::Malformed { section: "header", offset, .. } if offset == at as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// Section checksums.
// ---------------------------------------------------------------------------------------------

#[test]
fn meta_section_checksum() {
    let b = damaged(|b, l| b[l.meta[0].value.start] ^= 0x20);
    assert_err!(b, Error::SectionChecksum { section: "META", .. });
}

#[test]
fn tensors_section_checksum() {
    let b = damaged(|b, l| b[l.record(Q4_LORC).group_at()] ^= 0x01);
    assert_err!(b, Error::SectionChecksum { section: "TENSORS", .. });
}

/// A byte of the DATA section that belongs to no component (alignment padding).
fn data_padding_byte(l: &FileLayout) -> usize {
    let bias = l.record(BIAS).comp(ComponentKind::Data);
    let at = bias.range().end + 7;
    assert!(l.records.iter().flat_map(|r| &r.comps).all(|c| !c.range().contains(&at)));
    assert!(l.data_s().range().contains(&at));
    at
}

#[test]
fn data_section_checksum_on_padding() {
    let b = damaged(|b, l| b[data_padding_byte(l)] = 0xA5);
    let stored = layout().data_s().crc;
    assert_err!(b, Error::SectionChecksum { section: "DATA", stored: s, .. } if s == stored);
    // Structure verification does not hash the data; the padding is in no component, so every
    // tensor still verifies.
    let pak = Kpak::from_bytes(&b, Verify::Structure).unwrap();
    assert!(!pak.data_verified());
    for t in pak.tensors() {
        pak.verify_tensor(t).unwrap();
    }
}

#[test]
fn tensor_component_checksum_for_every_component() {
    for r in &layout().records {
        for c in &r.comps {
            let at = c.range().start + c.len as usize / 2;
            let b = damaged_fixed(|b, _| b[at] ^= 0x40);
            let kind = ComponentKind::from_u8(c.kind).unwrap().name();
            assert_err!(
                b,
                Error::TensorChecksum { ref tensor, component, stored, computed }
                    if *tensor == r.name && component == kind && stored == c.crc && computed != c.crc
            );
        }
    }
}

#[test]
fn structure_mode_opens_but_verify_tensor_finds_the_damage() {
    let q4 = layout().record(Q4_LORC).comp(ComponentKind::Params).clone();
    let b = damaged(|b, _| b[q4.range().start] ^= 0x01);
    assert_err!(b, Error::SectionChecksum { section: "DATA", .. });
    let pak = Kpak::from_bytes(&b, Verify::Structure).unwrap();
    assert!(!pak.data_verified());
    for t in pak.tensors() {
        let r = pak.verify_tensor(t);
        if t.name == Q4_LORC {
            let e = r.unwrap_err();
            assert!(
                matches!(e, Error::TensorChecksum { ref tensor, component: "params", stored, .. }
                    if tensor == Q4_LORC && stored == q4.crc),
                "{e:?}"
            );
        } else {
            r.unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The section table.
// ---------------------------------------------------------------------------------------------

#[test]
fn section_out_of_bounds() {
    let file_len = fixture().bytes.len() as u64;
    let b = damaged_fixed(|b, l| wr_u64(b, l.data_s().at + 16, l.data_s().len + 256));
    assert_err!(b, Error::SectionOutOfBounds { section: "DATA", end, file_len: fl, .. } if end == file_len + 256 && fl == file_len);
    // offset + length overflows u64.
    let b = damaged_fixed(|b, l| wr_u64(b, l.meta_s().at + 8, u64::MAX - 7));
    assert_err!(b, Error::SectionOutOfBounds { section: "META", end: u64::MAX, .. });
    // Over the header and section table.
    let b = damaged_fixed(|b, l| wr_u64(b, l.meta_s().at + 8, 64));
    assert_err!(b, Error::SectionOutOfBounds { section: "META", offset: 64, .. });
}

#[test]
fn section_overlap() {
    let b = damaged_fixed(|b, l| wr_u64(b, l.tensors_s().at + 8, l.meta_s().offset));
    assert_err!(b, Error::SectionOverlap { a: "META", b: "TENSORS" });
}

#[test]
fn misaligned_sections() {
    let b = damaged_fixed(|b, l| wr_u64(b, l.data_s().at + 8, l.data_s().offset - 8));
    assert_err!(b, Error::SectionMisaligned { section: "DATA", align: 256, offset } if offset % 256 == 248);
    let b = damaged_fixed(|b, l| {
        wr_u64(b, l.meta_s().at + 8, l.meta_s().offset + 4);
        wr_u64(b, l.meta_s().at + 16, l.meta_s().len - 4);
    });
    assert_err!(b, Error::SectionMisaligned { section: "META", align: 8, .. });
}

#[test]
fn duplicate_section() {
    let b = damaged_fixed(|b, l| wr_u32(b, l.tensors_s().at, 1));
    assert_err!(b, Error::DuplicateSection { section: "META" });
}

#[test]
fn unknown_section_kind() {
    for kind in [0u32, 5, 0x8000_0001] {
        let b = damaged_fixed(|b, l| wr_u32(b, l.data_s().at, kind));
        assert_err!(b, Error::UnknownSection { kind: k } if k == kind);
    }
}

#[test]
fn missing_section() {
    // Two sections: the DATA entry is no longer part of the table.
    let b = damaged_fixed(|b, _| wr_u32(b, 24, 2));
    assert_err!(b, Error::MissingSection { section: "DATA" });
}

#[test]
fn reserved_section_table_field() {
    let at = layout().tensors_s().at + 24;
    let b = damaged_fixed(|b, _| b[at + 7] = 1);
    assert_err!(b, Error::Malformed { section: "section table", offset, .. } if offset == at as u64);
}

// ---------------------------------------------------------------------------------------------
// META.
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicate_metadata_key() {
    let b = damaged_fixed(|b, l| {
        let (model, board) = (l.meta[0].key.clone(), l.meta[1].key.clone());
        let key = b[model].to_vec();
        b[board].copy_from_slice(&key);
    });
    assert_err!(b, Error::DuplicateMetadata { ref key } if key == "model");
}

#[test]
fn metadata_count_too_large() {
    for count in [0xFFFF_FFFFu32, format::MAX_META_ENTRIES + 1, 1000] {
        let b = damaged_fixed(|b, l| wr_u32(b, l.meta_s().offset as usize, count));
        let start = Instant::now();
        let (e, largest, total) = measure_allocs(|| open_err(&b));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(
            matches!(e, Error::LimitExceeded { what: "metadata entry count", value, .. } if value == count as u64),
            "{e:?}"
        );
        assert!(
            (b.len()..=b.len() + 4096).contains(&largest) && total <= 4 * b.len() + 65536,
            "allocated {largest} / {total} bytes"
        );
    }
    // One more entry than there is: within the limits, so the parser runs out of bytes.
    let b = damaged_fixed(|b, l| wr_u32(b, l.meta_s().offset as usize, l.meta.len() as u32 + 1));
    assert_err!(b, Error::Malformed { section: "META", .. });
}

#[test]
fn metadata_trailing_bytes() {
    let b = damaged_fixed(|b, l| wr_u32(b, l.meta_s().offset as usize, l.meta.len() as u32 - 1));
    assert_err!(b, Error::Malformed { section: "META", ref reason, .. } if reason_has(reason, "trailing"));
}

#[test]
fn metadata_key_length_out_of_range() {
    let b = damaged_fixed(|b, l| wr_u32(b, l.meta[0].at, 0));
    assert_err!(b, Error::Malformed { section: "META", ref reason, .. } if reason_has(reason, "key length 0"));
    let b = damaged_fixed(|b, l| wr_u32(b, l.meta[0].at, format::MAX_NAME_LEN as u32 + 1));
    assert_err!(b, Error::Malformed { section: "META", ref reason, .. } if reason_has(reason, "key length 1025"));
}

#[test]
fn metadata_value_too_long() {
    let too_long = format::MAX_META_VALUE_LEN as u32 + 1;
    let b = damaged_fixed(|b, l| wr_u32(b, l.meta[1].at + 4, too_long));
    assert_err!(b, Error::LimitExceeded { what: "metadata value length", value, .. } if value == too_long as u64);
    // Within the limit but longer than the section.
    let b = damaged_fixed(|b, l| wr_u32(b, l.meta[1].at + 4, 4096));
    assert_err!(b, Error::Malformed { section: "META", .. });
}

#[test]
fn metadata_not_utf8() {
    let b = damaged_fixed(|b, l| b[l.meta[2].value.start] = 0xFF);
    assert_err!(b, Error::Malformed { section: "META", ref reason, .. } if reason_has(reason, "UTF-8"));
    let b = damaged_fixed(|b, l| b[l.meta[2].key.start + 1] = 0xC3);
    assert_err!(b, Error::Malformed { section: "META", ref reason, .. } if reason_has(reason, "UTF-8"));
}

/// The largest metadata table the limits allow must parse in bounded time. The duplicate-key
/// check must not be quadratic in the entry count (65536 distinct keys are 2^31 comparisons).
#[test]
fn metadata_at_the_entry_limit_parses_quickly() {
    let count = format::MAX_META_ENTRIES;
    let mut meta = count.to_le_bytes().to_vec();
    for i in 0..count {
        meta.extend_from_slice(&4u32.to_le_bytes());
        meta.extend_from_slice(&0u32.to_le_bytes());
        meta.extend_from_slice(format!("{i:04x}").as_bytes());
    }
    let bytes = build_raw(&meta, &[0; 8], &[]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let r = Kpak::from_bytes(&bytes, Verify::Full).map(|p| p.metadata().len());
        let _ = tx.send((r, start.elapsed()));
    });
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok((r, _)) => assert_eq!(r.unwrap(), count as usize),
        Err(_) => panic!("parsing {count} metadata entries (a {} KiB META section) took over 2 s", meta.len() / 1024),
    }
}

/// A file built field by field from docs/FORMAT.md, with the given section bodies.
fn build_raw(meta: &[u8], tensors: &[u8], data: &[u8]) -> Vec<u8> {
    let table_end = 64 + 3 * 32;
    let meta_off = table_end;
    let tensors_off = (meta_off + meta.len()).div_ceil(8) * 8;
    let data_off = (tensors_off + tensors.len()).div_ceil(256) * 256;
    let mut b = vec![0u8; data_off + data.len()];
    b[meta_off..meta_off + meta.len()].copy_from_slice(meta);
    b[tensors_off..tensors_off + tensors.len()].copy_from_slice(tensors);
    b[data_off..].copy_from_slice(data);
    b[..8].copy_from_slice(b"\x89KPAK\r\n\x1a");
    wr_u16(&mut b, 8, 1);
    let len = b.len() as u64;
    wr_u64(&mut b, 16, len);
    wr_u32(&mut b, 24, 3);
    for (i, (kind, off, len)) in
        [(1u32, meta_off, meta.len()), (2, tensors_off, tensors.len()), (3, data_off, data.len())]
            .into_iter()
            .enumerate()
    {
        let e = 64 + 32 * i;
        wr_u32(&mut b, e, kind);
        wr_u64(&mut b, e + 8, off as u64);
        wr_u64(&mut b, e + 16, len as u64);
    }
    fix_crcs(&mut b);
    b
}

#[test]
fn raw_builder_agrees_with_the_writer() {
    // An empty model: no metadata, no tensors, an empty DATA section at 256.
    let raw = build_raw(&[0; 4], &[0; 8], &[]);
    assert_eq!(raw, KpakWriter::new().to_bytes());
    let pak = Kpak::from_bytes(&raw, Verify::Full).unwrap();
    assert!(pak.tensors().is_empty() && pak.metadata().is_empty());
}

// ---------------------------------------------------------------------------------------------
// TENSORS: the table.
// ---------------------------------------------------------------------------------------------

#[test]
fn tensor_count_too_large_fails_fast_without_allocating() {
    let section_len = layout().tensors_s().len;
    for count in [0xFFFF_FFFFu32, format::MAX_TENSORS + 1, 1000] {
        let b = damaged_fixed(|b, l| wr_u32(b, l.tensors_s().offset as usize, count));
        let start = Instant::now();
        let (e, largest, total) = measure_allocs(|| open_err(&b));
        assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
        assert!(
            matches!(e, Error::LimitExceeded { what: "tensor count", value, limit }
                if value == count as u64 && limit <= section_len),
            "{e:?}"
        );
        // The file copy plus small change: nothing in proportion to the count.
        assert!(
            (b.len()..=b.len() + 4096).contains(&largest) && total <= 4 * b.len() + 65536,
            "allocated {largest} / {total} bytes"
        );
    }
}

#[test]
fn tensor_count_one_more_than_present() {
    let b = damaged_fixed(|b, l| wr_u32(b, l.tensors_s().offset as usize, l.records.len() as u32 + 1));
    assert_err!(b, Error::Malformed { section: "TENSORS", .. });
}

#[test]
fn tensor_table_trailing_bytes() {
    let b = damaged_fixed(|b, l| wr_u32(b, l.tensors_s().offset as usize, l.records.len() as u32 - 1));
    assert_err!(b, Error::Malformed { section: "TENSORS", ref reason, .. } if reason_has(reason, "trailing"));
}

#[test]
fn tensor_table_reserved_field() {
    let at = layout().tensors_s().offset;
    let b = damaged_fixed(|b, _| b[at as usize + 6] = 1);
    assert_err!(b, Error::Malformed { section: "TENSORS", offset, .. } if offset == at + 4);
}

#[test]
fn duplicate_tensor_names() {
    let b = damaged_fixed(|b, l| {
        let at = l.record(FP4_E8M0).name_at;
        b[at..at + 4].copy_from_slice(BIAS.as_bytes());
    });
    assert_err!(b, Error::DuplicateTensor { ref name } if name == BIAS);
}

#[test]
fn tensor_name_not_utf8() {
    let b = damaged_fixed(|b, l| b[l.record(FP4_F16).name_at + 2] = 0xFF);
    assert_err!(b, Error::Malformed { section: "TENSORS", ref reason, .. } if reason_has(reason, "UTF-8"));
}

#[test]
fn tensor_name_length_out_of_range() {
    let b = damaged_fixed(|b, l| wr_u16(b, l.record(Q8_MASTER).name_len_at, 0));
    assert_err!(b, Error::Malformed { section: "TENSORS", ref reason, .. } if reason_has(reason, "name length 0"));
    let b = damaged_fixed(|b, l| wr_u16(b, l.record(Q8_MASTER).name_len_at, 0xFFFF));
    assert_err!(b, Error::Malformed { section: "TENSORS", ref reason, .. } if reason_has(reason, "name length 65535"));
}

#[test]
fn unknown_format_code() {
    for code in [0u8, 6, 0xFF] {
        let b = damaged_fixed(|b, l| b[l.record(BIAS).format_at] = code);
        assert_err!(b, Error::UnknownFormat { ref tensor, code: c } if tensor == BIAS && c == code);
    }
}

#[test]
fn tensor_rank_too_large() {
    let b = damaged_fixed(|b, l| b[l.record(BIAS).rank_at()] = 9);
    assert_err!(b, Error::LimitExceeded { what: "tensor rank", value: 9, limit: 8 });
    let b = damaged_fixed(|b, l| b[l.record(NORM_F16).rank_at()] = 0xFF);
    assert_err!(b, Error::LimitExceeded { what: "tensor rank", value: 255, limit: 8 });
}

#[test]
fn quantized_tensor_must_be_a_matrix() {
    // Rank 1: the record is now misread from the second dimension on, but the rank check comes
    // before any component is read.
    let b = damaged_fixed(|b, l| b[l.record(Q8_MASTER).rank_at()] = 1);
    assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == Q8_MASTER && reason_has(reason, "matrices"));
}

#[test]
fn unknown_flag_bits() {
    for bit in [0x08u8, 0x80] {
        let b = damaged_fixed(|b, l| b[l.record(Q4_LORC).flags_at()] |= bit);
        assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == Q4_LORC && reason_has(reason, "unknown flag bits"));
    }
}

#[test]
fn flags_that_do_not_apply_to_the_format() {
    let cases = [
        (Q4_LORC, format::FLAG_BITSWITCH_MASTER),
        (Q8_MASTER, format::FLAG_SYMMETRIC),
        (BIAS, format::FLAG_SYMMETRIC),
        (FP4_E8M0, format::FLAG_BITSWITCH_MASTER),
    ];
    for (name, flag) in cases {
        let b = damaged_fixed(|b, l| b[l.record(name).flags_at()] |= flag);
        assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == name && reason_has(reason, "do not apply"));
    }
}

#[test]
fn invalid_group_size() {
    for group in [0u32, 16, 48, 256, u32::MAX] {
        let b = damaged_fixed(|b, l| wr_u32(b, l.record(Q4_LORC).group_at(), group));
        assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == Q4_LORC && reason_has(reason, "group size"));
    }
    // MXFP4 (E8M0 scales) is group 32 only.
    let b = damaged_fixed(|b, l| wr_u32(b, l.record(FP4_E8M0).group_at(), 64));
    assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == FP4_E8M0 && reason_has(reason, "E8M0"));
    // Formats without groups must store 0.
    let b = damaged_fixed(|b, l| wr_u32(b, l.record(Q8_MASTER).group_at(), 32));
    assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == Q8_MASTER && reason_has(reason, "no groups"));
}

#[test]
fn component_count_out_of_range() {
    for n in [0u8, 9, 0xFF] {
        let b = damaged_fixed(|b, l| b[l.record(BIAS).ncomp_at()] = n);
        assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == BIAS && reason_has(reason, "component count"));
    }
}

#[test]
fn dimension_out_of_range() {
    for d in [0u64, format::MAX_DIM + 1, u64::MAX] {
        let b = damaged_fixed(|b, l| wr_u64(b, l.record(NORM_F16).dims_at, d));
        assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == NORM_F16 && reason_has(reason, "dimension"));
    }
    // Each dimension in range, the product not.
    let b = damaged_fixed(|b, l| {
        let r = l.record(Q8_MASTER);
        wr_u64(b, r.dims_at, format::MAX_DIM);
        wr_u64(b, r.dims_at + 8, format::MAX_DIM);
    });
    assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == Q8_MASTER && reason_has(reason, "too many elements"));
}

#[test]
fn lorc_rank_out_of_range() {
    let b = damaged_fixed(|b, l| wr_u32(b, l.record(Q4_LORC).lorc_at(), 65));
    assert_err!(b, Error::LimitExceeded { what: "LoRC rank", value: 65, limit: 64 });
    let b = damaged_fixed(|b, l| wr_u32(b, l.record(Q4_LORC).lorc_at(), u32::MAX));
    assert_err!(b, Error::LimitExceeded { what: "LoRC rank", .. });
    // Rank 0: the LoRC components no longer belong.
    let b = damaged_fixed(|b, l| wr_u32(b, l.record(Q4_LORC).lorc_at(), 0));
    assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == Q4_LORC && reason_has(reason, "does not belong"));
    // Rank 3 instead of 4: U's rows ([n, 3] f16) still take 2 words, V^T has one row fewer.
    let v_len = layout().record(Q4_LORC).comp(ComponentKind::LorcV).len;
    let b = damaged_fixed(|b, l| wr_u32(b, l.record(Q4_LORC).lorc_at(), 3));
    assert_err!(b, Error::ComponentSize { ref tensor, component: "lorc_v", expected, actual }
        if tensor == Q4_LORC && expected == v_len / 4 * 3 && actual == v_len);
}

// ---------------------------------------------------------------------------------------------
// TENSORS: component entries.
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_component_kind() {
    for kind in [0u8, 7, 0xFF] {
        let b = damaged_fixed(|b, l| b[l.record(FP4_E8M0).comps[1].at] = kind);
        assert_err!(b, Error::Malformed { section: "TENSORS", ref reason, .. }
            if reason_has(reason, &format!("unknown component kind {kind}")) && reason_has(reason, FP4_E8M0));
    }
}

#[test]
fn component_reserved_bytes() {
    let b = damaged_fixed(|b, l| b[l.record(BIAS).comps[0].at + 2] = 1);
    assert_err!(b, Error::Malformed { section: "TENSORS", ref reason, .. } if reason_has(reason, "reserved"));
}

#[test]
fn duplicate_and_foreign_components() {
    let b = damaged_fixed(|b, l| b[l.record(Q4_LORC).comp(ComponentKind::Params).at] = ComponentKind::Quants as u8);
    assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == Q4_LORC && reason_has(reason, "appears twice"));
    let b = damaged_fixed(|b, l| b[l.record(Q4_LORC).comp(ComponentKind::Params).at] = ComponentKind::Scales as u8);
    assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == Q4_LORC && reason_has(reason, "does not belong"));
    let b = damaged_fixed(|b, l| b[l.record(BIAS).comps[0].at] = ComponentKind::LorcU as u8);
    assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == BIAS && reason_has(reason, "does not belong"));
}

#[test]
fn missing_component() {
    // Give the f16 matrix a LoRC rank: it then needs lorc_u and lorc_v, which it lacks.
    let b = damaged_fixed(|b, l| {
        let r = l.record(NORM_F16);
        wr_u32(b, r.lorc_at(), 1);
    });
    assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == NORM_F16 && reason_has(reason, "is missing"));
}

#[test]
fn component_out_of_bounds() {
    let data = layout().data_s().clone();
    let data_end = data.offset + data.len;
    let cases = [data_end, 0, data.offset - 256, u64::MAX - 255];
    for offset in cases {
        let b = damaged_fixed(|b, l| wr_u64(b, l.record(BIAS).comps[0].at + 8, offset));
        assert_err!(b, Error::TensorOutOfBounds { ref tensor, component: "data", offset: o, data_start, data_end: de, .. }
            if tensor == BIAS && o == offset && data_start == data.offset && de == data_end);
    }
    // A length that runs past the data section.
    let b = damaged_fixed(|b, l| wr_u64(b, l.record(NORM_F16).comps[0].at + 16, u64::MAX));
    assert_err!(b, Error::TensorOutOfBounds { ref tensor, end: u64::MAX, .. } if tensor == NORM_F16);
}

#[test]
fn misaligned_component() {
    for delta in [4u64, 8, 128] {
        let c = layout().record(BIAS).comps[0].clone();
        let b = damaged_fixed(|b, _| wr_u64(b, c.at + 8, c.offset + delta));
        assert_err!(b, Error::TensorMisaligned { ref tensor, component: "data", offset, align: 256 }
            if tensor == BIAS && offset == c.offset + delta);
    }
}

#[test]
fn overlapping_components_of_two_tensors() {
    let q4_quants = layout().record(Q4_LORC).comp(ComponentKind::Quants).clone();
    assert!(q4_quants.len > 256 + layout().record(BIAS).comps[0].len);
    let b = damaged_fixed(|b, l| wr_u64(b, l.record(BIAS).comps[0].at + 8, q4_quants.offset + 256));
    assert_err!(b, Error::TensorOverlap { ref a, ref b } if a == Q4_LORC && b == BIAS);
    // Two components of one tensor at the same place.
    let b = damaged_fixed(|b, l| {
        let r = l.record(FP4_F16);
        let scales = r.comp(ComponentKind::Scales);
        wr_u64(b, scales.at + 8, r.comp(ComponentKind::Quants).offset);
    });
    assert_err!(b, Error::TensorOverlap { ref a, ref b } if a == FP4_F16 && b == FP4_F16);
}

#[test]
fn component_size_mismatch() {
    let c = layout().record(BIAS).comps[0].clone();
    let b = damaged_fixed(|b, _| wr_u64(b, c.at + 16, c.len + 4));
    assert_err!(b, Error::ComponentSize { ref tensor, component: "data", expected, actual }
        if tensor == BIAS && expected == c.len && actual == c.len + 4);
    // The shape no longer matches the data: [17] f32 needs 68 bytes.
    let b = damaged_fixed(|b, l| wr_u64(b, l.record(BIAS).dims_at, 17));
    assert_err!(b, Error::ComponentSize { ref tensor, component: "data", expected: 68, actual: 64 } if tensor == BIAS);
    // E8M0 -> f16 scales: MXFP4 with K = 80 has 3 groups, one word of E8M0 scales per row but
    // two of f16 scales (the group check passes once the group is 32 either way).
    let s = layout().record(FP4_E8M0).comp(ComponentKind::Scales).len;
    let b = damaged_fixed(|b, l| b[l.record(FP4_E8M0).flags_at()] |= format::FLAG_FP4_SCALE_F16);
    assert_err!(b, Error::ComponentSize { ref tensor, component: "scales", expected, actual }
        if tensor == FP4_E8M0 && expected == 2 * s && actual == s);
}

// ---------------------------------------------------------------------------------------------
// Valid files: round trip, mapping, alignment, bit switching, the spec's example.
// ---------------------------------------------------------------------------------------------

fn check_contents(pak: &Kpak) {
    let f = fixture();
    let meta: Vec<(String, String)> = f.metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(pak.metadata(), &meta[..]);
    assert_eq!(pak.meta("classes"), Some("person,car,λ"));
    assert_eq!(pak.version(), (format::VERSION_MAJOR, format::VERSION_MINOR));
    let names: Vec<&str> = pak.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, [BIAS, Q4_LORC, FP4_E8M0, FP4_F16, Q8_MASTER, NORM_F16]);

    // f32 and f16 tensors.
    assert_eq!(pak.tensor_f32(BIAS).unwrap(), f.bias);
    let t = pak.tensor(BIAS).unwrap();
    assert_eq!((t.scheme, &t.shape[..], t.lorc_rank, t.bitswitch_master), (Scheme::F32, &[16u64][..], 0, false));
    let expected: Vec<f32> = f.norm.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    assert_eq!(pak.tensor_f32(NORM_F16).unwrap(), expected);
    let t = pak.tensor(NORM_F16).unwrap();
    assert_eq!(t.shape, f.norm_shape.map(|d| d as u64));
    // [3, 5] f16: rows of 3 words, the sixth half of each row is +0.
    let raw = pak.component_bytes(t.component(ComponentKind::Data).unwrap());
    assert_eq!(raw.len(), 3 * 3 * 4);
    for row in raw.chunks(12) {
        assert_eq!(&row[10..12], &[0, 0]);
    }
    assert!(matches!(pak.tensor_f32(Q4_LORC), Err(Error::InvalidTensor { .. })));
    assert!(matches!(pak.tensor(" nope"), Err(Error::TensorNotFound { .. })));

    // Matrices: the bytes in the file are the packed words, and the views are equal.
    for (name, m) in &f.matrices {
        let t = pak.tensor(name).unwrap();
        assert_eq!(t.scheme, m.scheme);
        assert_eq!(t.shape, [m.n as u64, m.k as u64]);
        assert_eq!(t.bitswitch_master, m.bitswitch_master);
        assert_eq!(t.lorc_rank, m.lorc.as_ref().map_or(0, |l| l.rank));
        let comps = m.scheme.components();
        assert_eq!(pak.component_bytes(t.component(comps[0]).unwrap()), u32_words_as_bytes(&m.main));
        assert_eq!(pak.component_bytes(t.component(comps[1]).unwrap()), u32_words_as_bytes(&m.aux));
        if let Some(l) = &m.lorc {
            assert_eq!(pak.component_bytes(t.component(ComponentKind::LorcU).unwrap()), u32_words_as_bytes(&l.u));
            assert_eq!(pak.component_bytes(t.component(ComponentKind::LorcV).unwrap()), u32_words_as_bytes(&l.v));
        }
        let (got, want) = (pak.matrix(name).unwrap(), m.view());
        assert_eq!((got.n, got.k, got.scheme), (want.n, want.k, want.scheme));
        assert_eq!((got.main, got.aux), (want.main, want.aux));
        match (got.lorc, want.lorc) {
            (Some(a), Some(b)) => assert_eq!((a.rank, a.u, a.v), (b.rank, b.u, b.v)),
            (None, None) => {}
            _ => panic!("{name}: LoRC factors differ"),
        }
        assert_eq!(dequantize(&got), dequantize(&want));
    }
    assert!(matches!(pak.matrix(BIAS), Err(Error::InvalidTensor { .. })));
}

#[test]
fn round_trip() {
    let f = fixture();
    let pak = Kpak::from_bytes(&f.bytes, Verify::Full).unwrap();
    assert!(pak.data_verified());
    assert_eq!(pak.bytes(), &f.bytes[..]);
    check_contents(&pak);
    // Sections as the writer lays them out.
    let kinds: Vec<&str> = pak.sections().iter().map(|s| s.kind.name()).collect();
    assert_eq!(kinds, ["META", "TENSORS", "DATA"]);
    // The independent layout parser agrees with the reader.
    for (t, r) in pak.tensors().iter().zip(&layout().records) {
        assert_eq!(t.name, r.name);
        assert_eq!(t.shape, r.shape);
        let got: Vec<_> = t.components.iter().map(|c| (c.kind as u8, c.offset, c.len, c.crc32)).collect();
        let want: Vec<_> = r.comps.iter().map(|c| (c.kind, c.offset, c.len, c.crc)).collect();
        assert_eq!(got, want);
    }
    let pak = Kpak::from_bytes(&f.bytes, Verify::Structure).unwrap();
    assert!(!pak.data_verified());
    check_contents(&pak);
}

#[test]
fn write_then_open_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.kpak");
    fixture().writer.write(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), fixture().bytes);
    // Only the file itself is left: the temporary was renamed over it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let pak = Kpak::open(&path, Verify::Full).unwrap();
    assert!(pak.data_verified());
    check_contents(&pak);
    let pak = Kpak::open(&path, Verify::Structure).unwrap();
    check_contents(&pak);

    // Damage through the file system: a truncated file, a short file, an empty file, none.
    let bytes = &fixture().bytes;
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert!(matches!(Kpak::open(&path, Verify::Full), Err(Error::Truncated { .. })));
    std::fs::write(&path, &bytes[..12]).unwrap();
    assert!(matches!(Kpak::open(&path, Verify::Full), Err(Error::Truncated { needed: 64, file_len: 12, .. })));
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(Kpak::open(&path, Verify::Full), Err(Error::Truncated { needed: 64, file_len: 0, .. })));
    let missing = dir.path().join("missing.kpak");
    assert!(matches!(Kpak::open(&missing, Verify::Full), Err(Error::Io { ref path, .. }) if *path == missing));
}

#[test]
fn every_component_starts_on_a_256_byte_boundary() {
    let pak = Kpak::from_bytes(&fixture().bytes, Verify::Full).unwrap();
    for s in pak.sections() {
        let align = if s.kind == SectionKind::Data { format::DATA_ALIGN } else { format::SECTION_ALIGN };
        assert_eq!(s.offset % align, 0, "{}", s.kind.name());
    }
    let mut count = 0;
    for t in pak.tensors() {
        for c in &t.components {
            assert_eq!(c.offset % format::DATA_ALIGN, 0, "{} {}", t.name, c.kind.name());
            assert_eq!(c.len % 4, 0);
            count += 1;
        }
    }
    assert_eq!(count, 1 + 4 + 2 + 2 + 2 + 1);
    // The DATA section ends on a boundary too: the file length is a multiple of 256.
    assert_eq!(fixture().bytes.len() % 256, 0);
}

/// round_half_even(q / 2^k) computed in floating point: an independent statement of the rule.
fn round_half_even_div(q: i32, k: u32) -> i32 {
    (q as f64 / (1u64 << k) as f64).round_ties_even() as i32
}

#[test]
fn round_half_even_shift_matches_float_rounding() {
    for k in 0..=7 {
        for q in -128..=127 {
            assert_eq!(round_half_even_shift(q, k), round_half_even_div(q, k), "q {q} k {k}");
        }
    }
}

#[test]
fn bit_switching_the_q8_master() {
    let f = fixture();
    let pak = Kpak::from_bytes(&f.bytes, Verify::Full).unwrap();
    let master = f.matrix(Q8_MASTER);
    let (n, k) = (master.n, master.k);
    let row_words = k.div_ceil(4);
    for bits in [4u32, 2] {
        let LoadedMatrix::Owned(switched) = pak.matrix_at_bits(Q8_MASTER, Some(bits)).unwrap() else {
            panic!("switching to {bits} bits must derive a new matrix");
        };
        assert_eq!(switched.scheme, Scheme::Q4 { group: 128, symmetric: true });
        assert_eq!((switched.n, switched.k), (n, k));
        let shift = 8 - bits;
        let (lo, hi) = (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1);
        let deq = dequantize(&switched.view());
        for r in 0..n {
            let s = f32::from_bits(master.aux[r]);
            let s_l = f16::from_f32(s * (1u32 << shift) as f32).to_f64();
            for c in 0..k {
                let q8 = (master.main[r * row_words + c / 4] >> (8 * (c % 4))) as u8 as i8 as i32;
                let q_l = round_half_even_shift(q8, shift).clamp(lo, hi);
                assert_eq!(q_l, round_half_even_div(q8, shift).clamp(lo, hi));
                let got = deq[r * k + c];
                assert_eq!(got, q_l as f64 * s_l, "bits {bits} row {r} col {c}");
                // s_l is s * 2^(8-l) rounded to f16.
                let exact = q_l as f64 * s as f64 * (1u32 << shift) as f64;
                assert!((got - exact).abs() <= exact.abs() * 1e-3, "{got} vs {exact}");
            }
            // Padding codes are 8 (q = 0).
            let words = switched.scheme.row_words(k);
            let row = &switched.main[r * words..(r + 1) * words];
            for c in k..switched.scheme.padded_k(k) {
                assert_eq!((row[c / 8] >> (4 * (c % 8))) & 0xF, 8);
            }
        }
    }
    // 8 bits (or no request) is the master itself, borrowed from the file.
    for bits in [Some(8), None] {
        let LoadedMatrix::Borrowed(v) = pak.matrix_at_bits(Q8_MASTER, bits).unwrap() else {
            panic!("8 bits must borrow the master");
        };
        assert_eq!((v.main, v.aux), (&master.main[..], &master.aux[..]));
    }
    assert!(matches!(pak.matrix_at_bits(Q8_MASTER, Some(3)), Err(Error::InvalidArgument { .. })));
    // Tensors that are not masters are returned as stored.
    assert!(matches!(pak.matrix_at_bits(Q4_LORC, Some(4)).unwrap(), LoadedMatrix::Borrowed(_)));
}

/// Component sizes from the formulas of docs/FORMAT.md, against what the quantizers produce.
#[test]
fn component_size_formulas() {
    let mut rng = SplitMix64::new(7);
    let schemes = [
        Scheme::F32,
        Scheme::F16,
        Scheme::Q8,
        Scheme::Q4 { group: 32, symmetric: false },
        Scheme::Q4 { group: 128, symmetric: true },
        Scheme::Fp4 { group: 32, scale: Fp4Scale::E8M0 },
        Scheme::Fp4 { group: 64, scale: Fp4Scale::F16 },
    ];
    for scheme in schemes {
        for (n, k) in [(1usize, 1usize), (3, 31), (2, 33), (5, 200), (4, 513)] {
            let m = quantize(&rng.normal_vec(n * k), n, k, scheme).unwrap();
            let (main, aux) = spec_sizes(scheme, n, k);
            assert_eq!((m.main.len() * 4, m.aux.len() * 4), (main, aux), "{} [{n}, {k}]", scheme.label());
        }
    }
}

/// Bytes of the main and auxiliary components of an [n, k] matrix (docs/FORMAT.md).
fn spec_sizes(scheme: Scheme, n: usize, k: usize) -> (usize, usize) {
    let ceil = |a: usize, b: usize| a.div_ceil(b);
    match scheme {
        Scheme::F32 => (4 * n * k, 0),
        Scheme::F16 => (4 * n * ceil(k, 2), 0),
        Scheme::Q8 => (4 * n * ceil(k, 4), 4 * n),
        Scheme::Q4 { group: g, .. } => (4 * n * ceil(k, g as usize) * g as usize / 8, 4 * n * ceil(k, g as usize)),
        Scheme::Fp4 { group: g, scale } => {
            let groups = ceil(k, g as usize);
            let per_word = if scale == Fp4Scale::E8M0 { 4 } else { 2 };
            (4 * n * groups * g as usize / 8, 4 * n * ceil(groups, per_word))
        }
    }
}

/// The worked example of docs/FORMAT.md, byte for byte.
#[test]
fn spec_worked_example_matches_the_writer() {
    let mut w = KpakWriter::new();
    w.metadata("name", "tiny").unwrap();
    w.add_f32("b", &[2], &[1.0, -2.0]).unwrap();
    let bytes = w.to_bytes();
    assert_eq!(bytes.len(), 512);

    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md")).unwrap();
    let block = spec
        .split("<!-- worked-example-begin -->")
        .nth(1)
        .and_then(|s| s.split("<!-- worked-example-end -->").next())
        .expect("docs/FORMAT.md has the worked example between its markers");
    let mut expected = vec![0u8; 512];
    let mut lines = 0;
    for line in block.lines() {
        let Some((addr, rest)) = line.split_once(':') else { continue };
        let Ok(addr) = usize::from_str_radix(addr.trim(), 16) else { continue };
        let hex: Vec<u8> = rest.split_whitespace().map_while(|h| u8::from_str_radix(h, 16).ok()).collect();
        expected[addr..addr + hex.len()].copy_from_slice(&hex);
        lines += 1;
    }
    assert!(lines >= 17, "the example shows the header, table, META, TENSORS and data");
    assert_eq!(bytes, expected, "docs/FORMAT.md's worked example (bytes not listed are zero)");
    let pak = Kpak::from_bytes(&bytes, Verify::Full).unwrap();
    assert_eq!(pak.tensor_f32("b").unwrap(), [1.0, -2.0]);
}

// ---------------------------------------------------------------------------------------------
// Values a kernel would read (Full verification, check 16): reached with every checksum made
// consistent, as a file written by a buggy or hostile writer would be.
// ---------------------------------------------------------------------------------------------

/// Writes `value` at byte `at_in_component` of `tensor`'s `kind` component and fixes every
/// checksum (the component's too).
fn with_value(tensor: &str, kind: ComponentKind, at_in_component: usize, value: &[u8]) -> Vec<u8> {
    let c = layout().record(tensor).comp(kind).clone();
    damaged_fixed(|b, _| {
        let at = c.offset as usize + at_in_component;
        b[at..at + value.len()].copy_from_slice(value);
        let crc = format::crc32(&b[c.range()]);
        wr_u32(b, c.at + 4, crc);
    })
}

#[test]
fn non_finite_values_scales_and_parameters() {
    let cases: [(&str, ComponentKind, usize, &[u8], &str); 6] = [
        (BIAS, ComponentKind::Data, 4, &f32::NAN.to_le_bytes(), "non-finite value"),
        (NORM_F16, ComponentKind::Data, 2, &0x7C00u16.to_le_bytes(), "non-finite value"),
        (Q8_MASTER, ComponentKind::Scales, 8, &f32::INFINITY.to_le_bytes(), "non-finite scale"),
        (Q4_LORC, ComponentKind::Params, 6, &0x7E00u16.to_le_bytes(), "non-finite group parameter"),
        (FP4_F16, ComponentKind::Scales, 0, &0xFC00u16.to_le_bytes(), "non-finite scale"),
        (Q4_LORC, ComponentKind::LorcV, 10, &0x7C01u16.to_le_bytes(), "non-finite LoRC V value"),
    ];
    for (tensor, kind, at, value, needle) in cases {
        let b = with_value(tensor, kind, at, value);
        let e = open_err(&b);
        assert!(
            matches!(&e, Error::InvalidTensor { tensor: t, reason } if t == tensor && reason_has(reason, needle)),
            "{tensor} {kind:?}: {e}"
        );
        // Structure mode does not read the data: it opens, and validate_values names the problem.
        let pak = Kpak::from_bytes(&b, Verify::Structure).unwrap();
        assert!(pak.validate_values(pak.tensor(tensor).unwrap()).is_err());
    }
}

#[test]
fn e8m0_nan_scale_byte() {
    // Group 1 of row 0 of the MXFP4 tensor.
    let b = with_value(FP4_E8M0, ComponentKind::Scales, 1, &[0xFF]);
    assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == FP4_E8M0 && reason_has(reason, "E8M0"));
}

#[test]
fn non_zero_f16_row_padding() {
    // The norm tensor is [3, 5]: each row of 5 halves is padded with one half in word 2.
    let b = with_value(NORM_F16, ComponentKind::Data, 2 * 4 + 2, &0x3C00u16.to_le_bytes());
    assert_err!(b, Error::InvalidTensor { ref tensor, ref reason } if tensor == NORM_F16 && reason_has(reason, "padding"));
    // A zero-valued half in the same place is the valid file.
    let b = with_value(NORM_F16, ComponentKind::Data, 2 * 4 + 2, &0u16.to_le_bytes());
    assert!(Kpak::from_bytes(&b, Verify::Full).is_ok());
}

//! Random damage to a valid .kpak file: the reader must never panic, hang or allocate without
//! bound, and must either return a typed error or open a file whose contents are what they were.
//!
//! Mutations: byte flips anywhere or in the structure (header, table, META, TENSORS), truncation,
//! and overwriting aligned u32/u64 words or the file's own fields with boundary values. Each kind
//! runs raw (the checksums catch it), with the section and header checksums re-computed (so the
//! mutation reaches the structural checks), and where useful with the component checksums
//! re-computed too (so a changed tensor table is checked against the data alone).
//!
//! What "unchanged" means depends on what was re-computed:
//! - raw: an opened file has exactly the original metadata, tensors and tensor bytes;
//! - section checksums fixed: the same, except that a mutated META may give other metadata and a
//!   mutated TENSORS other records, but every component is still one of the original components
//!   with its original bytes (component checksums were not fixed);
//! - component checksums fixed too: metadata and records are unchanged unless their section was
//!   mutated; the tensor bytes may differ.
//!
//! In every case an opened file must decode: every matrix view, dequantization, LoRC product,
//! f32 read-out and bit switch works without panicking.

use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use kestrel::format::{self, Kpak, KpakWriter, Verify};
use kestrel::quant::{add_lorc, dequantize, lorc_dense, quantize};
use kestrel::rng::SplitMix64;
use kestrel::tensor::{ComponentKind, Fp4Scale, Scheme};
use kestrel::Error;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// A parse of a few KiB that takes longer than this is a hang.
const PARSE_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Allocation accounting (per thread).
// ---------------------------------------------------------------------------------------------

mod common;
use common::measure_allocs;

#[global_allocator]
static ALLOC: common::CountingAlloc = common::CountingAlloc;

// ---------------------------------------------------------------------------------------------
// The original file and what it decodes to.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
struct ComponentSnapshot {
    kind: ComponentKind,
    offset: u64,
    len: u64,
    crc: u32,
    bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq)]
struct TensorSnapshot {
    name: String,
    scheme: Scheme,
    shape: Vec<u64>,
    lorc_rank: usize,
    bitswitch_master: bool,
    components: Vec<ComponentSnapshot>,
}

/// A tensor record without the component bytes: name, format, shape, LoRC rank, master flag and
/// (kind, offset, length) of each component.
type RecordSnapshot = (String, Scheme, Vec<u64>, usize, bool, Vec<(ComponentKind, u64, u64)>);

impl TensorSnapshot {
    fn record(&self) -> RecordSnapshot {
        let comps = self.components.iter().map(|c| (c.kind, c.offset, c.len)).collect();
        (self.name.clone(), self.scheme, self.shape.clone(), self.lorc_rank, self.bitswitch_master, comps)
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Decoded {
    metadata: Vec<(String, String)>,
    tensors: Vec<TensorSnapshot>,
}

struct Original {
    bytes: Vec<u8>,
    decoded: Decoded,
    /// Original byte ranges of the header with its table, META, TENSORS and DATA.
    table: Range<usize>,
    meta: Range<usize>,
    tensors: Range<usize>,
    /// Every field of the file: (position, width in bytes).
    fields: Vec<(usize, usize)>,
}

fn original() -> &'static Original {
    static ORIGINAL: OnceLock<Original> = OnceLock::new();
    ORIGINAL.get_or_init(|| {
        let mut rng = SplitMix64::new(0x00f0_22ed);
        let mut w = KpakWriter::new();
        w.metadata("name", "fuzz").unwrap();
        w.metadata("inputs", "x: f32[1, 40]").unwrap();
        w.add_f32("bias", &[5], &rng.normal_vec(5)).unwrap();
        let x = rng.normal_vec(6 * 40);
        let mut q4 = quantize(&x, 6, 40, Scheme::Q4 { group: 32, symmetric: false }).unwrap();
        add_lorc(&mut q4, &x, 2).unwrap();
        w.add_matrix("q4", &q4).unwrap();
        let fp4 = quantize(&rng.normal_vec(4 * 40), 4, 40, Scheme::Fp4 { group: 32, scale: Fp4Scale::E8M0 }).unwrap();
        w.add_matrix("fp4", &fp4).unwrap();
        let fph = quantize(&rng.normal_vec(2 * 70), 2, 70, Scheme::Fp4 { group: 64, scale: Fp4Scale::F16 }).unwrap();
        w.add_matrix("fp4h", &fph).unwrap();
        let mut q8 = quantize(&rng.normal_vec(3 * 10), 3, 10, Scheme::Q8).unwrap();
        q8.bitswitch_master = true;
        w.add_matrix("master", &q8).unwrap();
        w.add_f16("norm", &[3, 3], &rng.normal_vec(9)).unwrap();
        let bytes = w.to_bytes();

        let pak = Kpak::from_bytes(&bytes, Verify::Full).unwrap();
        let decoded = decode(&pak).unwrap();
        let range = |kind: &str| {
            let s = pak.sections().iter().find(|s| s.kind.name() == kind).unwrap();
            s.offset as usize..(s.offset + s.len) as usize
        };
        let table_end = format::HEADER_LEN + format::SECTION_ENTRY_LEN * pak.sections().len();
        let (meta, tensors) = (range("META"), range("TENSORS"));
        let fields = fields_of(&bytes, pak.sections().len(), meta.clone(), tensors.clone());
        Original { bytes, decoded, table: 0..table_end, meta, tensors, fields }
    })
}

/// Positions and widths of every field, walked from docs/FORMAT.md.
fn fields_of(b: &[u8], sections: usize, meta: Range<usize>, tensors: Range<usize>) -> Vec<(usize, usize)> {
    let mut f = vec![(8, 2), (10, 2), (12, 4), (16, 8), (24, 4), (28, 4), (32, 8), (56, 8)];
    for i in 0..sections {
        let e = 64 + 32 * i;
        f.extend([(e, 4), (e + 4, 4), (e + 8, 8), (e + 16, 8), (e + 24, 8)]);
    }
    let mut pos = meta.start;
    f.push((pos, 4));
    let n = rd_u32(b, pos);
    pos += 4;
    for _ in 0..n {
        f.extend([(pos, 4), (pos + 4, 4)]);
        pos += 8 + rd_u32(b, pos) as usize + rd_u32(b, pos + 4) as usize;
    }
    let mut pos = tensors.start;
    f.extend([(pos, 4), (pos + 4, 4)]);
    let n = rd_u32(b, pos);
    pos += 8;
    for _ in 0..n {
        let name_len = u16::from_le_bytes([b[pos], b[pos + 1]]) as usize;
        f.push((pos, 2));
        let at = pos + 2 + name_len;
        let (rank, ncomp) = (b[at + 1] as usize, b[at + 3] as usize);
        f.extend([(at, 1), (at + 1, 1), (at + 2, 1), (at + 3, 1), (at + 4, 4), (at + 8, 4)]);
        pos = at + 12;
        for _ in 0..rank {
            f.push((pos, 8));
            pos += 8;
        }
        for _ in 0..ncomp {
            f.extend([(pos, 1), (pos + 1, 1), (pos + 4, 4), (pos + 8, 8), (pos + 16, 8)]);
            pos += 24;
        }
    }
    f
}

/// Reads everything an application would read from an opened file, exercising every accessor.
/// An error here is an inconsistency the reader let through.
fn decode(pak: &Kpak) -> Result<Decoded, String> {
    let metadata = pak.metadata().to_vec();
    for (k, v) in &metadata {
        if pak.meta(k) != Some(v.as_str()) {
            return Err(format!("meta('{k}') is not the value of the first entry"));
        }
    }
    let file_len = pak.bytes().len() as u64;
    let mut tensors = Vec::new();
    for t in pak.tensors() {
        let fail = |what: String| format!("tensor '{}': {what}", t.name);
        pak.verify_tensor(t).map_err(|e| fail(format!("verify_tensor after full verification: {e}")))?;
        let mut components = Vec::new();
        for c in &t.components {
            if c.offset % format::DATA_ALIGN != 0 || c.offset + c.len > file_len {
                return Err(fail(format!("component {} at {}+{}", c.kind.name(), c.offset, c.len)));
            }
            let bytes = pak.component_bytes(c).to_vec();
            components.push(ComponentSnapshot { kind: c.kind, offset: c.offset, len: c.len, crc: c.crc32, bytes });
        }
        if t.shape.len() == 2 {
            let m = pak.matrix(&t.name).map_err(|e| fail(format!("matrix(): {e}")))?;
            if dequantize(&m).len() as u64 != t.numel() {
                return Err(fail("dequantized size".into()));
            }
            if let Some(l) = lorc_dense(&m) {
                if l.len() as u64 != t.numel() {
                    return Err(fail("LoRC product size".into()));
                }
            }
        } else if t.scheme.is_quantized() || t.lorc_rank > 0 {
            return Err(fail(format!("{} tensor of rank {}", t.scheme.label(), t.shape.len())));
        }
        if matches!(t.scheme, Scheme::F32 | Scheme::F16) {
            let v = pak.tensor_f32(&t.name).map_err(|e| fail(format!("tensor_f32(): {e}")))?;
            if v.len() as u64 != t.numel() {
                return Err(fail("tensor_f32 size".into()));
            }
        }
        if t.bitswitch_master {
            for bits in [4, 2] {
                match pak.matrix_at_bits(&t.name, Some(bits)) {
                    Ok(m) => {
                        dequantize(&m.view());
                    }
                    // A (damaged) scale that overflows f16 once shifted.
                    Err(Error::InvalidQuantization { .. }) => {}
                    Err(e) => return Err(fail(format!("matrix_at_bits({bits}): {e}"))),
                }
            }
        }
        tensors.push(TensorSnapshot {
            name: t.name.clone(),
            scheme: t.scheme,
            shape: t.shape.clone(),
            lorc_rank: t.lorc_rank,
            bitswitch_master: t.bitswitch_master,
            components,
        });
    }
    Ok(Decoded { metadata, tensors })
}

// ---------------------------------------------------------------------------------------------
// Re-computing checksums on damaged bytes (never panics, whatever the bytes).
// ---------------------------------------------------------------------------------------------

fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// `[offset, offset + len)` if it lies inside `b`.
fn span(b: &[u8], offset: u64, len: u64) -> Option<Range<usize>> {
    let end = offset.checked_add(len).filter(|&e| e <= b.len() as u64)?;
    Some(offset as usize..end as usize)
}

/// The section table as (entry position, kind, offset, length), as far as it is in the file.
fn table(b: &[u8]) -> Vec<(usize, u32, u64, u64)> {
    if b.len() < format::HEADER_LEN {
        return Vec::new();
    }
    let count = (rd_u32(b, 24) as usize).min(format::MAX_SECTIONS as usize);
    (0..count)
        .map(|i| format::HEADER_LEN + format::SECTION_ENTRY_LEN * i)
        .take_while(|&e| e + format::SECTION_ENTRY_LEN <= b.len())
        .map(|e| (e, rd_u32(b, e), rd_u64(b, e + 8), rd_u64(b, e + 16)))
        .collect()
}

/// Section checksums, then the header checksum.
fn fix_crcs(b: &mut [u8]) {
    let entries = table(b);
    for &(e, _, offset, len) in &entries {
        if let Some(r) = span(b, offset, len) {
            let crc = format::crc32(&b[r]);
            b[e + 4..e + 8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    if b.len() >= format::HEADER_LEN {
        let end = (format::HEADER_LEN + format::SECTION_ENTRY_LEN * (rd_u32(b, 24) as usize).min(16)).min(b.len());
        let crc = format::header_crc(&b[..end]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Component checksums of every record that can be walked, then `fix_crcs`.
fn fix_all_crcs(b: &mut [u8]) {
    let tensors = table(b).into_iter().find(|&(_, kind, _, _)| kind == 2).and_then(|(_, _, o, l)| span(b, o, l));
    if let Some(sec) = tensors {
        let mut updates = Vec::new();
        let get = |pos: usize, n: usize| (pos + n <= sec.end).then(|| &b[pos..pos + n]);
        let mut pos = sec.start;
        let count = get(pos, 4).map_or(0, |x| u32::from_le_bytes(x.try_into().unwrap()));
        pos += 8;
        'records: for _ in 0..count.min(1 << 16) {
            let Some(x) = get(pos, 2) else { break };
            let at = pos + 2 + u16::from_le_bytes(x.try_into().unwrap()) as usize;
            let Some(h) = get(at, 12) else { break };
            let (rank, ncomp) = (h[1] as usize, h[3] as usize);
            pos = at + 12 + 8 * rank;
            for _ in 0..ncomp {
                let Some(c) = get(pos, 24) else { break 'records };
                let (offset, len) = (
                    u64::from_le_bytes(c[8..16].try_into().unwrap()),
                    u64::from_le_bytes(c[16..24].try_into().unwrap()),
                );
                if let Some(r) = span(b, offset, len) {
                    updates.push((pos + 4, format::crc32(&b[r])));
                }
                pos += 24;
            }
        }
        for (at, crc) in updates {
            b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
    fix_crcs(b);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fix {
    /// Checksums as they are after the mutation.
    None,
    /// Section and header checksums re-computed.
    Sections,
    /// Component, section and header checksums re-computed.
    All,
}

fn apply_fix(b: &mut [u8], fix: Fix) {
    match fix {
        Fix::None => {}
        Fix::Sections => fix_crcs(b),
        Fix::All => fix_all_crcs(b),
    }
}

// ---------------------------------------------------------------------------------------------
// Opening damaged bytes under guard, and the oracle.
// ---------------------------------------------------------------------------------------------

enum Outcome {
    Rejected(Error, String),
    Opened(Result<Decoded, String>),
    Panicked(String),
}

struct Run {
    outcome: Outcome,
    largest_alloc: usize,
    total_alloc: usize,
    elapsed: Duration,
}

/// Opens `bytes` on a separate thread: a panic is caught, a hang is reported after
/// `PARSE_TIMEOUT` (the stuck thread is left behind), allocations during `from_bytes` are counted.
fn guarded_open(bytes: Vec<u8>) -> Result<Run, TestCaseError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let (opened, largest, total) = measure_allocs(|| Kpak::from_bytes(&bytes, Verify::Full));
            let outcome = match opened {
                Ok(pak) => Outcome::Opened(decode(&pak)),
                Err(e) => {
                    // The message is formatted here, under the panic guard.
                    let message = e.to_string();
                    Outcome::Rejected(e, message)
                }
            };
            (outcome, largest, total)
        }));
        let (outcome, largest_alloc, total_alloc) = match result {
            Ok(r) => r,
            Err(p) => {
                let msg =
                    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                (Outcome::Panicked(msg.unwrap_or_default()), 0, 0)
            }
        };
        let _ = tx.send(Run { outcome, largest_alloc, total_alloc, elapsed: start.elapsed() });
    });
    rx.recv_timeout(PARSE_TIMEOUT)
        .map_err(|_| TestCaseError::fail(format!("opening the file did not finish within {PARSE_TIMEOUT:?}")))
}

fn touches(mutated: &[Range<usize>], section: &Range<usize>) -> bool {
    mutated.iter().any(|m| m.start < section.end && section.start < m.end)
}

/// Opens the damaged `bytes` and checks the outcome against the original. `mutated`: the byte
/// ranges the mutation wrote (before any checksum was re-computed).
fn check(bytes: Vec<u8>, mutated: &[Range<usize>], fix: Fix) -> Result<(), TestCaseError> {
    let o = original();
    let len = bytes.len();
    let run = guarded_open(bytes)?;
    prop_assert!(run.elapsed < Duration::from_secs(2), "opening took {:?}", run.elapsed);
    // The file copy, plus at most a few times the file for the tables: nothing proportional to a
    // count the file cannot back.
    // The copy of the file is the largest allocation (which also shows the counter works).
    let copy = len.div_ceil(8) * 8;
    prop_assert!(
        matches!(run.outcome, Outcome::Panicked(_)) || (copy..=copy + 65536).contains(&run.largest_alloc),
        "largest allocation {} for a {len}-byte file",
        run.largest_alloc
    );
    prop_assert!(run.total_alloc <= 16 * len + (1 << 20), "allocated {} bytes for a {len}-byte file", run.total_alloc);
    let decoded = match run.outcome {
        Outcome::Panicked(msg) => return Err(TestCaseError::fail(format!("the reader panicked: {msg}"))),
        Outcome::Rejected(e, message) => {
            // In-memory parsing never does I/O; every message names something.
            prop_assert!(!matches!(e, Error::Io { .. }) && !message.is_empty(), "{e:?}");
            return Ok(());
        }
        Outcome::Opened(Err(e)) => return Err(TestCaseError::fail(format!("opened, but inconsistent: {e}"))),
        Outcome::Opened(Ok(d)) => d,
    };
    let orig = &o.decoded;
    if fix == Fix::None || !touches(mutated, &o.meta) {
        prop_assert_eq!(&decoded.metadata, &orig.metadata, "metadata changed");
    }
    match fix {
        Fix::None => prop_assert_eq!(&decoded.tensors, &orig.tensors, "tensors changed"),
        Fix::Sections if !touches(mutated, &o.tensors) => {
            prop_assert_eq!(&decoded.tensors, &orig.tensors, "tensors changed")
        }
        Fix::Sections => {
            // Component checksums were not re-computed: every component must be an original one.
            for t in &decoded.tensors {
                for c in &t.components {
                    let known = orig.tensors.iter().flat_map(|t| &t.components).any(|oc| oc == c);
                    prop_assert!(known, "tensor '{}' component {:?} is not an original component", t.name, c.kind);
                }
            }
        }
        Fix::All if !touches(mutated, &o.tensors) => {
            let records: Vec<_> = decoded.tensors.iter().map(TensorSnapshot::record).collect();
            let want: Vec<_> = orig.tensors.iter().map(TensorSnapshot::record).collect();
            prop_assert_eq!(records, want, "tensor records changed");
        }
        Fix::All => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mutations.
// ---------------------------------------------------------------------------------------------

fn file_len() -> usize {
    original().bytes.len()
}

/// End of the structure (header, table, META, TENSORS): where the DATA section starts.
fn structure_end() -> usize {
    original().tensors.end
}

/// A value to write into a field; resolved against the file and the field's old value.
#[derive(Clone, Copy, Debug)]
enum Value {
    Literal(u64),
    FileLen,
    /// The old value plus this (wrapping).
    Delta(i64),
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Literal(0)),
        Just(Value::Literal(1)),
        Just(Value::Literal(u32::MAX as u64)),
        Just(Value::Literal(u64::MAX)),
        Just(Value::FileLen),
        prop_oneof![Just(-256i64), Just(-8), Just(-1), Just(1), Just(4), Just(8), Just(256)].prop_map(Value::Delta),
        (0u64..=300).prop_map(Value::Literal),
        any::<u64>().prop_map(Value::Literal),
    ]
}

/// Writes `value` into the `width`-byte little-endian field at `at` (low bytes of the value).
fn overwrite(b: &mut [u8], at: usize, width: usize, value: Value) -> Range<usize> {
    let mut old = [0u8; 8];
    old[..width].copy_from_slice(&b[at..at + width]);
    let v = match value {
        Value::Literal(v) => v,
        Value::FileLen => b.len() as u64,
        Value::Delta(d) => u64::from_le_bytes(old).wrapping_add(d as u64),
    };
    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
    at..at + width
}

fn flip_all(flips: &[(usize, u8)]) -> (Vec<u8>, Vec<Range<usize>>) {
    let mut b = original().bytes.clone();
    for &(at, mask) in flips {
        b[at] ^= mask;
    }
    (b, flips.iter().map(|&(at, _)| at..at + 1).collect())
}

fn config() -> ProptestConfig {
    // No regression files written into the tree; failures print the minimal case.
    ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(1024) }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn byte_flips(flips in prop::collection::vec((0..file_len(), 1u8..=255), 1..=4)) {
        let (b, mutated) = flip_all(&flips);
        check(b, &mutated, Fix::None)?;
    }

    #[test]
    fn byte_flips_with_checksums_fixed(flips in prop::collection::vec((0..file_len(), 1u8..=255), 1..=4)) {
        let (mut b, mutated) = flip_all(&flips);
        apply_fix(&mut b, Fix::Sections);
        check(b, &mutated, Fix::Sections)?;
    }

    #[test]
    fn structure_flips_with_checksums_fixed(
        flips in prop::collection::vec((0..structure_end(), 1u8..=255), 1..=3),
        all in any::<bool>(),
    ) {
        let fix = if all { Fix::All } else { Fix::Sections };
        let (mut b, mutated) = flip_all(&flips);
        apply_fix(&mut b, fix);
        check(b, &mutated, fix)?;
    }

    #[test]
    fn truncation(len in 0..file_len()) {
        let b = original().bytes[..len].to_vec();
        let cut = len..file_len();
        check(b, std::slice::from_ref(&cut), Fix::None)?;
    }

    #[test]
    fn truncation_with_length_and_checksums_fixed(len in 64..file_len()) {
        // The header agrees with the new length, so the section bounds are what must catch it.
        let mut b = original().bytes[..len].to_vec();
        b[16..24].copy_from_slice(&(len as u64).to_le_bytes());
        apply_fix(&mut b, Fix::All);
        let run = guarded_open(b)?;
        prop_assert!(matches!(run.outcome, Outcome::Rejected(..)), "a truncated file opened");
    }

    #[test]
    fn aligned_word_overwrites(word in 0..file_len() / 4, wide in any::<bool>(), v in value(), fix in 0u8..3) {
        let fix = [Fix::None, Fix::Sections, Fix::All][fix as usize];
        let (at, width) = if wide { ((word * 4) & !7, 8) } else { (word * 4, 4) };
        let mut b = original().bytes.clone();
        let mutated = overwrite(&mut b, at, width, v);
        apply_fix(&mut b, fix);
        check(b, &[mutated], fix)?;
    }

    #[test]
    fn aligned_structure_overwrites_with_checksums_fixed(word in 0..structure_end() / 4, wide in any::<bool>(), v in value()) {
        let (at, width) = if wide { ((word * 4) & !7, 8) } else { (word * 4, 4) };
        let mut b = original().bytes.clone();
        let mutated = overwrite(&mut b, at, width, v);
        apply_fix(&mut b, Fix::Sections);
        check(b, &[mutated], Fix::Sections)?;
    }

    #[test]
    fn field_overwrites(field in 0..original().fields.len(), v in value()) {
        let (at, width) = original().fields[field];
        let mut b = original().bytes.clone();
        let mutated = overwrite(&mut b, at, width, v);
        check(b, &[mutated], Fix::None)?;
    }

    #[test]
    fn field_overwrites_with_checksums_fixed(
        fields in prop::collection::vec((0..original().fields.len(), value()), 1..=2),
        all in any::<bool>(),
    ) {
        let fix = if all { Fix::All } else { Fix::Sections };
        let mut b = original().bytes.clone();
        let mutated: Vec<_> = fields.iter().map(|&(f, v)| {
            let (at, width) = original().fields[f];
            overwrite(&mut b, at, width, v)
        }).collect();
        apply_fix(&mut b, fix);
        check(b, &mutated, fix)?;
    }
}

#[test]
fn the_oracle_accepts_the_original_and_its_fixups() {
    let o = original();
    assert!(o.fields.len() > 60);
    assert_eq!(o.table, 0..160);
    for fix in [Fix::None, Fix::Sections, Fix::All] {
        let mut b = o.bytes.clone();
        apply_fix(&mut b, fix);
        assert_eq!(b, o.bytes, "{fix:?} changes a valid file");
        check(b, &[], fix).unwrap();
    }
    // A flip in the padding before DATA is covered by no checksum, so the reader requires zeros.
    let gap = o.tensors.end;
    assert!(!gap.is_multiple_of(256));
    let (b, mutated) = flip_all(&[(gap, 0xFF)]);
    let run = guarded_open(b.clone()).unwrap();
    assert!(
        matches!(run.outcome, Outcome::Rejected(Error::Malformed { section: "padding", offset, .. }, _) if offset == gap as u64)
    );
    check(b, &mutated, Fix::None).unwrap();
}

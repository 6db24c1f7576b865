//! What the fuzz targets run, one function per untrusted input kestrel reads.
//!
//! The targets in `fuzz/` are one-line wrappers around these, and `tests/fuzz_corpus.rs` runs
//! the committed seed corpus and every crash ever found (`fuzz/regressions/`) through the same
//! functions under `cargo test`, so a fixed crash stays fixed without a fuzzer installed.
//!
//! Each function returns whether the input was accepted (the corpus test checks that every
//! target's seeds include accepted inputs, so the fuzzer starts from real structure), and must
//! return normally for every input: a typed error is the expected outcome
//! for garbage, and a panic (or an abort from an allocation the input asked for) is the bug the
//! fuzzer hunts. Where an input parses, the function also uses what came out (decodes every
//! tensor, plans the graph, writes the labels back and reads them again) so that a reader which
//! accepts something it cannot back is caught too.

use std::path::Path;

use crate::board::Board;
use crate::format::{self, Kpak, Verify};
use crate::vision::annotations::Annotation;

/// Tensors larger than this are not decoded in full: the fuzzer's time goes to the structure.
const MAX_DECODE_ELEMENTS: u64 = 1 << 20;

/// The .kpak reader. The first byte picks the mode: bit 0 re-computes the section and header
/// checksums over the rest (so mutations reach the structural checks instead of stopping at a
/// checksum), bit 1 opens with `Verify::Structure` instead of `Verify::Full`.
pub fn kpak(data: &[u8]) -> bool {
    let Some((&mode, file)) = data.split_first() else { return false };
    let mut bytes = file.to_vec();
    if mode & 1 != 0 {
        repair_checksums(&mut bytes);
    }
    let verify = if mode & 2 != 0 { Verify::Structure } else { Verify::Full };
    let Ok(pak) = Kpak::from_bytes(&bytes, verify) else { return false };
    for t in pak.tensors() {
        if t.numel() > MAX_DECODE_ELEMENTS {
            continue;
        }
        let _ = pak.tensor_f32(&t.name);
        for bits in [None, Some(4), Some(2)] {
            if let Ok(m) = pak.matrix_at_bits(&t.name, bits) {
                std::hint::black_box(&m);
            }
        }
    }
    if let Some(g) = pak.graph() {
        std::hint::black_box(crate::graph::plan::plan_activation_memory(g));
    }
    true
}

/// Makes the section table's and the header's CRC-32s match the bytes (as a writer would).
fn repair_checksums(b: &mut [u8]) {
    let le_u32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let le_u64 = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    if b.len() < format::HEADER_LEN {
        return;
    }
    let count = (le_u32(b, 24) as usize).min(format::MAX_SECTIONS as usize);
    let table_end = format::HEADER_LEN + format::SECTION_ENTRY_LEN * count;
    if table_end > b.len() {
        return;
    }
    for i in 0..count {
        let entry = format::HEADER_LEN + format::SECTION_ENTRY_LEN * i;
        let (offset, len) = (le_u64(b, entry + 8), le_u64(b, entry + 16));
        let Some(end) = offset.checked_add(len).filter(|&e| e <= b.len() as u64) else { continue };
        let crc = format::crc32(&b[offset as usize..end as usize]);
        b[entry + 4..entry + 8].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = format::header_crc(&b[..table_end]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// The ONNX importer: protobuf decoding, then lowering to kestrel's graph and planning its
/// activation memory.
pub fn onnx(data: &[u8]) -> bool {
    let Ok(model) = crate::import::onnx::Model::decode(data) else { return false };
    let Ok(graph) = crate::graph::onnx::import(&model) else { return false };
    std::hint::black_box(crate::graph::plan::plan_activation_memory(&graph));
    true
}

/// Pascal VOC XML labels. What parses must survive a write and a second read unchanged in
/// count and classes.
pub fn voc(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let path = Path::new("fuzz.xml");
    let Ok(ann) = Annotation::from_voc(text, path) else { return false };
    let again = Annotation::from_voc(&ann.to_voc(), path)
        .unwrap_or_else(|e| panic!("kestrel's own VOC output does not parse: {e}"));
    assert_eq!(classes(&ann), classes(&again), "VOC round trip changed the labels");
    true
}

/// YOLO txt labels: the first four bytes are the image's width and height (u16 each, as the
/// loader gets them from the image), the rest the file.
pub fn yolo(data: &[u8]) -> bool {
    if data.len() < 4 {
        return false;
    }
    let width = u16::from_le_bytes([data[0], data[1]]) as usize;
    let height = u16::from_le_bytes([data[2], data[3]]) as usize;
    let Ok(text) = std::str::from_utf8(&data[4..]) else { return false };
    let names: Vec<String> = ["person", "car", "bicycle"].map(String::from).into();
    let path = Path::new("fuzz.txt");
    let Ok(ann) = Annotation::from_yolo(text, path, width, height, &names) else { return false };
    let Ok(written) = ann.to_yolo(&names) else { return true };
    let again = Annotation::from_yolo(&written, path, width, height, &names)
        .unwrap_or_else(|e| panic!("kestrel's own YOLO output does not parse: {e}"));
    assert_eq!(classes(&ann), classes(&again), "YOLO round trip changed the labels");
    true
}

fn classes(a: &Annotation) -> Vec<&str> {
    a.labels.iter().map(|l| l.class.as_str()).collect()
}

/// Board profiles (TOML): what parses must answer every question the loop and bundler ask.
pub fn board(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let Ok(board) = Board::parse(text, "fuzz.toml") else { return false };
    std::hint::black_box((board.power_mode(), board.uses_gpu()));
    true
}

//! The `.kpak` container: one little-endian file holding a model's metadata, tensor table and
//! 256-byte-aligned tensor data, each part checksummed. docs/FORMAT.md is the specification; the
//! constants below are its numbers.
//!
//! ```text
//! 0      header (64 bytes): magic, version, header CRC, file length, section count
//! 64     section table: 32 bytes per section (kind, CRC, offset, length)
//! ...    META section: key/value strings
//! ...    TENSORS section: one record per tensor (name, format, shape, components)
//! 256*k  DATA section: every tensor component on a 256-byte boundary
//! ```

mod reader;
mod writer;

pub use reader::{header_crc, Component, Kpak, LoadedMatrix, SectionInfo, TensorInfo, Verify};
pub use writer::KpakWriter;

/// First eight bytes of every .kpak file. The high byte and the CR LF / ^Z catch text-mode copies
/// and truncating transfers, as PNG's signature does.
pub const MAGIC: [u8; 8] = *b"\x89KPAK\r\n\x1a";
/// Readers accept files of this major version and any minor version.
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 0;

pub const HEADER_LEN: usize = 64;
pub const SECTION_ENTRY_LEN: usize = 32;
/// The header checksum field: bytes 12..16. The checksum covers the header and the section
/// table except these four bytes.
pub const HEADER_CRC_FIELD: std::ops::Range<usize> = 12..16;
/// Every tensor component (and the DATA section) starts on this boundary, so it can be bound to
/// the GPU straight from the mapping (wgpu's storage-buffer offset alignment is at most 256).
pub const DATA_ALIGN: u64 = 256;
/// META and TENSORS sections start on this boundary.
pub const SECTION_ALIGN: u64 = 8;

/// Sane limits: a file exceeding any of these is rejected before anything is allocated for it.
pub const MAX_SECTIONS: u32 = 16;
pub const MAX_TENSORS: u32 = 1 << 20;
pub const MAX_META_ENTRIES: u32 = 1 << 16;
pub const MAX_NAME_LEN: usize = 1024;
pub const MAX_META_VALUE_LEN: usize = 16 << 20;
pub const MAX_RANK: usize = 8;
pub const MAX_DIM: u64 = 1 << 32;
/// Elements of one tensor (the product of its dimensions).
pub const MAX_ELEMENTS: u64 = 1 << 40;
pub const MAX_COMPONENTS: usize = 8;

/// Tensor record flag bits.
pub const FLAG_SYMMETRIC: u8 = 1 << 0;
pub const FLAG_BITSWITCH_MASTER: u8 = 1 << 1;
pub const FLAG_FP4_SCALE_F16: u8 = 1 << 2;
pub const KNOWN_FLAGS: u8 = FLAG_SYMMETRIC | FLAG_BITSWITCH_MASTER | FLAG_FP4_SCALE_F16;

/// Section kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum SectionKind {
    Meta = 1,
    Tensors = 2,
    Data = 3,
    /// Optional: the model's graph (section 7a of docs/FORMAT.md).
    Graph = 4,
}

impl SectionKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Meta),
            2 => Some(Self::Tensors),
            3 => Some(Self::Data),
            4 => Some(Self::Graph),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Meta => "META",
            Self::Tensors => "TENSORS",
            Self::Data => "DATA",
            Self::Graph => "GRAPH",
        }
    }
}

/// CRC-32 (ISO-HDLC, the one zlib and PNG use) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Writes `bytes` to `path` through a temporary file beside it and a rename: a crash leaves the
/// old file or the new one, never half of one (models, calibrations, bundles).
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> crate::error::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        crate::error::Error::io(path, e)
    })
}

//! Writes .kpak files. The writer lays every component out exactly as the shaders read it, on a
//! 256-byte boundary, and computes every checksum; a file it writes always passes full
//! verification.

use std::path::Path;

use super::*;
use crate::error::{Error, Result};
use crate::tensor::{ComponentKind, Fp4Scale, PackedMatrix, Scheme};

struct PendingTensor {
    name: String,
    scheme: Scheme,
    shape: Vec<u64>,
    flags: u8,
    lorc_rank: u32,
    components: Vec<(ComponentKind, Vec<u32>)>,
}

/// Builds a .kpak file in memory, then writes it atomically.
#[derive(Default)]
pub struct KpakWriter {
    metadata: Vec<(String, String)>,
    tensors: Vec<PendingTensor>,
    graph: Option<Vec<u8>>,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl KpakWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer holding everything `pak` holds: its metadata, every tensor byte for byte, and
    /// its graph. For rewriting a model with changed metadata (calibration results).
    pub fn from_kpak(pak: &super::reader::Kpak) -> Self {
        let tensors = pak
            .tensors()
            .iter()
            .map(|t| {
                let mut flags = 0;
                match t.scheme {
                    Scheme::Q4 { symmetric: true, .. } => flags |= FLAG_SYMMETRIC,
                    Scheme::Fp4 { scale: Fp4Scale::F16, .. } => flags |= FLAG_FP4_SCALE_F16,
                    _ => {}
                }
                if t.bitswitch_master {
                    flags |= FLAG_BITSWITCH_MASTER;
                }
                PendingTensor {
                    name: t.name.clone(),
                    scheme: t.scheme,
                    shape: t.shape.clone(),
                    flags,
                    lorc_rank: t.lorc_rank as u32,
                    components: t
                        .components
                        .iter()
                        .map(|c| (c.kind, bytemuck::pod_collect_to_vec::<u8, u32>(pak.component_bytes(c))))
                        .collect(),
                }
            })
            .collect();
        let graph = pak
            .sections()
            .iter()
            .find(|s| s.kind == SectionKind::Graph)
            .map(|s| pak.bytes()[s.offset as usize..(s.offset + s.len) as usize].to_vec());
        KpakWriter { metadata: pak.metadata().to_vec(), tensors, graph }
    }

    /// Sets metadata entry `key`, replacing its value if it has one.
    pub fn set_metadata(&mut self, key: &str, value: &str) -> Result<&mut Self> {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata(key, value)
    }

    /// Adds one metadata entry. Keys are unique.
    pub fn metadata(&mut self, key: &str, value: &str) -> Result<&mut Self> {
        if key.is_empty() || key.len() > MAX_NAME_LEN {
            return Err(Error::InvalidArgument {
                reason: format!("metadata key '{key}' must be 1..={MAX_NAME_LEN} bytes"),
            });
        }
        if value.len() > MAX_META_VALUE_LEN {
            return Err(Error::LimitExceeded {
                what: "metadata value length",
                value: value.len() as u64,
                limit: MAX_META_VALUE_LEN as u64,
            });
        }
        if self.metadata.iter().any(|(k, _)| k == key) {
            return Err(Error::DuplicateMetadata { key: key.to_string() });
        }
        self.metadata.push((key.to_string(), value.to_string()));
        Ok(self)
    }

    fn push(&mut self, t: PendingTensor) -> Result<()> {
        if t.name.is_empty() || t.name.len() > MAX_NAME_LEN {
            return Err(Error::InvalidArgument {
                reason: format!("tensor name '{}' must be 1..={MAX_NAME_LEN} bytes", t.name),
            });
        }
        if self.tensors.iter().any(|p| p.name == t.name) {
            return Err(Error::DuplicateTensor { name: t.name });
        }
        if self.tensors.len() >= MAX_TENSORS as usize {
            return Err(Error::LimitExceeded {
                what: "tensor count",
                value: self.tensors.len() as u64 + 1,
                limit: MAX_TENSORS as u64,
            });
        }
        self.tensors.push(t);
        Ok(())
    }

    /// Adds a packed [n, k] weight matrix (any format, with its LoRC factors if present).
    pub fn add_matrix(&mut self, name: &str, m: &PackedMatrix) -> Result<&mut Self> {
        // Re-check every length: a writer must never produce a file its reader rejects.
        crate::tensor::MatrixView::new(m.n, m.k, m.scheme, &m.main, &m.aux, m.view().lorc)?;
        let mut flags = 0;
        let mut components = vec![(m.scheme.components()[0], m.main.clone())];
        if let Some(&aux_kind) = m.scheme.components().get(1) {
            components.push((aux_kind, m.aux.clone()));
        }
        match m.scheme {
            Scheme::Q4 { symmetric: true, .. } => flags |= FLAG_SYMMETRIC,
            Scheme::Fp4 { scale: Fp4Scale::F16, .. } => flags |= FLAG_FP4_SCALE_F16,
            Scheme::Q8 if m.bitswitch_master => flags |= FLAG_BITSWITCH_MASTER,
            _ => {}
        }
        if m.bitswitch_master && m.scheme != Scheme::Q8 {
            return Err(Error::invalid_tensor(name, "only q8 matrices can be bit-switching masters"));
        }
        let mut lorc_rank = 0;
        if let Some(l) = &m.lorc {
            if l.rank == 0 || l.rank > crate::quant::MAX_LORC_RANK {
                return Err(Error::invalid_tensor(
                    name,
                    format!("LoRC rank {} outside 1..={}", l.rank, crate::quant::MAX_LORC_RANK),
                ));
            }
            lorc_rank = l.rank as u32;
            components.push((ComponentKind::LorcU, l.u.clone()));
            components.push((ComponentKind::LorcV, l.v.clone()));
        }
        self.push(PendingTensor {
            name: name.to_string(),
            scheme: m.scheme,
            shape: vec![m.n as u64, m.k as u64],
            flags,
            lorc_rank,
            components,
        })?;
        Ok(self)
    }

    /// Replaces the stored matrix `name` with `m` (a different precision of the same weights).
    pub fn replace_matrix(&mut self, name: &str, m: &PackedMatrix) -> Result<&mut Self> {
        let at = self
            .tensors
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| Error::TensorNotFound { name: name.into() })?;
        let old = self.tensors.remove(at);
        if let Err(e) = self.add_matrix(name, m) {
            self.tensors.insert(at, old);
            return Err(e);
        }
        // Keep the table's order: the new entry goes where the old one was.
        let new = self.tensors.pop().expect("add_matrix pushed it");
        self.tensors.insert(at, new);
        Ok(self)
    }

    /// Sets the model's graph. Its f32 constants must be added as tensors of the same names.
    pub fn graph(&mut self, g: &crate::graph::Graph) -> Result<&mut Self> {
        self.graph = Some(crate::graph::codec::encode(g)?);
        Ok(self)
    }

    /// Adds an f32 tensor of any rank (biases, norms, ...).
    pub fn add_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<&mut Self> {
        self.check_plain(name, shape, data.len())?;
        self.push(PendingTensor {
            name: name.to_string(),
            scheme: Scheme::F32,
            shape: shape.iter().map(|&d| d as u64).collect(),
            flags: 0,
            lorc_rank: 0,
            components: vec![(ComponentKind::Data, data.iter().map(|v| v.to_bits()).collect())],
        })?;
        Ok(self)
    }

    /// Adds an f16 tensor of any rank; rows of the last dimension are padded to whole words.
    pub fn add_f16(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<&mut Self> {
        self.check_plain(name, shape, data.len())?;
        let k = shape.last().copied().unwrap_or(1);
        self.push(PendingTensor {
            name: name.to_string(),
            scheme: Scheme::F16,
            shape: shape.iter().map(|&d| d as u64).collect(),
            flags: 0,
            lorc_rank: 0,
            components: vec![(ComponentKind::Data, crate::tensor::pack_f16_rows(data, k))],
        })?;
        Ok(self)
    }

    fn check_plain(&self, name: &str, shape: &[usize], len: usize) -> Result<()> {
        if shape.len() > MAX_RANK || shape.iter().any(|&d| d == 0 || d as u64 > MAX_DIM) {
            return Err(Error::invalid_tensor(
                name,
                format!("shape {shape:?} must have rank <= {MAX_RANK} and dims in 1..={MAX_DIM}"),
            ));
        }
        let numel: usize = shape.iter().product();
        if numel != len {
            return Err(Error::shape("add tensor", format!("{numel} values for shape {shape:?}"), len));
        }
        Ok(())
    }

    /// Serialises the whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let section_count = 3 + usize::from(self.graph.is_some());
        let table_end = (HEADER_LEN + SECTION_ENTRY_LEN * section_count) as u64;

        let mut meta = Vec::new();
        meta.extend_from_slice(&(self.metadata.len() as u32).to_le_bytes());
        for (k, v) in &self.metadata {
            meta.extend_from_slice(&(k.len() as u32).to_le_bytes());
            meta.extend_from_slice(&(v.len() as u32).to_le_bytes());
            meta.extend_from_slice(k.as_bytes());
            meta.extend_from_slice(v.as_bytes());
        }

        let meta_off = align_up(table_end, SECTION_ALIGN);
        // Data offsets depend on the tensor table's size, which does not depend on the offsets.
        let table_len = 8 + self
            .tensors
            .iter()
            .map(|t| 2 + t.name.len() + 12 + 8 * t.shape.len() + 24 * t.components.len())
            .sum::<usize>() as u64;
        let tensors_off = align_up(meta_off + meta.len() as u64, SECTION_ALIGN);
        let graph = self.graph.as_deref().unwrap_or(&[]);
        let graph_off = align_up(tensors_off + table_len, SECTION_ALIGN);
        let data_off = align_up(graph_off + graph.len() as u64, DATA_ALIGN);

        let mut data = Vec::new();
        let mut table = Vec::with_capacity(table_len as usize);
        table.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
        for t in &self.tensors {
            table.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
            table.extend_from_slice(t.name.as_bytes());
            table.push(t.scheme.code() as u8);
            table.push(t.shape.len() as u8);
            table.push(t.flags);
            table.push(t.components.len() as u8);
            table.extend_from_slice(&(t.scheme.group().unwrap_or(0) as u32).to_le_bytes());
            table.extend_from_slice(&t.lorc_rank.to_le_bytes());
            for d in &t.shape {
                table.extend_from_slice(&d.to_le_bytes());
            }
            for (kind, words) in &t.components {
                let bytes: &[u8] = bytemuck::cast_slice(words);
                data.resize(align_up(data.len() as u64, DATA_ALIGN) as usize, 0);
                let offset = data_off + data.len() as u64;
                data.extend_from_slice(bytes);
                table.push(*kind as u8);
                table.extend_from_slice(&[0, 0, 0]);
                table.extend_from_slice(&crc32(bytes).to_le_bytes());
                table.extend_from_slice(&offset.to_le_bytes());
                table.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            }
        }
        debug_assert_eq!(table.len() as u64, table_len);
        data.resize(align_up(data.len() as u64, DATA_ALIGN) as usize, 0);

        let file_len = data_off + data.len() as u64;
        let mut out = vec![0u8; data_off as usize];
        out[meta_off as usize..meta_off as usize + meta.len()].copy_from_slice(&meta);
        out[tensors_off as usize..tensors_off as usize + table.len()].copy_from_slice(&table);
        out[graph_off as usize..graph_off as usize + graph.len()].copy_from_slice(graph);
        out.extend_from_slice(&data);

        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        out[10..12].copy_from_slice(&VERSION_MINOR.to_le_bytes());
        out[16..24].copy_from_slice(&file_len.to_le_bytes());
        out[24..28].copy_from_slice(&(section_count as u32).to_le_bytes());
        let mut sections = vec![
            (SectionKind::Meta, meta_off, meta.len() as u64),
            (SectionKind::Tensors, tensors_off, table.len() as u64),
        ];
        if self.graph.is_some() {
            sections.push((SectionKind::Graph, graph_off, graph.len() as u64));
        }
        sections.push((SectionKind::Data, data_off, data.len() as u64));
        for (i, (kind, off, len)) in sections.into_iter().enumerate() {
            let e = HEADER_LEN + i * SECTION_ENTRY_LEN;
            let crc = crc32(&out[off as usize..(off + len) as usize]);
            out[e..e + 4].copy_from_slice(&(kind as u32).to_le_bytes());
            out[e + 4..e + 8].copy_from_slice(&crc.to_le_bytes());
            out[e + 8..e + 16].copy_from_slice(&off.to_le_bytes());
            out[e + 16..e + 24].copy_from_slice(&len.to_le_bytes());
        }
        let header_crc = super::reader::header_crc(&out[..table_end as usize]);
        out[12..16].copy_from_slice(&header_crc.to_le_bytes());
        out
    }

    /// Writes the file atomically: to a temporary file beside `path`, synced, then renamed over
    /// it, so a crash never leaves a half-written model.
    pub fn write(&self, path: &Path) -> Result<()> {
        super::write_atomic(path, &self.to_bytes())
    }
}

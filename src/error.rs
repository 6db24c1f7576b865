//! The one error type of the crate.
//!
//! Every failure a user can cause (a damaged file, a wrong shape, a missing GPU) maps to a variant
//! with structured fields, so the message names the problem and code can match on it.

use std::path::PathBuf;

/// Result alias used throughout kestrel.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in kestrel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- .kpak container ----
    #[error("bad magic: not a .kpak file (first bytes {found:02x?})")]
    BadMagic { found: Vec<u8> },

    #[error("unsupported .kpak version {major}.{minor} (this build reads version {supported}.x)")]
    UnsupportedVersion { major: u16, minor: u16, supported: u16 },

    #[error("file truncated at byte {file_len}: {what} needs bytes up to {needed}")]
    Truncated { what: String, needed: u64, file_len: u64 },

    #[error("header says the file is {declared} bytes long, but it is {actual}")]
    FileLengthMismatch { declared: u64, actual: u64 },

    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum { stored: u32, computed: u32 },

    #[error("checksum mismatch in section {section} (stored {stored:#010x}, computed {computed:#010x})")]
    SectionChecksum { section: &'static str, stored: u32, computed: u32 },

    #[error("checksum mismatch in tensor '{tensor}' component {component} (stored {stored:#010x}, computed {computed:#010x})")]
    TensorChecksum { tensor: String, component: &'static str, stored: u32, computed: u32 },

    #[error("section {section} (bytes {offset}..{end}) lies outside the file ({file_len} bytes) or over the header")]
    SectionOutOfBounds { section: &'static str, offset: u64, end: u64, file_len: u64 },

    #[error("section {section} is not aligned to {align} bytes (offset {offset})")]
    SectionMisaligned { section: &'static str, offset: u64, align: u64 },

    #[error("sections {a} and {b} overlap")]
    SectionOverlap { a: &'static str, b: &'static str },

    #[error("section {section} appears more than once")]
    DuplicateSection { section: &'static str },

    #[error("required section {section} is missing")]
    MissingSection { section: &'static str },

    #[error("unknown section kind {kind}")]
    UnknownSection { kind: u32 },

    #[error("malformed {section} section at byte {offset}: {reason}")]
    Malformed { section: &'static str, offset: u64, reason: String },

    #[error("{what} is {value}, above the limit of {limit}")]
    LimitExceeded { what: &'static str, value: u64, limit: u64 },

    #[error("tensor '{tensor}' component {component} (bytes {offset}..{end}) lies outside the data section (bytes {data_start}..{data_end})")]
    TensorOutOfBounds { tensor: String, component: &'static str, offset: u64, end: u64, data_start: u64, data_end: u64 },

    #[error("tensor '{tensor}' component {component} at offset {offset} is not aligned to {align} bytes")]
    TensorMisaligned { tensor: String, component: &'static str, offset: u64, align: u64 },

    #[error("tensor data overlaps: '{a}' and '{b}'")]
    TensorOverlap { a: String, b: String },

    #[error("tensor '{tensor}' component {component} is {actual} bytes, but its shape and format need {expected}")]
    ComponentSize { tensor: String, component: &'static str, expected: u64, actual: u64 },

    #[error("tensor '{tensor}': {reason}")]
    InvalidTensor { tensor: String, reason: String },

    #[error("tensor '{tensor}' has unknown weight format code {code}")]
    UnknownFormat { tensor: String, code: u8 },

    #[error("tensor name '{name}' appears more than once")]
    DuplicateTensor { name: String },

    #[error("no tensor named '{name}'")]
    TensorNotFound { name: String },

    #[error("metadata key '{key}' appears more than once")]
    DuplicateMetadata { key: String },

    // ---- ONNX import ----
    #[error("malformed ONNX file at byte {offset}: {reason}")]
    OnnxParse { offset: u64, reason: String },

    #[error("ONNX tensor '{tensor}' {reason}")]
    OnnxTensor { tensor: String, reason: String },

    #[error("ONNX node '{node}' ({op}): {reason}")]
    OnnxNode { node: String, op: String, reason: String },

    #[error("unsupported ops ({count}): {ops}")]
    UnsupportedOps { count: usize, ops: String },

    // ---- graph ----
    #[error("node '{node}' ({op}): {reason}")]
    GraphNode { node: String, op: String, reason: String },

    // ---- numerics and kernels ----
    #[error("{op}: shape mismatch, expected {expected}, got {actual}")]
    ShapeMismatch { op: &'static str, expected: String, actual: String },

    #[error("invalid quantization request: {reason}")]
    InvalidQuantization { reason: String },

    #[error("unsupported: {what}")]
    Unsupported { what: String },

    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: String },

    // ---- GPU ----
    #[error("no usable GPU adapter: {reason}")]
    NoAdapter { reason: String },

    #[error("GPU device request failed: {reason}")]
    DeviceRequest { reason: String },

    #[error("GPU device lost: {reason}")]
    DeviceLost { reason: String },

    #[error("GPU out of memory while {what}")]
    GpuOutOfMemory { what: String },

    #[error("GPU validation error while {what}: {reason}")]
    GpuValidation { what: String, reason: String },

    // ---- images and datasets ----
    #[error("image {}: {reason}", path.display())]
    Image { path: PathBuf, reason: String },

    #[error("annotation {}: {reason}", path.display())]
    Annotation { path: PathBuf, reason: String },

    #[error("dataset {}: {reason}", path.display())]
    Dataset { path: PathBuf, reason: String },

    // ---- cameras ----
    /// A camera device that cannot be used or stopped delivering frames (`device` is its path).
    #[error("camera {device}: {reason}")]
    Camera { device: String, reason: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A fault of the GPU itself (lost device, exhausted memory, a rejected submission) rather
    /// than of the input: the controller answers it by moving perception to the CPU.
    pub fn is_device_fault(&self) -> bool {
        matches!(self, Error::DeviceLost { .. } | Error::GpuOutOfMemory { .. } | Error::GpuValidation { .. })
    }

    pub(crate) fn malformed(section: &'static str, offset: u64, reason: impl Into<String>) -> Self {
        Error::Malformed { section, offset, reason: reason.into() }
    }

    pub(crate) fn invalid_tensor(tensor: &str, reason: impl Into<String>) -> Self {
        Error::InvalidTensor { tensor: tensor.to_string(), reason: reason.into() }
    }

    pub(crate) fn shape(op: &'static str, expected: impl ToString, actual: impl ToString) -> Self {
        Error::ShapeMismatch { op, expected: expected.to_string(), actual: actual.to_string() }
    }
}

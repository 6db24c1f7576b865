//! Importers for models made elsewhere (host side): ONNX today. They read untrusted files, so
//! every length and count is checked against the input before use, as in the .kpak reader.

pub mod onnx;

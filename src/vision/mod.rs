//! Vision around the graph: images, paired RGB + infrared datasets (generated and real), and the
//! steps before and after a detector (preprocessing, box decoding, NMS, evaluation).
//!
//! - [`image`]: 8-bit frames and PNG files.
//! - [`annotations`]: VOC XML and YOLO txt ground truth.
//! - [`synth`]: generated street scenes, paired RGB + thermal, with boxes.
//! - [`dataset`]: the on-disk layouts (LLVIP, M3FD-style, DEYOLO YOLO txt) and their pairing.

pub mod annotations;
pub mod dataset;
pub mod image;
pub mod synth;

//! Vision around the graph: images, paired RGB + infrared datasets (generated and real), and the
//! steps before and after a detector (preprocessing, box decoding, NMS, evaluation).
//!
//! - [`image`]: 8-bit frames and PNG files.
//! - [`annotations`]: VOC XML and YOLO txt ground truth.
//! - [`synth`]: generated street scenes, paired RGB + thermal, with boxes.
//! - [`dataset`]: the on-disk layouts (LLVIP, M3FD-style, DEYOLO YOLO txt) and their pairing.
//! - [`preprocess`]: letterbox to the network input.
//! - [`detect`]: YOLOv8 head output to boxes (score filter, class-aware NMS).
//! - [`detector`]: a packed detector that takes frame pairs and returns boxes.
//! - [`eval`]: COCO-style mAP.
//! - [`annotate`]: the frames side by side with the boxes drawn.

pub mod annotate;
pub mod annotations;
pub mod dataset;
pub mod detect;
pub mod detector;
pub mod eval;
pub mod image;
pub mod preprocess;
pub mod synth;

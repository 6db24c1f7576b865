//! A YOLOv8 head's output to boxes: score filtering, class-aware NMS, and the map back to frame
//! pixels.
//!
//! The head output is [1, 4 + nc, N] (ultralytics' export, DFL and strides already applied in
//! the graph): rows 0..4 are cx, cy, w, h in letterboxed input pixels, rows 4.. the class
//! probabilities (sigmoid applied). Each of the N anchors proposes its best class, as
//! ultralytics' `non_max_suppression` does with `multi_label=False`.

use super::preprocess::Letterbox;

/// One detection in frame pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Detection {
    pub class_id: usize,
    pub score: f32,
    /// x1, y1, x2, y2.
    pub box_xyxy: [f32; 4],
    /// The head anchor that proposed it: its column of the head output holds every class's
    /// probability (the conformal prediction sets need them all, not just the best).
    pub anchor: usize,
}

/// Thresholds of [`decode`].
#[derive(Clone, Copy, Debug)]
pub struct DecodeOptions {
    /// Minimum class probability.
    pub score: f32,
    /// Boxes of one class overlapping a better one by more than this IoU are dropped.
    pub iou: f32,
    /// At most this many detections per image, best first.
    pub max_detections: usize,
}

impl Default for DecodeOptions {
    /// ultralytics' validation defaults (0.001 / 0.7 / 300) favour recall for mAP; a robot acting
    /// on boxes wants fewer, surer ones: `detect` uses 0.25 / 0.45.
    fn default() -> Self {
        DecodeOptions { score: 0.25, iou: 0.45, max_detections: 300 }
    }
}

/// Intersection over union of two xyxy boxes (0 for degenerate ones).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union =
        (a[2] - a[0]).max(0.0) * (a[3] - a[1]).max(0.0) + (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Decodes `output` ([4 + nc, n] row-major) into detections in frame pixels (clipped to the
/// `frame` size), best first. Non-finite values never become boxes.
pub fn decode(
    output: &[f32],
    nc: usize,
    n: usize,
    lb: &Letterbox,
    frame: (usize, usize),
    o: &DecodeOptions,
) -> Vec<Detection> {
    let mut out = Vec::new();
    decode_into(output, nc, n, lb, frame, o, &mut DecodeScratch::default(), &mut out);
    out
}

/// Candidate buffers for [`decode_into`]: once grown to the head's anchor count, decoding
/// allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct DecodeScratch {
    cands: Vec<Detection>,
    order: Vec<u32>,
}

impl DecodeScratch {
    /// Buffers for a head with `anchors` anchors: decoding never grows them.
    pub fn with_capacity(anchors: usize) -> DecodeScratch {
        DecodeScratch { cands: Vec::with_capacity(anchors), order: Vec::with_capacity(anchors) }
    }
}

/// [`decode`] into `out` (cleared first) through reusable buffers.
#[allow(clippy::too_many_arguments)]
pub fn decode_into(
    output: &[f32],
    nc: usize,
    n: usize,
    lb: &Letterbox,
    frame: (usize, usize),
    o: &DecodeOptions,
    scratch: &mut DecodeScratch,
    out: &mut Vec<Detection>,
) {
    assert_eq!(output.len(), (4 + nc) * n, "head output is [4 + nc, n]");
    let row = |r: usize| &output[r * n..(r + 1) * n];
    let cands = &mut scratch.cands;
    cands.clear();
    for a in 0..n {
        let (mut best, mut score) = (0, f32::NEG_INFINITY);
        for c in 0..nc {
            let s = row(4 + c)[a];
            if s > score {
                (best, score) = (c, s);
            }
        }
        if score.is_nan() || score < o.score {
            continue;
        }
        let (cx, cy, w, h) = (row(0)[a], row(1)[a], row(2)[a], row(3)[a]);
        if !(cx.is_finite() && cy.is_finite() && w.is_finite() && h.is_finite()) || w <= 0.0 || h <= 0.0 {
            continue;
        }
        let b = lb.unmap([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]);
        let (fw, fh) = (frame.0 as f32, frame.1 as f32);
        let b = [b[0].clamp(0.0, fw), b[1].clamp(0.0, fh), b[2].clamp(0.0, fw), b[3].clamp(0.0, fh)];
        cands.push(Detection { class_id: best, score, box_xyxy: b, anchor: a });
    }
    nms_into(cands, &mut scratch.order, o.iou, o.max_detections, out);
}

/// Greedy class-aware non-maximum suppression: best score first; a box is kept unless a kept box
/// of the same class overlaps it by more than `iou_threshold`.
pub fn nms(cands: Vec<Detection>, iou_threshold: f32, max_detections: usize) -> Vec<Detection> {
    let mut kept = Vec::new();
    nms_into(&cands, &mut Vec::new(), iou_threshold, max_detections, &mut kept);
    kept
}

/// [`nms`] into `kept` (cleared first). Ties in score keep the candidates' order, as a stable
/// sort would, but through an unstable sort of indices, which needs no buffer of its own.
fn nms_into(cands: &[Detection], order: &mut Vec<u32>, iou_threshold: f32, max: usize, kept: &mut Vec<Detection>) {
    order.clear();
    order.extend(0..cands.len() as u32);
    order.sort_unstable_by(|&a, &b| cands[b as usize].score.total_cmp(&cands[a as usize].score).then(a.cmp(&b)));
    kept.clear();
    for &i in order.iter() {
        if kept.len() >= max {
            break;
        }
        let d = &cands[i as usize];
        if kept.iter().all(|k| k.class_id != d.class_id || iou(&k.box_xyxy, &d.box_xyxy) <= iou_threshold) {
            kept.push(*d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes_per_class() {
        let d = |c, s, x| Detection { class_id: c, score: s, box_xyxy: [x, 0.0, x + 10.0, 10.0], anchor: 0 };
        let kept = nms(vec![d(0, 0.5, 1.0), d(0, 0.9, 0.0), d(1, 0.8, 0.0), d(0, 0.7, 30.0)], 0.5, 10);
        assert_eq!(kept, vec![d(0, 0.9, 0.0), d(1, 0.8, 0.0), d(0, 0.7, 30.0)]);
        assert_eq!(nms(vec![d(0, 0.5, 0.0), d(0, 0.6, 50.0)], 0.5, 1).len(), 1);
    }

    #[test]
    fn decode_maps_back_through_the_letterbox_and_skips_bad_values() {
        // Two anchors, two classes; a 200x100 frame letterboxed into 100: scale 0.5, dy 25.
        let lb = Letterbox::new(200, 100, 100);
        assert_eq!((lb.scale, lb.dx, lb.dy), (0.5, 0.0, 25.0));
        #[rustfmt::skip]
        let out = [
            50.0, f32::NAN, // cx
            50.0, 10.0,     // cy
            20.0, 5.0,      // w
            10.0, 5.0,      // h
            0.1, 0.9,       // class 0
            0.8, 0.2,       // class 1
        ];
        let dets = decode(&out, 2, 2, &lb, (200, 100), &DecodeOptions::default());
        assert_eq!(dets, vec![Detection { class_id: 1, score: 0.8, box_xyxy: [80.0, 40.0, 120.0, 60.0], anchor: 0 }]);
    }
}

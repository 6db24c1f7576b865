//! COCO-style detection metrics: AP at IoU 0.5 and averaged over 0.5:0.95, per class, over any
//! subset of images (`eval` reports overall and per capture condition).
//!
//! The algorithm is pycocotools' `COCOeval` for boxes with area range "all" and 100 detections
//! per image and class, so the numbers can be compared with published ones (a test holds it to
//! pycocotools' output on a committed fixture):
//! - per image and class, detections by score (stable order) are matched in turn to the unmatched
//!   ground truth box of highest IoU at or above the threshold, non-ignored boxes first;
//! - ignored ground truth (VOC `difficult`, COCO `iscrowd`) is not counted, a detection matched
//!   to it is neither a hit nor a miss, and its IoU is intersection over the detection's area;
//! - precision is made monotone and read at 101 recall points; a class with no counted ground
//!   truth is left out of the mean.

use super::annotations::Label;
use super::detect::Detection;

/// IoU thresholds 0.50, 0.55, ..., 0.95.
pub const IOU_THRESHOLDS: [f32; 10] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];
const RECALL_POINTS: usize = 101;
/// Detections per image and class that count (COCO's maxDets = 100).
pub const MAX_DETECTIONS: usize = 100;

/// Ground truth and detections of one image, classes as ids.
#[derive(Clone, Debug, Default)]
pub struct ImageResult {
    /// (class id, box, ignored)
    pub truth: Vec<(usize, [f32; 4], bool)>,
    pub detections: Vec<Detection>,
}

impl ImageResult {
    /// From labels whose class names are looked up in `classes` (unknown names are skipped: a
    /// model cannot be scored on classes it does not have).
    pub fn new(labels: &[Label], classes: &[String], detections: Vec<Detection>) -> ImageResult {
        let truth = labels
            .iter()
            .filter_map(|l| classes.iter().position(|c| *c == l.class).map(|id| (id, l.box_xyxy, l.difficult)))
            .collect();
        ImageResult { truth, detections }
    }
}

/// AP per class at each IoU threshold; `None` where a class has no counted ground truth.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// ap[class][threshold]
    pub ap: Vec<[Option<f64>; 10]>,
}

impl Metrics {
    /// mAP@0.5 over the classes that have ground truth (None if none has).
    pub fn map50(&self) -> Option<f64> {
        mean(self.ap.iter().filter_map(|a| a[0]))
    }

    /// mAP@0.5:0.95.
    pub fn map50_95(&self) -> Option<f64> {
        mean(self.ap.iter().flat_map(|a| a.iter().flatten().copied()))
    }

    /// (AP@0.5, AP@0.5:0.95) of one class.
    pub fn class(&self, c: usize) -> (Option<f64>, Option<f64>) {
        (self.ap[c][0], mean(self.ap[c].iter().flatten().copied()))
    }
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

fn iou_or_crowd(d: &[f32; 4], g: &[f32; 4], crowd: bool) -> f64 {
    let (d, g) = (d.map(f64::from), g.map(f64::from));
    let iw = (d[2].min(g[2]) - d[0].max(g[0])).max(0.0);
    let ih = (d[3].min(g[3]) - d[1].max(g[1])).max(0.0);
    let inter = iw * ih;
    let area = |b: &[f64; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let union = if crowd { area(&d) } else { area(&d) + area(&g) - inter };
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Evaluates `images` for `num_classes` classes.
pub fn evaluate<'a>(images: impl IntoIterator<Item = &'a ImageResult> + Clone, num_classes: usize) -> Metrics {
    let mut ap = vec![[None; 10]; num_classes];
    for (class, ap_class) in ap.iter_mut().enumerate() {
        // Per threshold: (score, matched, ignored) of every counted detection, and the number
        // of counted ground truth boxes.
        let mut scored: Vec<Vec<(f32, bool, bool)>> = vec![Vec::new(); IOU_THRESHOLDS.len()];
        let mut positives = 0usize;
        for img in images.clone() {
            // Non-ignored ground truth first, as COCOeval sorts it.
            let mut truth: Vec<(&[f32; 4], bool)> =
                img.truth.iter().filter(|t| t.0 == class).map(|t| (&t.1, t.2)).collect();
            truth.sort_by_key(|t| t.1);
            positives += truth.iter().filter(|t| !t.1).count();
            let mut dets: Vec<&Detection> = img.detections.iter().filter(|d| d.class_id == class).collect();
            dets.sort_by(|a, b| b.score.total_cmp(&a.score)); // stable: ties keep input order
            dets.truncate(MAX_DETECTIONS);
            if truth.is_empty() && dets.is_empty() {
                continue;
            }
            let ious: Vec<Vec<f64>> =
                dets.iter().map(|d| truth.iter().map(|g| iou_or_crowd(&d.box_xyxy, g.0, g.1)).collect()).collect();
            for (ti, &t) in IOU_THRESHOLDS.iter().enumerate() {
                let mut taken = vec![false; truth.len()];
                for (di, d) in dets.iter().enumerate() {
                    let mut best_iou = (t as f64).min(1.0 - 1e-10);
                    let mut best: Option<usize> = None;
                    for (gi, g) in truth.iter().enumerate() {
                        if taken[gi] && !g.1 {
                            continue;
                        }
                        // Already matched to a counted box: stop at the first ignored one.
                        if best.is_some_and(|b| !truth[b].1) && g.1 {
                            break;
                        }
                        if ious[di][gi] < best_iou {
                            continue;
                        }
                        best_iou = ious[di][gi];
                        best = Some(gi);
                    }
                    let (matched, ignored) = match best {
                        Some(gi) => {
                            taken[gi] = true;
                            (true, truth[gi].1)
                        }
                        None => (false, false),
                    };
                    scored[ti].push((d.score, matched, ignored));
                }
            }
        }
        if positives == 0 {
            continue;
        }
        for (ti, dets) in scored.iter_mut().enumerate() {
            dets.sort_by(|a, b| b.0.total_cmp(&a.0));
            let (mut tp, mut fp) = (0f64, 0f64);
            let mut recall = Vec::with_capacity(dets.len());
            let mut precision = Vec::with_capacity(dets.len());
            for &(_, matched, ignored) in dets.iter().filter(|d| !d.2) {
                let _ = ignored;
                if matched {
                    tp += 1.0;
                } else {
                    fp += 1.0;
                }
                recall.push(tp / positives as f64);
                precision.push(tp / (tp + fp + f64::EPSILON));
            }
            for i in (1..precision.len()).rev() {
                if precision[i] > precision[i - 1] {
                    precision[i - 1] = precision[i];
                }
            }
            let mut sum = 0.0;
            for r in 0..RECALL_POINTS {
                let threshold = r as f64 / (RECALL_POINTS - 1) as f64;
                let at = recall.partition_point(|&x| x < threshold);
                sum += precision.get(at).copied().unwrap_or(0.0);
            }
            ap_class[ti] = Some(sum / RECALL_POINTS as f64);
        }
    }
    Metrics { ap }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(c: usize, s: f32, b: [f32; 4]) -> Detection {
        Detection { class_id: c, score: s, box_xyxy: b, anchor: 0 }
    }

    #[test]
    fn perfect_detections_score_one_and_misses_lower_it() {
        let b = [10.0, 10.0, 50.0, 60.0];
        let img = ImageResult { truth: vec![(0, b, false)], detections: vec![det(0, 0.9, b)] };
        // Precision is tp / (tp + fp + eps), as pycocotools computes it: 1 within rounding.
        let one = |v: Option<f64>| (v.unwrap() - 1.0).abs() < 1e-12;
        let m = evaluate([&img], 2);
        assert!(one(m.map50()) && one(m.map50_95()), "{m:?}");
        assert_eq!(m.ap[1][0], None, "no ground truth of class 1");
        // A second, missed object halves the recall: AP = 51/101 (recall points 0..=0.5).
        let img2 = ImageResult { truth: vec![(0, [100.0, 100.0, 120.0, 140.0], false)], detections: vec![] };
        let m = evaluate([&img, &img2], 2);
        assert!((m.map50().unwrap() - 51.0 / 101.0).abs() < 1e-12);
        // A detection on an ignored (difficult) box costs nothing.
        let img3 = ImageResult { truth: vec![(0, b, true)], detections: vec![det(0, 0.95, b)] };
        assert!(one(evaluate([&img, &img3], 2).map50()));
    }
}

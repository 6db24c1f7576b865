//! Conformal prediction sets and abstention for detections (PAPERS.md section 11, "Beyond
//! Confidence").
//!
//! Each detection's class is given as a set, not a guess: with the LAC score s(x, y) = 1 - p_y
//! and q̂ the ⌈(n+1)(1-α)⌉-th smallest of n calibration scores (the exact finite-sample rule; q̂
//! = ∞ when that rank exceeds n), the set C(x) = {y : 1 - p_y ≤ q̂} holds the true class with
//! probability at least 1 - α for a detection that matches an object. A second, label-free score
//! u(x) = -ln p_max decides abstention: u > τ means "unsure", and the loop acts safe. τ is chosen
//! on the same calibration set by the paper's rule (maximise (TPR − 1.5 FPR)(1 − |a − 0.01|)
//! under a ≥ 0.01 and 1 − a ≥ 0.95 (1 − α), where a is the abstention rate and a positive is a
//! detection that should abstain: background, a miss of the set, or an ambiguous set). The
//! paper's code used −log p(true label) for u, an oracle; we use p_max, which needs no label.

use crate::error::{Error, Result};
use crate::vision::detect::{iou, Detection};

/// Metadata keys the calibration is stored under in a model.
pub const KEY_ALPHA: &str = "conformal.alpha";
pub const KEY_QHAT: &str = "conformal.qhat";
pub const KEY_TAU: &str = "conformal.tau";
pub const KEY_CALIBRATION: &str = "conformal.calibration";

/// IoU at which a detection is taken to be a labelled object.
pub const MATCH_IOU: f32 = 0.5;

/// The k-th smallest (1-based) of `scores` with k = ⌈(n+1)(1-α)⌉, or ∞ when k > n. Sorts them.
pub fn conformal_quantile(scores: &mut [f64], alpha: f64) -> f64 {
    let n = scores.len();
    let k = ((n as f64 + 1.0) * (1.0 - alpha)).ceil() as usize;
    if k == 0 {
        return f64::NEG_INFINITY;
    }
    if k > n {
        return f64::INFINITY;
    }
    scores.sort_unstable_by(|a, b| a.total_cmp(b));
    scores[k - 1]
}

/// One detection of a calibration or test image: every class's probability, and the class of
/// the labelled object it matches (`None`: background).
#[derive(Clone, Debug)]
pub struct Scored {
    pub probs: Vec<f32>,
    pub truth: Option<usize>,
}

/// Matches `dets` to labelled boxes (`labels`: class, xyxy; difficult ones already removed),
/// greedily best score first at IoU ≥ [`MATCH_IOU`] regardless of class (the set, not the
/// box, is what is being judged), and pairs each detection with its class probabilities.
pub fn match_detections(
    dets: &[Detection],
    probs: impl Fn(&Detection) -> Vec<f32>,
    labels: &[(usize, [f32; 4])],
) -> Vec<Scored> {
    let mut taken = vec![false; labels.len()];
    dets.iter()
        .map(|d| {
            let best = labels
                .iter()
                .enumerate()
                .filter(|(i, _)| !taken[*i])
                .map(|(i, (_, b))| (i, iou(&d.box_xyxy, b)))
                .filter(|&(_, o)| o >= MATCH_IOU)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let truth = best.map(|(i, _)| {
                taken[i] = true;
                labels[i].0
            });
            Scored { probs: probs(d), truth }
        })
        .collect()
}

/// A detector's conformal calibration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conformal {
    pub alpha: f64,
    pub qhat: f64,
    pub tau: f64,
}

/// The verdict on one detection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Bit y set: class y is in the prediction set.
    pub set: u32,
    /// The uncertainty passed τ: do not act on this detection.
    pub abstain: bool,
}

impl Judgement {
    pub fn contains(&self, class: usize) -> bool {
        class < 32 && self.set & (1 << class) != 0
    }

    pub fn size(&self) -> u32 {
        self.set.count_ones()
    }
}

/// Summary of a calibration or held-out evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Coverage {
    /// Detections matched to a labelled object.
    pub matched: usize,
    /// Matched detections whose true class is in the set.
    pub covered: usize,
    pub background: usize,
    /// Detections abstained, of all; of background ones; of matched ones.
    pub abstained: usize,
    pub background_abstained: usize,
    pub matched_abstained: usize,
    pub mean_set_size: f64,
}

impl Coverage {
    pub fn coverage(&self) -> f64 {
        self.covered as f64 / self.matched.max(1) as f64
    }

    pub fn abstention_rate(&self) -> f64 {
        self.abstained as f64 / (self.matched + self.background).max(1) as f64
    }
}

impl Conformal {
    /// Calibrates on `samples` at level `alpha`.
    pub fn calibrate(samples: &[Scored], alpha: f64) -> Result<Conformal> {
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(Error::InvalidArgument { reason: format!("alpha {alpha} is not in (0, 1)") });
        }
        let mut scores: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.truth.map(|t| 1.0 - s.probs.get(t).copied().unwrap_or(0.0) as f64))
            .collect();
        if scores.is_empty() {
            return Err(Error::InvalidArgument {
                reason: "no detection matched a labelled object: nothing to calibrate on".into(),
            });
        }
        let qhat = conformal_quantile(&mut scores, alpha);
        let mut c = Conformal { alpha, qhat, tau: f64::INFINITY };
        c.tau = c.choose_tau(samples);
        Ok(c)
    }

    /// Reads the calibration from model metadata (`None` when the model has none).
    pub fn from_metadata(meta: &[(String, String)]) -> Result<Option<Conformal>> {
        let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let (Some(a), Some(q), Some(t)) = (get(KEY_ALPHA), get(KEY_QHAT), get(KEY_TAU)) else {
            return Ok(None);
        };
        let num = |k: &str, v: &str| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| Error::InvalidArgument { reason: format!("model metadata {k} = '{v}' is not a number") })
        };
        Ok(Some(Conformal { alpha: num(KEY_ALPHA, a)?, qhat: num(KEY_QHAT, q)?, tau: num(KEY_TAU, t)? }))
    }

    /// The metadata entries that store this calibration (∞ written as `inf`).
    pub fn to_metadata(&self) -> [(String, String); 3] {
        [
            (KEY_ALPHA.into(), format!("{}", self.alpha)),
            (KEY_QHAT.into(), format!("{}", self.qhat)),
            (KEY_TAU.into(), format!("{}", self.tau)),
        ]
    }

    /// The set and the abstention verdict for one detection's class probabilities.
    pub fn judge(&self, probs: &[f32]) -> Judgement {
        let mut set = 0u32;
        let mut p_max = 0.0f32;
        for (y, &p) in probs.iter().enumerate().take(32) {
            if (1.0 - p as f64) <= self.qhat {
                set |= 1 << y;
            }
            if p > p_max || p.is_nan() {
                p_max = p;
            }
        }
        // NaN probabilities make u NaN, and NaN must abstain.
        let u = -(p_max as f64).ln();
        Judgement { set, abstain: u.is_nan() || u > self.tau }
    }

    /// Whether a detection should abstain, by the paper's definition with a deployable label:
    /// background, a set that misses the true class, or an ambiguous set.
    fn should_abstain(&self, s: &Scored) -> bool {
        let j = Judgement { abstain: false, ..self.judge(&s.probs) };
        match s.truth {
            None => true,
            Some(t) => !j.contains(t) || j.size() != 1,
        }
    }

    fn choose_tau(&self, samples: &[Scored]) -> f64 {
        let u: Vec<(f64, bool)> = samples
            .iter()
            .map(|s| {
                let p_max = s.probs.iter().copied().fold(0.0f32, f32::max) as f64;
                (-(p_max.max(1e-12)).ln(), self.should_abstain(s))
            })
            .collect();
        let positives = u.iter().filter(|x| x.1).count().max(1) as f64;
        let negatives = u.iter().filter(|x| !x.1).count().max(1) as f64;
        let mut grid: Vec<f64> = u.iter().map(|x| x.0).collect();
        grid.sort_unstable_by(|a, b| a.total_cmp(b));
        grid.dedup();
        let mut best = (f64::NEG_INFINITY, f64::INFINITY);
        for &tau in &grid {
            let abst = u.iter().filter(|x| x.0 > tau).count() as f64 / u.len().max(1) as f64;
            if abst < 0.01 || 1.0 - abst < 0.95 * (1.0 - self.alpha) {
                continue;
            }
            let tpr = u.iter().filter(|x| x.1 && x.0 > tau).count() as f64 / positives;
            let fpr = u.iter().filter(|x| !x.1 && x.0 > tau).count() as f64 / negatives;
            let objective = (tpr - 1.5 * fpr) * (1.0 - (abst - 0.01).abs());
            if objective > best.0 {
                best = (objective, tau);
            }
        }
        best.1
    }

    /// Coverage, set sizes and abstentions on `samples` (a held-out set).
    pub fn evaluate(&self, samples: &[Scored]) -> Coverage {
        let mut c = Coverage::default();
        let mut sizes = 0u64;
        for s in samples {
            let j = self.judge(&s.probs);
            sizes += j.size() as u64;
            c.abstained += j.abstain as usize;
            match s.truth {
                Some(t) => {
                    c.matched += 1;
                    c.covered += j.contains(t) as usize;
                    c.matched_abstained += j.abstain as usize;
                }
                None => {
                    c.background += 1;
                    c.background_abstained += j.abstain as usize;
                }
            }
        }
        c.mean_set_size = sizes as f64 / samples.len().max(1) as f64;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn the_quantile_is_the_exact_finite_sample_rank() {
        // n = 9, alpha 0.1: k = ceil(10 * 0.9) = 9, the largest.
        let mut s: Vec<f64> = (1..=9).rev().map(|v| v as f64).collect();
        assert_eq!(conformal_quantile(&mut s, 0.1), 9.0);
        // n = 19: k = ceil(20 * 0.9) = 18.
        let mut s: Vec<f64> = (1..=19).map(|v| v as f64).collect();
        assert_eq!(conformal_quantile(&mut s, 0.1), 18.0);
        // n = 5: k = ceil(6 * 0.9) = 6 > 5: no finite threshold covers.
        let mut s = vec![0.1; 5];
        assert_eq!(conformal_quantile(&mut s, 0.1), f64::INFINITY);
    }

    /// Exchangeable synthetic detections: the set covers at least 1 - alpha on fresh data.
    #[test]
    fn sets_cover_at_the_promised_rate_on_fresh_samples() {
        let mut r = SplitMix64::new(11);
        let mut draw = |n: usize| -> Vec<Scored> {
            (0..n)
                .map(|_| {
                    let truth = r.below(3) as usize;
                    let background = r.below(5) == 0;
                    // Objects: the true class stands out; background: no class does.
                    let mut logits = [r.normal(), r.normal(), r.normal()];
                    if !background {
                        logits[truth] += 1.5;
                    }
                    let probs = logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect();
                    Scored { probs, truth: (!background).then_some(truth) }
                })
                .collect()
        };
        let (cal, test) = (draw(2000), draw(4000));
        for alpha in [0.05, 0.1, 0.2] {
            let c = Conformal::calibrate(&cal, alpha).unwrap();
            let cov = c.evaluate(&test);
            // 1 - alpha in expectation; 4000 draws put 3 sigma at about 1.5 points.
            assert!(cov.coverage() >= 1.0 - alpha - 0.015, "alpha {alpha}: coverage {}", cov.coverage());
            assert!(cov.coverage() <= 1.0 - alpha + 0.03, "alpha {alpha}: sets far too large: {}", cov.coverage());
            assert!(c.tau.is_finite());
            // The abstention rule prefers background: it abstains more often there.
            let bg = cov.background_abstained as f64 / cov.background as f64;
            let fg = cov.matched_abstained as f64 / cov.matched as f64;
            assert!(bg > fg, "alpha {alpha}: background abstains {bg}, objects {fg}");
        }
        let c = Conformal::calibrate(&cal, 0.1).unwrap();
        assert!(c.judge(&[f32::NAN, 0.2, 0.1]).abstain);
        let back = Conformal::from_metadata(&c.to_metadata()).unwrap().unwrap();
        assert_eq!(back, c);
        assert!(Conformal::calibrate(&cal, 1.5).is_err());
    }
}

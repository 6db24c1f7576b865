//! Weight faults and what they cost: `kestrel faults` (PAPERS.md section 10, ProAct's fault
//! model).
//!
//! Bits are flipped in a copy of the model file's tensor data, in the format the weights are
//! stored in (IEEE f32 bits, int8 codes and their f32 row scales, int4 codes and their f16
//! group scales): the fault a radiation upset or a worn flash cell gives the bytes a board
//! reads. Per tensor (every weight and bias), the expected number of flips is
//! `stored bits x BER`, at uniformly random (element, bit) positions drawn with replacement.
//! That is ProAct's `n = numel * bits * BER`, with two deliberate differences:
//! - quantized tensors count their scales' bits too (they are stored, so they can flip, and
//!   one flipped scale exponent corrupts a whole row or group);
//! - the count is rounded stochastically instead of truncated, so a tensor too small for one
//!   whole expected flip still gets one in the right fraction of trials (truncation would leave
//!   most of a small network untouched at low rates and understate the damage).
//!
//! The faulty file is opened without data checksums (a board that skips them at start-up is
//! exactly the case being measured), run on the CPU with the chosen clip mode, and scored by
//! mAP@0.5 on a labelled set of pairs.

use std::ops::Range;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{Kpak, KpakWriter, Verify};
use crate::graph::clip::{self, ClipMode};
use crate::rng::SplitMix64;
use crate::tensor::Scheme;
use crate::vision::annotations::Label;
use crate::vision::dataset::Dataset;
use crate::vision::detect::DecodeOptions;
use crate::vision::detector::{Detector, Device};
use crate::vision::eval::{evaluate, ImageResult};
use crate::vision::image::Image;

/// The weight format faults are injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// As the file stores them.
    Stored,
    /// Every quantized matrix dequantized and stored as IEEE f32.
    F32,
    /// int8 matrices requantized to int4 in groups of 32 along K (rows shorter than 32 stay).
    Q4,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Precision> {
        match s {
            "stored" => Some(Precision::Stored),
            "f32" => Some(Precision::F32),
            "q4" => Some(Precision::Q4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Stored => "stored",
            Precision::F32 => "f32",
            Precision::Q4 => "q4",
        }
    }
}

/// The bytes of `pak` with its quantized matrices converted to `precision`.
pub fn convert(pak: &Kpak, precision: Precision) -> Result<Vec<u8>> {
    if precision == Precision::Stored {
        return Ok(pak.bytes().to_vec());
    }
    let mut w = KpakWriter::from_kpak(pak);
    for t in pak.tensors() {
        if !t.scheme.is_quantized() || t.shape.len() != 2 {
            continue;
        }
        let (n, k) = (t.shape[0] as usize, t.shape[1] as usize);
        let scheme = match precision {
            Precision::F32 => Scheme::F32,
            Precision::Q4 if k % 32 == 0 && t.scheme == Scheme::Q8 => Scheme::Q4 { group: 32, symmetric: false },
            _ => continue,
        };
        let m = pak.matrix(&t.name)?;
        let dense: Vec<f32> = crate::quant::dequantize(&m).into_iter().map(|v| v as f32).collect();
        w.replace_matrix(&t.name, &crate::quant::quantize(&dense, n, k, scheme)?)?;
    }
    w.set_metadata("kestrel.weights", precision.name())?;
    Ok(w.to_bytes())
}

/// Where one tensor's stored bits are in the file.
#[derive(Clone, Debug)]
pub struct Site {
    pub tensor: String,
    pub ranges: Vec<Range<usize>>,
    pub bits: u64,
}

/// The weights and biases of `pak`'s conv, linear and matmul layers as fault sites (ProAct
/// injects into conv and linear layers). Structural constants (a Resize's scales, a Reshape's
/// shape) are left alone: they are part of the program, not of what it learned, and a flip
/// there is a malformed graph the loader refuses, not a degraded detector.
pub fn sites(pak: &Kpak) -> Vec<Site> {
    let layers: std::collections::HashSet<&str> = pak.graph().map_or_else(Default::default, |g| {
        g.nodes
            .iter()
            .filter(|n| matches!(n.op.as_str(), "Conv" | "Gemm" | "MatMul"))
            .flat_map(|n| n.inputs.iter().skip(1).flatten())
            .filter(|&&v| g.constant(v).is_some() || pak.tensor(&g.values[v].name).is_ok())
            .map(|&v| g.values[v].name.as_str())
            .collect()
    });
    pak.tensors()
        .iter()
        .filter(|t| layers.contains(t.name.as_str()))
        .map(|t| {
            let ranges: Vec<Range<usize>> =
                t.components.iter().map(|c| c.offset as usize..(c.offset + c.len) as usize).collect();
            let bits = ranges.iter().map(|r| r.len() as u64 * 8).sum();
            Site { tensor: t.name.clone(), ranges, bits }
        })
        .collect()
}

/// Flips bits of `bytes` at bit-error rate `ber` in every site; returns the flips made.
pub fn inject(bytes: &mut [u8], sites: &[Site], ber: f64, rng: &mut SplitMix64) -> u64 {
    let mut flips = 0;
    for s in sites {
        let expected = s.bits as f64 * ber;
        let n = expected.floor() as u64 + (rng.unit() < expected.fract()) as u64;
        for _ in 0..n {
            let mut bit = rng.below(s.bits);
            for r in &s.ranges {
                let len = r.len() as u64 * 8;
                if bit < len {
                    bytes[r.start + (bit / 8) as usize] ^= 1 << (bit % 8);
                    break;
                }
                bit -= len;
            }
        }
        flips += n;
    }
    flips
}

/// Labelled pairs held in memory, so trials do not decode images again.
pub struct EvalSet {
    pairs: Vec<(Image, Image, Vec<Label>)>,
}

impl EvalSet {
    /// The first `limit` labelled pairs of `dir`; YOLO labels are named by `classes`.
    pub fn load(dir: &Path, limit: Option<usize>, classes: &[String]) -> Result<EvalSet> {
        let ds = Dataset::open(dir)?;
        let n = limit.unwrap_or(usize::MAX).min(ds.samples.len());
        let mut pairs = Vec::with_capacity(n);
        for s in &ds.samples[..n] {
            let (rgb, ir) = (Image::load(&s.rgb)?, Image::load(&s.ir)?);
            let ann = ds.annotation(s, (rgb.width, rgb.height), classes)?;
            pairs.push((rgb, ir, ann.labels));
        }
        if pairs.is_empty() {
            return Err(Error::Dataset { path: dir.to_path_buf(), reason: "no pairs to score".into() });
        }
        Ok(EvalSet { pairs })
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// mAP@0.5 of `det` on the set (0 when a fault leaves no class scorable).
    pub fn map50(&self, det: &mut Detector) -> Result<f64> {
        let classes = det.classes().to_vec();
        let mut results = Vec::with_capacity(self.pairs.len());
        for (rgb, ir, labels) in &self.pairs {
            let dets = det.detect(Some(rgb), Some(ir))?;
            results.push(ImageResult::new(labels, &classes, dets));
        }
        Ok(evaluate(&results, classes.len()).map50().unwrap_or(0.0))
    }
}

/// A model ready for trials: its bytes at one precision, its fault sites, its graph.
pub struct FaultModel {
    bytes: Vec<u8>,
    sites: Vec<Site>,
    source: std::path::PathBuf,
    stored_bits: u64,
}

/// One trial's outcome.
#[derive(Clone, Copy, Debug)]
pub struct Trial {
    /// 0 when the damaged model could not be loaded.
    pub map50: f64,
    pub flips: u64,
    /// The loader refused the damaged model (a board would not start perception with it).
    pub refused: bool,
}

impl FaultModel {
    pub fn open(path: &Path, precision: Precision) -> Result<FaultModel> {
        let pak = Kpak::open(path, Verify::Full)?;
        let bytes = convert(&pak, precision)?;
        let sites = sites(&Kpak::from_bytes(&bytes, Verify::Full)?);
        let stored_bits = sites.iter().map(|s| s.bits).sum();
        Ok(FaultModel { bytes, sites, source: path.to_path_buf(), stored_bits })
    }

    /// Bits the faults can land in.
    pub fn stored_bits(&self) -> u64 {
        self.stored_bits
    }

    /// Thresholds the model carries: (layer-wise, channel-wise) node counts.
    pub fn clip_thresholds(&self) -> Result<(usize, usize)> {
        let pak = Kpak::from_bytes(&self.bytes, Verify::Structure)?;
        Ok(pak.graph().map_or((0, 0), clip::count))
    }

    /// One trial: flip bits at `ber` with `seed`, build the detector with `mode`, score it.
    pub fn trial(&self, ber: f64, mode: ClipMode, seed: u64, eval: &EvalSet, opts: DecodeOptions) -> Result<Trial> {
        let mut bytes = self.bytes.clone();
        let flips = inject(&mut bytes, &self.sites, ber, &mut SplitMix64::new(seed));
        let loaded = Kpak::from_bytes(&bytes, Verify::Structure).and_then(|pak| {
            let mut g = pak
                .graph()
                .ok_or_else(|| Error::Unsupported { what: format!("{} has no graph to run", self.source.display()) })?
                .clone();
            clip::apply_mode(&mut g, mode);
            Detector::from_kpak(&pak, &g, Device::Cpu, &self.source)
        });
        let mut det = match loaded {
            Ok(det) => det,
            Err(e) => {
                log::warn!("trial with seed {seed}: the damaged model does not load: {e}");
                return Ok(Trial { map50: 0.0, flips, refused: true });
            }
        };
        det.options = opts;
        Ok(Trial { map50: eval.map50(&mut det)?, flips, refused: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_flips_the_expected_number_of_bits_inside_the_sites() {
        let mut bytes = vec![0u8; 4096];
        let sites = vec![
            Site { tensor: "a".into(), ranges: vec![256..512, 1024..1280], bits: 512 * 8 },
            Site { tensor: "b".into(), ranges: std::iter::once(2048..2052).collect(), bits: 32 },
        ];
        let mut rng = SplitMix64::new(3);
        let (ber, trials) = (1e-2, 400);
        let mut total = 0;
        for _ in 0..trials {
            let mut b = bytes.clone();
            total += inject(&mut b, &sites, ber, &mut rng);
            // Nothing outside the sites changes.
            for (i, &v) in b.iter().enumerate() {
                let inside = sites.iter().any(|s| s.ranges.iter().any(|r| r.contains(&i)));
                assert!(inside || v == 0, "byte {i} changed outside every site");
            }
            bytes.copy_from_slice(&vec![0u8; 4096]);
        }
        // Expected flips per trial: (4096 + 32) * 1e-2 = 41.28; the mean over 400 trials is
        // within 3 standard errors (Poisson-like, sd ~ sqrt(41) / sqrt(400) ~ 0.32).
        let mean = total as f64 / trials as f64;
        assert!((mean - 41.28).abs() < 1.0, "mean flips {mean}");
    }

    #[test]
    fn small_sites_still_get_flips_in_proportion() {
        // 32 bits at BER 1e-3: 0.032 expected flips; truncation would give none, ever.
        let sites = vec![Site { tensor: "bias".into(), ranges: std::iter::once(0..4).collect(), bits: 32 }];
        let mut rng = SplitMix64::new(9);
        let trials = 20_000;
        let flips: u64 = (0..trials).map(|_| inject(&mut [0u8; 4], &sites, 1e-3, &mut rng)).sum();
        let rate = flips as f64 / trials as f64;
        assert!((rate - 0.032).abs() < 0.008, "flips per trial {rate}");
    }
}

//! `kestrel faults` and `kestrel calibrate-clip`: bit flips in the stored weights and what
//! they cost in mAP, with and without ProAct's clipped activations (PAPERS.md section 10).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use kestrel::faults::{EvalSet, FaultModel, Precision};
use kestrel::format::{Kpak, KpakWriter, Verify};
use kestrel::graph::clip::{self, ClipMode};
use kestrel::vision::detect::DecodeOptions;
use kestrel::vision::detector::{Detector, Device};
use kestrel::{Error, Result};

/// What `kestrel faults` was asked for.
pub struct FaultArgs<'a> {
    pub model: &'a Path,
    pub dataset: &'a Path,
    pub bers: &'a str,
    pub trials: u32,
    pub clips: &'a str,
    pub precision: &'a str,
    pub limit: Option<usize>,
    pub seed: u64,
    pub json: bool,
}

fn list<T>(what: &str, text: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    text.split(',')
        .map(|s| parse(s.trim()).ok_or_else(|| Error::InvalidArgument { reason: format!("{what} {s:?}") }))
        .collect()
}

pub fn faults_cmd(a: &FaultArgs) -> Result<ExitCode> {
    let bers =
        list("--ber: not a rate in [0, 1]:", a.bers, |s| s.parse::<f64>().ok().filter(|b| (0.0..=1.0).contains(b)))?;
    let clips = list("--clip: none, layer or hybrid, not", a.clips, ClipMode::parse)?;
    let precision = Precision::parse(a.precision)
        .ok_or_else(|| Error::InvalidArgument { reason: format!("--precision {}: stored, f32 or q4", a.precision) })?;
    if a.trials == 0 {
        return Err(Error::InvalidArgument { reason: "--trials 0: need at least one".into() });
    }
    let model = FaultModel::open(a.model, precision)?;
    let (layer, channel) = model.clip_thresholds()?;
    if layer == 0 && clips.iter().any(|&c| c != ClipMode::None) {
        return Err(Error::InvalidArgument {
            reason: format!(
                "{} has no clip thresholds: run `kestrel calibrate-clip` on it first, or use --clip none",
                a.model.display()
            ),
        });
    }
    let classes = Detector::open(a.model, Device::Cpu)?.classes().to_vec();
    let eval = EvalSet::load(a.dataset, a.limit, &classes)?;
    let opts = DecodeOptions { score: 0.001, iou: 0.7, max_detections: 300 };
    let tty = std::io::stderr().is_terminal();
    if tty {
        eprintln!(
            "{}: {} stored bits ({}), {layer} layer-wise and {channel} channel-wise thresholds, {} pairs",
            a.model.display(),
            model.stored_bits(),
            precision.name(),
            eval.len()
        );
    }
    for &clip in &clips {
        let clean = model.trial(0.0, clip, a.seed, &eval, opts)?.map50;
        for &ber in &bers {
            let mut maps = Vec::with_capacity(a.trials as usize);
            let (mut flips, mut refused) = (0, 0);
            for t in 0..a.trials {
                // The same seeds for every clip mode: each mode sees the same faults.
                let seed = a.seed ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ber.to_bits();
                let r = model.trial(ber, clip, seed, &eval, opts)?;
                maps.push(r.map50);
                flips += r.flips;
                refused += r.refused as u32;
            }
            let mean = maps.iter().sum::<f64>() / maps.len() as f64;
            let min = maps.iter().copied().fold(f64::INFINITY, f64::min);
            let max = maps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let row = json!({
                "ber": ber,
                "clip": clip.name(),
                "trials": a.trials,
                "map50_mean": mean,
                "map50_min": min,
                "map50_max": max,
                "map50_clean": clean,
                "flips_mean": flips as f64 / a.trials as f64,
                "refused_loads": refused,
                "precision": precision.name(),
                "pairs": eval.len(),
            });
            if a.json {
                println!("{row}");
            } else {
                println!(
                    "ber {ber:8.1e}  clip {:<6}  mAP@0.5 mean {mean:.4}  min {min:.4}  max {max:.4}  (clean {clean:.4}, {:.1} flips/trial)",
                    clip.name(),
                    flips as f64 / a.trials as f64
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kestrel calibrate-clip`: ProAct thresholds from the largest activations on a dataset.
pub fn calibrate_clip_cmd(
    model: &Path,
    dataset: &Path,
    limit: Option<usize>,
    out: Option<&Path>,
    json: bool,
) -> Result<ExitCode> {
    let pak = Kpak::open(model, Verify::Full)?;
    let mut g = pak
        .graph()
        .ok_or_else(|| Error::Unsupported { what: format!("{} has no graph to run", model.display()) })?
        .clone();
    // Statistics of the unclipped network, whatever the file carried before.
    clip::apply_mode(&mut g, ClipMode::None);
    let mut det = Detector::from_kpak(&pak, &g, Device::Cpu, model)?;
    let eval = EvalSet::load(dataset, limit, det.classes())?;
    let unclipped = eval.map50(&mut det)?;
    det.record_activation_max(true)?;
    eval.map50(&mut det)?;
    let maxima = det.activation_max();
    if maxima.is_empty() {
        return Err(Error::Unsupported { what: format!("{}: no ReLU or SiLU layer to clip", model.display()) });
    }
    let (layers, channels) = clip::store(&mut g, &maxima);
    let mut clipped_det = Detector::from_kpak(&pak, &g, Device::Cpu, model)?;
    let clipped = eval.map50(&mut clipped_det)?;
    let mut thresholds: Vec<f32> = maxima.iter().map(|(_, m)| m.iter().copied().fold(0.0, f32::max)).collect();
    thresholds.sort_by(f32::total_cmp);
    let mut w = KpakWriter::from_kpak(&pak);
    w.graph(&g)?;
    w.set_metadata(
        "clip.calibration",
        &format!(
            "statistic=max layers={layers} channel_layers={channels} pairs={} dataset={} map50_unclipped={unclipped:.4} map50_clipped={clipped:.4}",
            eval.len(),
            dataset.display()
        ),
    )?;
    let dest = out.unwrap_or(model);
    w.write(dest)?;
    let pick = |q: f64| thresholds[((thresholds.len() - 1) as f64 * q).round() as usize];
    if json {
        println!(
            "{}",
            json!({
                "model": dest.display().to_string(),
                "layers": layers,
                "channel_layers": channels,
                "pairs": eval.len(),
                "threshold_min": pick(0.0), "threshold_median": pick(0.5), "threshold_max": pick(1.0),
                "map50_unclipped": unclipped,
                "map50_clipped": clipped,
            })
        );
    } else {
        println!(
            "{}: {layers} layer-wise thresholds (min {:.3}, median {:.3}, max {:.3}), channel-wise on {channels} last layers, from {} pairs",
            dest.display(),
            pick(0.0),
            pick(0.5),
            pick(1.0),
            eval.len()
        );
        println!("mAP@0.5 on the calibration pairs: {unclipped:.4} unclipped, {clipped:.4} clipped");
    }
    Ok(ExitCode::SUCCESS)
}

//! Streams: `eval --sequence` (dense against delta on the same frames) and `calibrate-delta`.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{json, Value};

use kestrel::exec::delta::RELATIVE_METADATA_KEY;
use kestrel::exec::{DeltaOptions, DeltaStats, RelativeThetas};
use kestrel::format::{Kpak, KpakWriter, Verify};
use kestrel::vision::annotations::{Annotation, Label};
use kestrel::vision::dataset::Dataset;
use kestrel::vision::detect::{DecodeOptions, Detection};
use kestrel::vision::detector::{Detector, Modality};
use kestrel::vision::eval::{evaluate, ImageResult};
use kestrel::vision::image::Image;
use kestrel::{Error, Result};

use crate::vision::ModelArgs;

/// The delta options of the command line.
#[derive(clap::Args, Clone, Debug)]
pub struct DeltaArgs {
    /// Run in delta mode (temporal sparsity): with no value, the model's calibrated per-layer
    /// thresholds (`kestrel calibrate-delta`; theta 0 if it has none); with a value, that theta
    /// for every layer.
    #[arg(long, num_args = 0..=1, value_name = "THETA")]
    pub delta: Option<Option<f32>>,
    /// A dense keyframe every K frames (0: only the first frame and scene cuts).
    #[arg(long, value_name = "K", default_value_t = DeltaOptions::default().keyframe_interval)]
    pub keyframe_every: usize,
    /// Fired fraction of a layer's input above which it runs dense for the frame.
    #[arg(long, value_name = "FRACTION", default_value_t = DeltaOptions::default().dense_above)]
    pub dense_above: f32,
    /// With scene-relative thresholds: layers under this share of the model's dense MACs run
    /// exact (theta 0), since a threshold there saves little and costs accuracy. Default: the
    /// model's calibrated value (eval, detect), or 0.002 (calibrate-delta).
    #[arg(long, value_name = "SHARE")]
    pub exact_below: Option<f32>,
    /// Scene-relative thresholds to use instead of the model's calibrated ones, as
    /// `t=0.1 t_camera=0.07 [exact_below=0.002] [noise=3]` (see docs/ARCHITECTURE.md).
    #[arg(long, value_name = "SPEC")]
    pub relative: Option<String>,
    /// Run every conv step in delta, even where its cost model says the dense conv is faster
    /// (for counting the work delta mode saves; `calibrate-delta` always does).
    #[arg(long)]
    pub always_delta: bool,
}

/// `--exact-below` when calibrating, unless given.
const CALIBRATE_EXACT_BELOW: f32 = 0.002;

impl DeltaArgs {
    /// The delta options for `det`, or None without `--delta`.
    pub fn options(&self, det: &Detector) -> Result<Option<DeltaOptions>> {
        let Some(theta) = self.delta else { return Ok(None) };
        let mut opts = DeltaOptions::from_metadata(det.metadata())?;
        if let Some(t) = theta {
            opts.theta = t;
            opts.layer_theta.clear();
            opts.relative = None;
        }
        if let Some(spec) = &self.relative {
            if theta.is_some() {
                return Err(Error::InvalidArgument {
                    reason: "--relative and a --delta value both set the thresholds: give one".into(),
                });
            }
            opts.relative = Some(RelativeThetas::parse(spec)?);
        }
        opts.keyframe_interval = self.keyframe_every;
        opts.dense_above = self.dense_above;
        opts.cost_model = !self.always_delta;
        match (opts.relative.as_mut(), self.exact_below) {
            (Some(r), Some(e)) => r.exact_below = e,
            // Silently ignoring it would leave the user believing small layers ran exact.
            (None, Some(_)) => {
                return Err(Error::InvalidArgument {
                    reason: "--exact-below applies to scene-relative thresholds (a model calibrated by \
                             `kestrel calibrate-delta`, run with --delta and no value)"
                        .into(),
                })
            }
            _ => {}
        }
        Ok(Some(opts))
    }
}

/// One frame of a sequence, loaded.
struct SeqFrame {
    rgb: Option<Image>,
    ir: Option<Image>,
    ann: Annotation,
}

/// Every frame of the sequence at `dir` in order (file names order the frames: `kestrel synth
/// --sequence` names them cCCCC_fFFFF).
fn load_sequence(det: &Detector, dir: &Path) -> Result<Vec<SeqFrame>> {
    let ds = Dataset::open(dir)?;
    if ds.samples.is_empty() {
        return Err(Error::InvalidArgument { reason: format!("{}: the sequence has no frames", dir.display()) });
    }
    let (need_rgb, need_ir) = (det.needs(Modality::Rgb), det.needs(Modality::Ir));
    let classes = det.classes().to_vec();
    ds.samples
        .iter()
        .map(|s| {
            let rgb = if need_rgb || !need_ir { Some(Image::load(&s.rgb)?) } else { None };
            let ir = if need_ir { Some(Image::load(&s.ir)?) } else { None };
            let frame = rgb.as_ref().or(ir.as_ref()).expect("one frame is loaded");
            let ann = ds.annotation(s, (frame.width, frame.height), &classes)?;
            Ok(SeqFrame { rgb, ir, ann })
        })
        .collect()
}

/// What one pass over a sequence measured.
struct Pass {
    map50: f64,
    /// Milliseconds per frame of `detect` (preprocess + model + decode).
    ms: Vec<f64>,
    /// The detections of every frame.
    detections: Vec<Vec<Detection>>,
}

/// Score above which a dense detection counts as a pseudo-label for [`agreement`].
const AGREEMENT_SCORE: f32 = 0.25;

/// Fidelity of `pass` to `dense`, needing no labels: mAP@0.5 of its detections against the
/// dense detections scoring at least [`AGREEMENT_SCORE`] (1 when it finds the same boxes).
fn agreement(pass: &Pass, dense: &Pass, classes: &[String]) -> f64 {
    let results: Vec<ImageResult> = pass
        .detections
        .iter()
        .zip(&dense.detections)
        .map(|(mine, theirs)| {
            let labels: Vec<Label> = theirs
                .iter()
                .filter(|d| d.score >= AGREEMENT_SCORE)
                .map(|d| Label { class: classes[d.class_id].clone(), box_xyxy: d.box_xyxy, difficult: false })
                .collect();
            ImageResult::new(&labels, classes, mine.clone())
        })
        .collect();
    evaluate(&results, classes.len()).map50().unwrap_or(1.0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `dets` (one detector per pass) over `frames` in lockstep, frame by frame, so that the
/// passes share the machine's noise.
fn run_passes(dets: &mut [&mut Detector], frames: &[SeqFrame], progress: &str) -> Result<Vec<Pass>> {
    let nc = dets[0].classes().len();
    let classes = dets[0].classes().to_vec();
    let mut results: Vec<Vec<ImageResult>> = dets.iter().map(|_| Vec::with_capacity(frames.len())).collect();
    let mut found_all: Vec<Vec<Vec<Detection>>> = dets.iter().map(|_| Vec::with_capacity(frames.len())).collect();
    let mut ms: Vec<Vec<f64>> = dets.iter().map(|_| Vec::with_capacity(frames.len())).collect();
    let tty = std::io::stderr().is_terminal() && !progress.is_empty();
    for (n, f) in frames.iter().enumerate() {
        for (k, det) in dets.iter_mut().enumerate() {
            let started = Instant::now();
            let found = det.detect(f.rgb.as_ref(), f.ir.as_ref())?;
            ms[k].push(started.elapsed().as_secs_f64() * 1e3);
            found_all[k].push(found.clone());
            results[k].push(ImageResult::new(&f.ann.labels, &classes, found));
        }
        if tty && ((n + 1).is_multiple_of(20) || n + 1 == frames.len()) {
            eprint!("\r{progress} [{}/{}] frames", n + 1, frames.len());
        }
    }
    if tty {
        eprintln!();
    }
    Ok(results
        .iter()
        .zip(ms)
        .zip(found_all)
        .map(|((r, ms), detections)| Pass { map50: evaluate(r, nc).map50().unwrap_or(0.0), ms, detections })
        .collect())
}

fn per_layer_json(stats: &DeltaStats) -> Vec<Value> {
    stats
        .layers
        .iter()
        .map(|l| {
            json!({"name": l.name, "theta": l.theta, "fired_fraction": l.fired_fraction(stats.frames),
                   "macs": l.macs, "dense_macs": l.dense_macs * stats.frames, "dense_frames": l.dense_frames})
        })
        .collect()
}

/// `kestrel eval --sequence DIR [--delta [THETA]]`: the same frames dense and (with --delta) in
/// delta mode, in lockstep.
pub fn eval_sequence_cmd(m: &ModelArgs, dir: &Path, delta: &DeltaArgs, profile: bool, json: bool) -> Result<ExitCode> {
    let options = DecodeOptions { score: 0.001, iou: 0.7, max_detections: 300 };
    let mut dense = m.open(options)?;
    let frames = load_sequence(&dense, dir)?;
    let Some(opts) = delta.options(&dense)? else {
        let pass = run_passes(&mut [&mut dense], &frames, "dense")?.remove(0);
        let report = json!({"frames": frames.len(), "dense": {"macs": dense.dense_macs() * frames.len() as u64,
                            "median_ms": median(&pass.ms), "map50": pass.map50}});
        print_or_json(&report, json);
        return Ok(ExitCode::SUCCESS);
    };
    let mut sparse = m.open(options)?;
    sparse.enable_delta(opts.clone())?;
    dense.set_profiling(profile);
    sparse.set_profiling(profile);
    let passes = run_passes(&mut [&mut dense, &mut sparse], &frames, "dense + delta")?;
    if profile {
        print_profiles(&dense, &sparse, frames.len());
    }
    let stats = sparse.delta_stats().expect("delta mode is on");
    let dense_macs = dense.dense_macs() * frames.len() as u64;
    let (d_ms, s_ms) = (median(&passes[0].ms), median(&passes[1].ms));
    let report = json!({
        "model": m.model.display().to_string(), "sequence": dir.display().to_string(), "frames": frames.len(),
        "dense": {"macs": dense_macs, "median_ms": d_ms, "map50": passes[0].map50},
        "delta": {"macs": stats.macs(), "median_ms": s_ms, "map50": passes[1].map50,
                  "fired_fraction": stats.fired_fraction(), "keyframes": stats.keyframes,
                  "scene_cuts": stats.scene_cuts,
                  "theta": match (opts.relative, opts.layer_theta.is_empty()) {
                      (Some(r), _) => json!(r.format()),
                      (None, true) => json!(opts.theta),
                      (None, false) => json!("per layer"),
                  },
                  "keyframe_every": opts.keyframe_interval, "dense_above": opts.dense_above},
        "mac_ratio": dense_macs as f64 / stats.macs().max(1) as f64,
        "speedup": d_ms / s_ms.max(1e-9),
        "map50_drop_points": (passes[0].map50 - passes[1].map50) * 100.0,
        "agreement_map50": agreement(&passes[1], &passes[0], dense.classes()),
        "per_layer": per_layer_json(&stats),
    });
    print_or_json(&report, json);
    Ok(ExitCode::SUCCESS)
}

/// Per op type, milliseconds per frame dense and in delta mode (to stderr).
fn print_profiles(dense: &Detector, sparse: &Detector, frames: usize) {
    let by_op = |d: &Detector| {
        let mut ops: Vec<(String, f64)> = Vec::new();
        for (_, op, t) in d.profile() {
            match ops.iter_mut().find(|(o, _)| *o == op) {
                Some((_, s)) => *s += t,
                None => ops.push((op, t)),
            }
        }
        ops
    };
    let (a, b) = (by_op(dense), by_op(sparse));
    eprintln!("ms per frame by op type:   dense    delta");
    for (op, t) in &a {
        let u = b.iter().find(|(o, _)| o == op).map_or(0.0, |x| x.1);
        eprintln!("  {op:<22} {:>8.3} {:>8.3}", t * 1e3 / frames as f64, u * 1e3 / frames as f64);
    }
    let (pa, mut pb) = (dense.profile(), sparse.profile());
    pb.sort_by(|x, y| y.2.total_cmp(&x.2));
    eprintln!("slowest nodes in delta mode, ms per frame:   dense    delta");
    for (name, op, t) in pb.iter().take(12) {
        let u = pa.iter().find(|(n, _, _)| n == name).map_or(0.0, |x| x.2);
        eprintln!("  {:<40} {op:<8} {:>8.3} {:>8.3}", name, u * 1e3 / frames as f64, t * 1e3 / frames as f64);
    }
}

fn print_or_json(report: &Value, json: bool) {
    if json {
        println!("{report}");
        return;
    }
    let f = |v: &Value| v.as_f64().map_or("-".into(), |v| format!("{v:.4}"));
    println!("{} frames", report["frames"]);
    for pass in ["dense", "delta"] {
        let p = &report[pass];
        if p.is_null() {
            continue;
        }
        println!(
            "  {pass:<6} mAP@0.5 {}  {:.3} GMAC  median {:.2} ms per frame{}",
            f(&p["map50"]),
            p["macs"].as_f64().unwrap_or(0.0) / 1e9,
            p["median_ms"].as_f64().unwrap_or(0.0),
            p["fired_fraction"].as_f64().map_or(String::new(), |v| format!(
                "  fired {:.1}%  keyframes {}  scene cuts {}",
                v * 100.0,
                p["keyframes"],
                p["scene_cuts"]
            ))
        );
    }
    if !report["mac_ratio"].is_null() {
        println!(
            "  delta does {:.2}x fewer MACs, runs {:.2}x faster, mAP@0.5 {:+.2} points; agreement with dense {:.4}",
            report["mac_ratio"].as_f64().unwrap_or(0.0),
            report["speedup"].as_f64().unwrap_or(0.0),
            -report["map50_drop_points"].as_f64().unwrap_or(0.0),
            report["agreement_map50"].as_f64().unwrap_or(0.0)
        );
    }
}

/// `kestrel calibrate-delta`: scene-relative thresholds (theta of each channel = t x its RMS at
/// the layer's last keyframe; `t_camera` for the layers that read a camera), with the largest
/// MAC saving whose mAP@0.5 on the sequence stays within `max_drop` points of dense and whose
/// detections agree with the dense ones at `min_agreement` or better. Writes the two multiples
/// into the model's metadata (`delta.relative`).
#[allow(clippy::too_many_arguments)]
pub fn calibrate_delta_cmd(
    m: &ModelArgs,
    dir: &Path,
    max_drop: f64,
    min_agreement: f64,
    out: Option<&Path>,
    delta: &DeltaArgs,
    json: bool,
) -> Result<ExitCode> {
    if !(max_drop.is_finite() && max_drop >= 0.0 && (0.0..=1.0).contains(&min_agreement)) {
        return Err(Error::InvalidArgument {
            reason: format!(
                "--max-drop {max_drop} and --min-agreement {min_agreement}: need points >= 0 and a fraction"
            ),
        });
    }
    let options = DecodeOptions { score: 0.001, iou: 0.7, max_detections: 300 };
    let mut dense = m.open(options)?;
    let frames = load_sequence(&dense, dir)?;
    // Thresholds are ranked by the work they save, so every step runs in delta.
    let base = DeltaOptions {
        keyframe_interval: delta.keyframe_every,
        dense_above: delta.dense_above,
        cost_model: false,
        ..DeltaOptions::default()
    };
    let exact_below = delta.exact_below.unwrap_or(CALIBRATE_EXACT_BELOW);
    if !(0.0..=1.0).contains(&exact_below) {
        return Err(Error::InvalidArgument { reason: format!("--exact-below {exact_below}: a share in [0, 1]") });
    }
    let dense_pass = run_passes(&mut [&mut dense], &frames, "dense")?.remove(0);
    let dense_macs = dense.dense_macs() * frames.len() as u64;
    let tty = std::io::stderr().is_terminal();
    let mut tried = Vec::new();
    let mut best: Option<(RelativeThetas, f64)> = None;
    for t in [0.03f32, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3] {
        for t_camera in [0.02f32, 0.03, 0.05, 0.07, 0.1] {
            if t_camera > t {
                continue;
            }
            let relative = RelativeThetas { t, t_camera, exact_below, noise: 0.0 };
            let mut det = m.open(options)?;
            det.enable_delta(DeltaOptions { relative: Some(relative), ..base.clone() })?;
            let pass = run_passes(&mut [&mut det], &frames, "")?.remove(0);
            let stats = det.delta_stats().expect("delta mode is on");
            let ratio = dense_macs as f64 / stats.macs().max(1) as f64;
            let drop_points = (dense_pass.map50 - pass.map50) * 100.0;
            let agree = agreement(&pass, &dense_pass, dense.classes());
            let ok = drop_points <= max_drop && agree >= min_agreement;
            if tty {
                eprintln!(
                    "t {t:<5} camera t {t_camera:<5} mAP@0.5 {:.4} (drop {drop_points:+.2} points)  agreement {agree:.4}  {ratio:.2}x fewer MACs{}",
                    pass.map50,
                    if ok { "" } else { "  over budget" }
                );
            }
            tried.push(json!({"t": t, "t_camera": t_camera, "map50": pass.map50, "map50_drop_points": drop_points,
                              "agreement_map50": agree, "mac_ratio": ratio, "fired_fraction": stats.fired_fraction(),
                              "within_budget": ok}));
            if ok && best.is_none_or(|b| ratio > b.1) {
                best = Some((relative, ratio));
            }
        }
    }
    let (relative, ratio) = best.ok_or_else(|| Error::InvalidArgument {
        reason: format!(
            "no threshold keeps mAP@0.5 within {max_drop} points of dense and agreement at {min_agreement} on this sequence"
        ),
    })?;
    let target = out.unwrap_or(m.model);
    let pak = Kpak::open(m.model, Verify::Full)?;
    let mut w = KpakWriter::from_kpak(&pak);
    w.set_metadata(RELATIVE_METADATA_KEY, &relative.format())?;
    w.set_metadata(
        "delta.calibration",
        &format!(
            "{} max_drop_points={max_drop} min_agreement={min_agreement} sequence={} frames={} dense_map50={:.4} mac_ratio={ratio:.3}",
            relative.format(),
            dir.display(),
            frames.len(),
            dense_pass.map50
        ),
    )?;
    drop(pak);
    w.write(target)?;
    let report = json!({"model": target.display().to_string(), "t": relative.t, "t_camera": relative.t_camera, "exact_below": relative.exact_below,
                        "mac_ratio": ratio, "dense_map50": dense_pass.map50, "tried": tried});
    if json {
        println!("{report}");
    } else {
        println!(
            "t = {} (camera layers {}): {ratio:.2}x fewer MACs within {max_drop} mAP points and agreement {min_agreement}; written to {}",
            relative.t,
            relative.t_camera,
            target.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! The vision commands: `synth`, `detect` and `eval`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Value};

use kestrel::vision::annotate;
use kestrel::vision::dataset::{write_synth, Dataset};
use kestrel::vision::detect::DecodeOptions;
use kestrel::vision::detector::{Detector, Device, Modality};
use kestrel::vision::eval::{evaluate, ImageResult};
use kestrel::vision::image::Image;
use kestrel::vision::synth::{CameraMotion, SynthOptions, CONDITIONS};
use kestrel::{Error, Result};

use crate::stream::DeltaArgs;

/// `WxH` -> (W, H), each in 16..=4096.
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let bad =
        || Error::InvalidArgument { reason: format!("--size {s:?}: expected WxH, e.g. 320x240, sides 16 to 4096") };
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
    if !(16..=4096).contains(&w) || !(16..=4096).contains(&h) {
        return Err(bad());
    }
    Ok((w, h))
}

pub fn synth_cmd(
    out: &Path,
    count: usize,
    seed: u64,
    size: &str,
    sequence: Option<usize>,
    camera: &str,
    json: bool,
) -> Result<ExitCode> {
    let (width, height) = parse_size(size)?;
    let camera = CameraMotion::parse(camera).ok_or_else(|| Error::InvalidArgument {
        reason: format!("--camera {camera:?}: expected mixed, static or pan"),
    })?;
    if count == 0 {
        return Err(Error::InvalidArgument { reason: "--count must be positive".into() });
    }
    if sequence == Some(0) {
        return Err(Error::InvalidArgument { reason: "--sequence must be at least 1 frame".into() });
    }
    let opts = SynthOptions { width, height, seed, sequence, camera };
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let progress = |done: usize| {
        if tty && (done.is_multiple_of(50) || done == count) {
            eprint!("\r[{done}/{count}] pairs");
        }
    };
    write_synth(out, count, &opts, &progress)?;
    if tty {
        eprintln!();
    }
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            json!({"out": out.display().to_string(), "pairs": count, "seed": seed, "width": width, "height": height,
                   "sequence": sequence, "seconds": secs, "pairs_per_minute": count as f64 / secs * 60.0})
        );
    } else {
        println!("wrote {count} pairs ({width}x{height}, seed {seed}) to {} in {secs:.1} s", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// What `detect` and `eval` share: the model and where it runs.
pub struct ModelArgs<'a> {
    pub model: &'a Path,
    pub gpu: bool,
    pub allow_software: bool,
}

impl ModelArgs<'_> {
    /// The detector with these thresholds, which must be probabilities (NaN is not).
    pub fn open(&self, options: DecodeOptions) -> Result<Detector> {
        let (score, iou) = (options.score, options.iou);
        if !(0.0..=1.0).contains(&score) || !(0.0..=1.0).contains(&iou) || iou == 0.0 {
            return Err(Error::InvalidArgument {
                reason: format!("--score {score} and --iou {iou}: the score must be in [0, 1] and the IoU in (0, 1]"),
            });
        }
        let device = if self.gpu { Device::Gpu { allow_software: self.allow_software } } else { Device::Cpu };
        let mut det = Detector::open(self.model, device)?;
        det.options = options;
        Ok(det)
    }
}

/// One frame pair to run on (either side may be absent when the model does not need it).
struct Pair {
    rgb: Option<PathBuf>,
    ir: Option<PathBuf>,
}

fn load(path: &Option<PathBuf>) -> Result<Option<Image>> {
    path.as_deref().map(Image::load).transpose()
}

/// Where `detect` reads its frames.
pub struct Source<'a> {
    pub rgb: Option<&'a Path>,
    pub ir: Option<&'a Path>,
    pub dataset: Option<&'a Path>,
    /// A sequence, run as one stream in frame order.
    pub stream: Option<&'a Path>,
}

/// Pairs from `--rgb`/`--ir` (files or folders), `--dataset` or `--stream`.
fn pairs(det: &Detector, source: &Source) -> Result<Vec<Pair>> {
    let (rgb, ir) = (source.rgb, source.ir);
    let (need_rgb, need_ir) = (det.needs(Modality::Rgb), det.needs(Modality::Ir));
    if let Some(root) = source.dataset.or(source.stream) {
        let ds = Dataset::open(root)?;
        return Ok(ds.samples.into_iter().map(|s| Pair { rgb: Some(s.rgb), ir: Some(s.ir) }).collect());
    }
    if need_rgb && rgb.is_none() {
        return Err(Error::InvalidArgument {
            reason: "the model reads a visible frame: give --rgb (or --dataset)".into(),
        });
    }
    if need_ir && ir.is_none() {
        return Err(Error::InvalidArgument {
            reason: "the model reads a thermal frame: give --ir (or --dataset)".into(),
        });
    }
    let is_dir = |p: Option<&Path>| p.is_some_and(Path::is_dir);
    if is_dir(rgb) || is_dir(ir) {
        return match (rgb, ir) {
            (Some(r), Some(i)) if r.is_dir() && i.is_dir() => {
                let root = r.parent().unwrap_or(r);
                let ds = Dataset::from_dirs(root, r, i)?;
                Ok(ds.samples.into_iter().map(|s| Pair { rgb: Some(s.rgb), ir: Some(s.ir) }).collect())
            }
            (Some(d), None) | (None, Some(d)) if d.is_dir() => {
                let mut files: Vec<PathBuf> = std::fs::read_dir(d)
                    .map_err(|e| Error::io(d, e))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension().is_some_and(|e| ["png", "jpg", "jpeg"].iter().any(|x| e.eq_ignore_ascii_case(x)))
                    })
                    .collect();
                files.sort();
                let on_rgb = rgb.is_some();
                Ok(files
                    .into_iter()
                    .map(|f| if on_rgb { Pair { rgb: Some(f), ir: None } } else { Pair { rgb: None, ir: Some(f) } })
                    .collect())
            }
            _ => Err(Error::InvalidArgument { reason: "--rgb and --ir must both be files or both be folders".into() }),
        };
    }
    Ok(vec![Pair { rgb: rgb.map(Path::to_path_buf), ir: ir.map(Path::to_path_buf) }])
}

pub fn detect_cmd(
    m: &ModelArgs,
    source: &Source,
    delta: &DeltaArgs,
    annotate: Option<&Path>,
    score: f32,
    iou: f32,
    json: bool,
) -> Result<ExitCode> {
    let mut det = m.open(DecodeOptions { score, iou, ..DecodeOptions::default() })?;
    if let Some(opts) = delta.options(&det)? {
        if source.stream.is_none() {
            return Err(Error::InvalidArgument { reason: "--delta runs on a stream: give --stream DIR".into() });
        }
        det.enable_delta(opts)?;
    }
    let pairs = pairs(&det, source)?;
    let many = pairs.len() > 1;
    if let (true, Some(dir)) = (many, annotate) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tty = std::io::stderr().is_terminal() && many;
    let mut results = Vec::new();
    for (n, p) in pairs.iter().enumerate() {
        let (a, b) = (load(&p.rgb)?, load(&p.ir)?);
        let dets = det.detect(a.as_ref(), b.as_ref())?;
        if let Some(out) = annotate {
            let picture = annotate::side_by_side(a.as_ref(), b.as_ref(), &dets, det.classes());
            let path = if many {
                let stem = p.rgb.as_ref().or(p.ir.as_ref()).and_then(|f| f.file_stem()).unwrap_or_default();
                out.join(format!("{}.png", stem.to_string_lossy()))
            } else {
                out.to_path_buf()
            };
            picture.save_png(&path)?;
        }
        let shown = |p: &Option<PathBuf>| p.as_ref().map(|f| f.display().to_string());
        let boxes: Vec<Value> = dets
            .iter()
            .map(|d| {
                json!({"class": det.classes()[d.class_id], "class_id": d.class_id, "score": d.score,
                       "box": d.box_xyxy.map(|v| (v * 100.0).round() / 100.0)})
            })
            .collect();
        if !json {
            println!("{}: {} detections", shown(&p.rgb).or(shown(&p.ir)).unwrap_or_default(), dets.len());
            for d in &dets {
                let [x1, y1, x2, y2] = d.box_xyxy;
                println!("  {:<10} {:.3}  [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}]", det.classes()[d.class_id], d.score);
            }
        }
        results.push(json!({"rgb": shown(&p.rgb), "ir": shown(&p.ir), "detections": boxes}));
        if tty {
            eprint!("\r[{}/{}] pairs", n + 1, pairs.len());
        }
    }
    if tty {
        eprintln!();
    }
    let stats = det.delta_stats().map(|s| {
        json!({"frames": s.frames, "fired_fraction": s.fired_fraction(), "macs": s.macs(), "dense_macs": s.dense_macs(),
               "keyframes": s.keyframes, "scene_cuts": s.scene_cuts})
    });
    if json {
        println!("{}", json!({"images": results, "delta": stats}));
    } else if let Some(s) = stats {
        println!(
            "delta: {} frames, {:.1}% of layer inputs fired, {:.2}x fewer MACs than dense, {} keyframes, {} scene cuts",
            s["frames"],
            s["fired_fraction"].as_f64().unwrap_or(0.0) * 100.0,
            s["dense_macs"].as_f64().unwrap_or(0.0) / s["macs"].as_f64().unwrap_or(1.0).max(1.0),
            s["keyframes"],
            s["scene_cuts"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn eval_cmd(
    m: &ModelArgs,
    dataset: &Path,
    limit: Option<usize>,
    score: f32,
    iou: f32,
    json: bool,
) -> Result<ExitCode> {
    let mut det = m.open(DecodeOptions { score, iou, max_detections: 300 })?;
    let ds = Dataset::open(dataset)?;
    let samples = &ds.samples[..limit.unwrap_or(usize::MAX).min(ds.samples.len())];
    let classes = det.classes().to_vec();
    let tty = std::io::stderr().is_terminal();
    let (mut results, mut conditions, mut ms) = (Vec::new(), Vec::new(), Vec::new());
    let (need_rgb, need_ir) = (det.needs(Modality::Rgb), det.needs(Modality::Ir));
    for (n, s) in samples.iter().enumerate() {
        let rgb = if need_rgb || !need_ir { Some(Image::load(&s.rgb)?) } else { None };
        let ir = if need_ir { Some(Image::load(&s.ir)?) } else { None };
        let frame = rgb.as_ref().or(ir.as_ref()).expect("one frame is loaded");
        let ann = ds.annotation(s, (frame.width, frame.height), &classes)?;
        let started = std::time::Instant::now();
        let dets = det.detect(rgb.as_ref(), ir.as_ref())?;
        ms.push(started.elapsed().as_secs_f64() * 1e3);
        results.push(ImageResult::new(&ann.labels, &classes, dets));
        conditions.push(ann.condition.unwrap_or_else(|| "unknown".into()));
        if tty && ((n + 1).is_multiple_of(20) || n + 1 == samples.len()) {
            eprint!("\r[{}/{}] pairs", n + 1, samples.len());
        }
    }
    if tty {
        eprintln!();
    }
    let overall = evaluate(&results, classes.len());
    let mut names: Vec<&String> = conditions.iter().collect();
    names.sort_by_key(|c| CONDITIONS.iter().position(|k| k == c).unwrap_or(usize::MAX));
    names.dedup();
    let mut per_condition = serde_json::Map::new();
    for c in names {
        let subset: Vec<&ImageResult> =
            results.iter().zip(&conditions).filter(|(_, k)| *k == c).map(|(r, _)| r).collect();
        let mm = evaluate(subset.iter().copied(), classes.len());
        per_condition
            .insert(c.clone(), json!({"map50": mm.map50(), "map50_95": mm.map50_95(), "images": subset.len()}));
    }
    let mut per_class = serde_json::Map::new();
    for (i, name) in classes.iter().enumerate() {
        let (a50, a) = overall.class(i);
        per_class.insert(name.clone(), json!({"ap50": a50, "ap50_95": a}));
    }
    ms.sort_by(f64::total_cmp);
    let median = ms.get(ms.len() / 2).copied().unwrap_or(0.0);
    let p99 = ms.get(((ms.len() as f64 * 0.99).ceil() as usize).clamp(1, ms.len().max(1)) - 1).copied().unwrap_or(0.0);
    let report = json!({
        "model": m.model.display().to_string(), "dataset": dataset.display().to_string(), "images": results.len(),
        "map50": overall.map50(), "map50_95": overall.map50_95(),
        "per_condition": per_condition, "per_class": per_class,
        "latency_ms": {"median": median, "p99": p99},
        "thresholds": {"score": score, "iou": iou},
    });
    if json {
        println!("{report}");
    } else {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        println!("{} on {} ({} pairs)", m.model.display(), dataset.display(), results.len());
        println!("  overall      mAP@0.5 {}  mAP@0.5:0.95 {}", f(overall.map50()), f(overall.map50_95()));
        for (c, v) in &per_condition {
            println!(
                "  {c:<12} mAP@0.5 {}  mAP@0.5:0.95 {}  ({} pairs)",
                f(v["map50"].as_f64()),
                f(v["map50_95"].as_f64()),
                v["images"]
            );
        }
        for (c, v) in &per_class {
            println!("  {c:<12} AP@0.5  {}  AP@0.5:0.95  {}", f(v["ap50"].as_f64()), f(v["ap50_95"].as_f64()));
        }
        println!("  latency      median {median:.2} ms, p99 {p99:.2} ms per pair (preprocess + model + decode)");
    }
    Ok(ExitCode::SUCCESS)
}

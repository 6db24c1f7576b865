//! `kestrel loop`, `kestrel calibrate` and `kestrel boards`: the controller loop in the built-in
//! world, the conformal calibration of a detector, and the board profiles.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Value};

use kestrel::board::Board;
use kestrel::control::conformal::{match_detections, Conformal, Scored, KEY_CALIBRATION};
use kestrel::control::live::{run_camera, LiveOptions};
use kestrel::control::run::{run_sim, LoopOptions, Recording, SimLoop};
use kestrel::control::sim::SimOptions;
use kestrel::control::source::DirCamera;
use kestrel::control::stats::Stage;
use kestrel::control::watchdog::Unsafe;
use kestrel::control::{Controller, ControllerOptions, FrameFault, Policy, SafeAction};
use kestrel::format::{Kpak, KpakWriter, Verify};
use kestrel::vision::dataset::Dataset;
use kestrel::vision::detect::DecodeOptions;
use kestrel::vision::image::Image;
use kestrel::vision::synth::{Condition, CONDITIONS};
use kestrel::{Error, Result};

use crate::vision::ModelArgs;

/// What `kestrel loop` was asked for.
pub struct LoopArgs<'a> {
    pub model: &'a Path,
    pub policy: &'a str,
    pub rate: Option<f64>,
    pub seconds: f64,
    pub board: Option<&'a str>,
    pub gpu: Option<bool>,
    pub allow_software: bool,
    pub fast: bool,
    pub condition: Option<&'a str>,
    pub safe: &'a str,
    pub seed: u64,
    pub record: Option<&'a Path>,
    pub json: bool,
    pub source: Source,
    pub actions: Option<&'a Path>,
    pub windows: u32,
}

/// Where `kestrel loop` gets its frames.
pub enum Source {
    /// The built-in world (closed loop).
    Sim,
    /// A folder of pairs, replayed once (open loop).
    Frames(PathBuf),
    /// Two V4L2 devices, "VISIBLE,THERMAL", at a requested "WxH".
    V4l2 { devices: String, size: String },
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Sim => "sim".into(),
            Source::Frames(dir) => format!("frames:{}", dir.display()),
            Source::V4l2 { devices, .. } => format!("v4l2:{devices}"),
        }
    }
}

/// Decisions as CSV lines (the BufWriter is made before the loop, so writing allocates nothing).
struct ActionLog(Option<Box<dyn std::io::Write>>);

impl ActionLog {
    fn open(path: Option<&Path>) -> Result<ActionLog> {
        let Some(path) = path else { return Ok(ActionLog(None)) };
        let out: Box<dyn std::io::Write> = if path == Path::new("-") {
            Box::new(std::io::BufWriter::new(std::io::stdout()))
        } else {
            let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
            Box::new(std::io::BufWriter::new(f))
        };
        let mut log = ActionLog(Some(out));
        if let Some(w) = &mut log.0 {
            writeln!(w, "cycle,dx,dy,dz,droll,dpitch,dyaw,gripper,verdict").map_err(|e| Error::io(path, e))?;
        }
        Ok(log)
    }

    fn write(&mut self, cycle: u64, d: &kestrel::control::Decision) {
        let Some(w) = &mut self.0 else { return };
        let a = &d.action.0;
        let verdict = d.unsafe_reason.map_or("ok", |u| u.name());
        // A full disk or a closed pipe must not stop the loop: the robot still gets its action.
        let _ = writeln!(
            w,
            "{cycle},{:.5},{:.5},{:.5},{:.5},{:.5},{:.5},{:.5},{verdict}",
            a[0], a[1], a[2], a[3], a[4], a[5], a[6]
        );
    }

    fn finish(&mut self) {
        if let Some(w) = &mut self.0 {
            let _ = w.flush();
        }
    }
}

fn parse_condition(s: &str) -> Result<Condition> {
    let all = [Condition::Day, Condition::Dusk, Condition::Night, Condition::Fog, Condition::Glare];
    all.into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| Error::InvalidArgument { reason: format!("--condition {s}: one of {}", CONDITIONS.join(", ")) })
}

pub fn loop_cmd(a: &LoopArgs) -> Result<ExitCode> {
    let board = a.board.map(Board::load).transpose()?;
    let rate = a.rate.or(board.as_ref().map(|b| b.runtime.loop_rate_hz)).unwrap_or(30.0);
    if !(rate.is_finite() && rate > 0.0 && rate <= 1000.0) {
        return Err(Error::InvalidArgument { reason: format!("--rate {rate}: need a rate in (0, 1000] Hz") });
    }
    if !(a.seconds.is_finite() && a.seconds >= 0.0) {
        return Err(Error::InvalidArgument {
            reason: format!("--seconds {}: need a duration (0: until stopped)", a.seconds),
        });
    }
    if a.seconds == 0.0 && a.record.is_some() {
        return Err(Error::InvalidArgument { reason: "--record needs a finite --seconds".into() });
    }
    let gpu = a.gpu.unwrap_or(board.as_ref().is_some_and(|b| b.uses_gpu()));
    if let Some(b) = &board {
        kestrel::ops::set_max_threads(b.runtime.threads as usize);
    }
    let safe = SafeAction::parse(a.safe)
        .ok_or_else(|| Error::InvalidArgument { reason: format!("--safe {}: stop, hold or hold:N", a.safe) })?;
    let condition = a.condition.map(parse_condition).transpose()?;
    let detector = ModelArgs { model: a.model, gpu, allow_software: a.allow_software }.open(DecodeOptions::default())?;
    let (policy, expert) = match a.policy {
        "expert" => (Policy::External, true),
        path => (Policy::open(Path::new(path))?, false),
    };
    let mut options = ControllerOptions::at_rate(rate);
    options.safe = safe;
    let mut ctl = Controller::new(detector, policy, options)?;
    // 0 seconds: a service, running until it is stopped.
    let cycles = if a.seconds == 0.0 { u64::MAX } else { (a.seconds * rate).round().max(1.0) as u64 };
    let opts = LoopOptions {
        rate_hz: rate,
        cycles,
        realtime: !a.fast,
        expert,
        sim: SimOptions { condition, seed: a.seed, ..SimOptions::default() },
    };
    let closed = matches!(a.source, Source::Sim);
    if !closed && (expert || a.record.is_some()) {
        return Err(Error::InvalidArgument {
            reason: "the expert and --record need the simulator's world: use them with --sim".into(),
        });
    }
    if a.windows > 0 && (!closed || a.seconds == 0.0) {
        return Err(Error::InvalidArgument { reason: "--windows needs --sim and a finite --seconds".into() });
    }
    if closed && a.actions.is_some() {
        return Err(Error::InvalidArgument {
            reason: "--actions streams open-loop decisions: use it with --frames or --v4l2".into(),
        });
    }
    let mut recording = a.record.map(|_| Recording::with_capacity(cycles as usize));
    let tty = std::io::stderr().is_terminal() && !a.json;
    if tty {
        eprintln!(
            "running {} cycles at {rate} Hz on {} ({})",
            if cycles == u64::MAX { "unbounded".to_string() } else { cycles.to_string() },
            a.source.name(),
            if a.fast { "as fast as possible" } else { "real time" }
        );
    }
    let mut actions = ActionLog::open(a.actions)?;
    let mut windows = Vec::new();
    let live = LiveOptions { rate_hz: rate, cycles, realtime: !a.fast };
    let mut sink = |cycle: u64, d: &kestrel::control::Decision| actions.write(cycle, d);
    let report = match &a.source {
        Source::Sim if a.windows > 0 => {
            let mut sim = SimLoop::new(&mut ctl, &opts)?;
            let per = (cycles / a.windows as u64).max(1);
            for w in 0..a.windows {
                for _ in 0..per {
                    sim.cycle(&mut ctl, recording.as_mut());
                }
                let row = window_row(w, &sim);
                if !a.json {
                    print_window(&row);
                }
                windows.push(row);
                sim.window.reset();
            }
            sim.finish(&ctl)
        }
        Source::Sim => run_sim(&mut ctl, &opts, recording.as_mut())?,
        Source::Frames(dir) => run_camera(&mut ctl, DirCamera::open(dir, false)?, (320, 240), &live, &mut sink)?,
        Source::V4l2 { devices, size } => {
            let (w, h) = crate::vision::parse_size(size)?;
            run_camera(&mut ctl, v4l2_camera(devices, w, h)?, (w, h), &live, &mut sink)?
        }
    };
    actions.finish();
    if let (Some(dir), Some(rec)) = (a.record, &recording) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let n = rec.rows();
        kestrel::npy::write(&dir.join("features.npy"), &[n, kestrel::control::track::FEATURES], &rec.features)?;
        kestrel::npy::write(&dir.join("actions.npy"), &[n, 7], &rec.actions)?;
        let episodes: Vec<f32> = rec.episodes.iter().map(|&e| e as f32).collect();
        kestrel::npy::write(&dir.join("episodes.npy"), &[n], &episodes)?;
    }
    let pct = |s: Stage| {
        let p = report.latency.percentiles(s);
        json!({"p50": p.p50, "p99": p.p99, "max": p.max})
    };
    let mut latency = serde_json::Map::new();
    for s in Stage::ALL {
        latency.insert(s.name().into(), pct(s));
    }
    let by_reason: serde_json::Map<String, Value> =
        Unsafe::ALL.iter().map(|u| (u.name().to_string(), json!(report.safe_by_reason[*u as usize]))).collect();
    let faults =
        [FrameFault::Missing, FrameFault::Late, FrameFault::SizeMismatch, FrameFault::Skew, FrameFault::NonFinite];
    let faults: serde_json::Map<String, Value> =
        faults.iter().map(|f| (f.name().to_string(), json!(report.faults[*f as usize]))).collect();
    let budget = board.as_ref().map(|b| b.runtime.latency_budget_ms);
    let out = json!({
        "source": a.source.name(),
        "cycles": report.cycles,
        "episodes": report.episodes,
        "success_rate": closed.then(|| report.success_rate()),
        "successes": report.successes,
        "collisions": report.collisions,
        "timeouts": report.timeouts,
        "abstentions": report.abstentions,
        "safe_actions": report.safe_actions,
        "safe_by_reason": by_reason,
        "deadline_misses": report.deadline_misses,
        "skipped_periods": report.skipped_periods,
        "frame_faults": faults,
        "detector_errors": report.detector_errors,
        "camera_errors": report.camera_errors,
        "backend_switches": report.backend_switches,
        "latency_ms": latency,
        "rate_hz": rate,
        "realtime": !a.fast,
        "backend": if gpu { "gpu" } else { "cpu" },
        "board": board.as_ref().map(|b| b.name.clone()),
        "latency_budget_ms": budget,
        "model": a.model.display().to_string(),
        "policy": a.policy,
        "conformal": ctl.conformal.map(|c| json!({"alpha": c.alpha, "qhat": c.qhat, "tau": c.tau})),
        "condition": condition.map(|c| c.name()),
        "expert_gap": {"dx": report.expert_gap[0], "dyaw": report.expert_gap[1]},
        "recorded_rows": recording.as_ref().map(|r| r.rows()),
        "windows": (a.windows > 0).then_some(windows),
    });
    if a.json {
        println!("{out}");
    } else {
        if closed {
            println!(
                "{} cycles, {} episodes: success rate {:.3} ({} collisions, {} timeouts)",
                report.cycles,
                report.episodes,
                report.success_rate(),
                report.collisions,
                report.timeouts
            );
        } else {
            println!(
                "{} cycles on {} ({} camera errors, {} detector errors, {} backend switches)",
                report.cycles,
                a.source.name(),
                report.camera_errors,
                report.detector_errors,
                report.backend_switches
            );
        }
        println!(
            "safe actions {} (abstained {}, stale {}, failed {}), deadline misses {}",
            report.safe_actions,
            report.safe_by_reason[Unsafe::Abstained as usize],
            report.safe_by_reason[Unsafe::Stale as usize],
            report.safe_by_reason[Unsafe::Failed as usize],
            report.deadline_misses
        );
        for s in Stage::ALL {
            let p = report.latency.percentiles(s);
            println!("  {:<9} p50 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms", s.name(), p.p50, p.p99, p.max);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One soak window: its stage percentiles, then the state of the process at its end.
fn window_row(index: u32, sim: &SimLoop) -> Value {
    let pct = |s: Stage| {
        let p = sim.window.percentiles(s);
        json!({"p50": p.p50, "p99": p.p99, "max": p.max})
    };
    json!({
        "window": index,
        "cycles": sim.cycles(),
        "total": pct(Stage::Total),
        "perceive": pct(Stage::Perceive),
        "deadline_misses": sim.report.deadline_misses,
        "drift_ms": sim.drift_ms(),
        "rss_mib": kestrel::control::stats::resident_bytes().map(|b| b as f64 / (1 << 20) as f64),
    })
}

fn print_window(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "window {:>3}  cycles {:>7}  total p50 {:6.2} p99 {:6.2} max {:7.2} ms  misses {:>5}  drift {:+7.2} ms  rss {:7.1} MiB",
        r["window"],
        r["cycles"],
        f(&r["total"]["p50"]),
        f(&r["total"]["p99"]),
        f(&r["total"]["max"]),
        r["deadline_misses"],
        f(&r["drift_ms"]),
        f(&r["rss_mib"]),
    );
}

#[cfg(all(feature = "v4l2", target_os = "linux"))]
fn v4l2_camera(devices: &str, width: usize, height: usize) -> Result<kestrel::control::v4l2::V4l2Camera> {
    let Some((visible, thermal)) = devices.split_once(',') else {
        return Err(Error::InvalidArgument { reason: format!("--v4l2 {devices:?}: expected VISIBLE,THERMAL") });
    };
    kestrel::control::v4l2::V4l2Camera::open(Path::new(visible), Path::new(thermal), width as u32, height as u32)
}

#[cfg(not(all(feature = "v4l2", target_os = "linux")))]
fn v4l2_camera(devices: &str, _: usize, _: usize) -> Result<kestrel::control::source::SimCamera> {
    Err(Error::Unsupported {
        what: format!(
            "--v4l2 {devices}: this kestrel was built without the v4l2 feature (cargo build --features v4l2)"
        ),
    })
}

/// Detections of every labelled pair in `dir`, matched to the labels.
fn score_dataset(
    det: &mut kestrel::vision::detector::Detector,
    dir: &Path,
    limit: Option<usize>,
) -> Result<Vec<Scored>> {
    let ds = Dataset::open(dir)?;
    let classes = det.classes().to_vec();
    let nc = classes.len();
    let mut out = Vec::new();
    let samples = &ds.samples[..limit.unwrap_or(usize::MAX).min(ds.samples.len())];
    let tty = std::io::stderr().is_terminal();
    for (n, s) in samples.iter().enumerate() {
        let rgb = Image::load(&s.rgb)?;
        let ir = Image::load(&s.ir)?;
        let ann = ds.annotation(s, (rgb.width, rgb.height), &classes)?;
        let dets = det.detect(Some(&rgb), Some(&ir))?;
        let labels: Vec<(usize, [f32; 4])> = ann
            .labels
            .iter()
            .filter(|l| !l.difficult)
            .filter_map(|l| classes.iter().position(|c| *c == l.class).map(|c| (c, l.box_xyxy)))
            .collect();
        out.extend(match_detections(
            &dets,
            |d| {
                let mut p = vec![0.0; nc];
                det.class_probs(d, &mut p);
                p
            },
            &labels,
        ));
        if tty && ((n + 1).is_multiple_of(20) || n + 1 == samples.len()) {
            eprint!("\r[{}/{}] {}", n + 1, samples.len(), dir.display());
        }
    }
    if tty {
        eprintln!();
    }
    Ok(out)
}

fn coverage_json(c: &kestrel::control::conformal::Coverage) -> Value {
    json!({"detections": c.matched + c.background, "matched": c.matched, "coverage": c.coverage(),
           "mean_set_size": c.mean_set_size, "abstention_rate": c.abstention_rate(),
           "background": c.background, "background_abstained": c.background_abstained,
           "matched_abstained": c.matched_abstained})
}

#[allow(clippy::too_many_arguments)]
pub fn calibrate_cmd(
    m: &ModelArgs,
    dataset: &Path,
    alpha: f64,
    holdout: Option<&Path>,
    limit: Option<usize>,
    out: Option<&Path>,
    json_out: bool,
) -> Result<ExitCode> {
    let mut det = m.open(DecodeOptions::default())?;
    let cal = score_dataset(&mut det, dataset, limit)?;
    let c = Conformal::calibrate(&cal, alpha)?;
    let on_cal = c.evaluate(&cal);
    let held = holdout.map(|h| score_dataset(&mut det, h, limit)).transpose()?.map(|s| c.evaluate(&s));
    let target: PathBuf = out.unwrap_or(m.model).to_path_buf();
    let pak = Kpak::open(m.model, Verify::Full)?;
    let mut w = KpakWriter::from_kpak(&pak);
    for (k, v) in c.to_metadata() {
        w.set_metadata(&k, &v)?;
    }
    w.set_metadata(
        KEY_CALIBRATION,
        &format!(
            "score=1-p_class uncertainty=-ln(p_max) detection_score>={} match_iou=0.5 dataset={} detections={} matched={}",
            det.options.score,
            dataset.display(),
            cal.len(),
            on_cal.matched
        ),
    )?;
    drop(pak);
    w.write(&target)?;
    let report = json!({"model": target.display().to_string(), "alpha": c.alpha, "qhat": c.qhat, "tau": c.tau,
                        "calibration": coverage_json(&on_cal), "holdout": held.as_ref().map(coverage_json)});
    if json_out {
        println!("{report}");
    } else {
        println!("alpha {} -> qhat {:.4} (score 1 - p_class), tau {:.4} (-ln p_max)", c.alpha, c.qhat, c.tau);
        println!(
            "calibration: {} matched detections, coverage {:.3}, mean set size {:.2}",
            on_cal.matched,
            on_cal.coverage(),
            on_cal.mean_set_size
        );
        if let Some(h) = &held {
            println!(
                "held out: {} matched detections, coverage {:.3} (target >= {:.3}), abstained {:.3} of all, {:.3} of background",
                h.matched,
                h.coverage(),
                1.0 - alpha,
                h.abstention_rate(),
                h.background_abstained as f64 / h.background.max(1) as f64
            );
        }
        println!("wrote {}", target.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn boards_cmd(json_out: bool) -> Result<ExitCode> {
    let boards = Board::shipped()?;
    if json_out {
        let list: Vec<Value> = boards
            .iter()
            .map(|b| {
                json!({"name": b.name, "description": b.description, "arch": b.arch, "target": b.target,
                       "glibc": b.glibc, "memory_mib": b.memory.size_mib, "bandwidth_gbs": b.memory.bandwidth_gbs,
                       "gpu": b.gpu.description, "power_mode": b.runtime.power_mode,
                       "power_modes": b.power_modes.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                       "weight_bits": b.runtime.weight_bits, "backend": b.runtime.backend,
                       "loop_rate_hz": b.runtime.loop_rate_hz, "latency_budget_ms": b.runtime.latency_budget_ms})
            })
            .collect();
        println!("{}", json!({"boards": list}));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<18} {:>8} {:>7} {:>5} {:>7} {:>6} {:>7}  power mode",
        "board", "memory", "GB/s", "bits", "backend", "Hz", "budget"
    );
    for b in &boards {
        println!(
            "{:<18} {:>5} MiB {:>7.1} {:>5} {:>7} {:>6.0} {:>4.0} ms  {} (of {})",
            b.name,
            b.memory.size_mib,
            b.memory.bandwidth_gbs,
            b.runtime.weight_bits,
            b.runtime.backend,
            b.runtime.loop_rate_hz,
            b.runtime.latency_budget_ms,
            b.runtime.power_mode,
            b.power_modes.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! The kestrel command-line tool. Every command that reports numbers takes `--json` and prints one
//! JSON object on stdout; errors exit with status 1 and one `error: ...` line on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use kestrel::backend::gpu::{self, Activation, GpuContext, GpuOptions, Reduction};
use kestrel::backend::BackendKind;
use kestrel::bench::{self, BenchConfig};
use kestrel::format::{Kpak, Verify};
use kestrel::rng::SplitMix64;
use kestrel::selftest::{self, KernelCheck};
use kestrel::tensor::Scheme;
use kestrel::tol::{rel_l2, Tol};
use kestrel::{Error, Result};

mod bundle;
mod control;
mod reliability;
mod stream;
mod vision;

#[derive(Parser)]
#[command(name = "kestrel", version, about = "Embedded inference runtime for robots")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum BackendArg {
    Cpu,
    Gpu,
    All,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum VerifyArg {
    Full,
    Structure,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum ReductionArg {
    Shared,
    Subgroup,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum AttentionArg {
    Care,
    Softmax,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum ActivationArg {
    F32,
    F16,
}

#[derive(clap::Args, Default)]
struct GpuArgs {
    /// Allow a software GPU adapter such as lavapipe (also KESTREL_ALLOW_SOFTWARE_GPU=1).
    #[arg(long)]
    allow_software: bool,
}

impl GpuArgs {
    fn context(&self) -> Result<GpuContext> {
        let mut opts = GpuOptions::from_env();
        opts.allow_software |= self.allow_software;
        GpuContext::new(&opts)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show a .kpak file: header, metadata, and the tensor table with checksum status.
    Info {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// Switch int8 masters to this many bits (8, 4 or 2) and show the derived formats.
        #[arg(long)]
        bits: Option<u32>,
    },
    /// Check every kernel and format on fresh random data against a float64 reference.
    Selftest {
        #[arg(long, value_enum, default_value = "all")]
        backend: BackendArg,
        #[arg(long)]
        json: bool,
        /// Also verify this model and check each of its matrices on every backend.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Bit width for the model's int8 masters (8, 4 or 2).
        #[arg(long)]
        bits: Option<u32>,
        /// Seed for the random data (default: from the clock, fresh every run).
        #[arg(long)]
        seed: Option<u64>,
        /// First verify a bundle's files against its MANIFEST.sha256 (refuses a damaged bundle).
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Measure GEMV / GEMM against the device's copy bandwidth.
    Bench {
        /// `gemv`, `gemm`, `attention`, or a model (.kpak or .onnx) to time end to end.
        kind: String,
        /// Attention only: CARE's linear attention or softmax attention.
        #[arg(long = "kind", value_enum, default_value = "care")]
        attention: AttentionArg,
        /// Attention only: tokens N.
        #[arg(long, default_value_t = 1024)]
        tokens: usize,
        /// Attention only: features per head (queries, keys and values).
        #[arg(long, default_value_t = 64)]
        dim: usize,
        /// Attention only: heads.
        #[arg(long, default_value_t = 1)]
        heads: usize,
        /// f32, f16, q8, q4 (= q4g128), q4g32, q4g64, q4g128, fp4 (= MXFP4), fp4g64-f16, ...
        #[arg(long, default_value = "q4")]
        weights: String,
        #[arg(long, default_value_t = 4096)]
        n: usize,
        #[arg(long, default_value_t = 4096)]
        k: usize,
        /// Activation rows (GEMM only).
        #[arg(long, default_value_t = 64)]
        m: usize,
        /// Where to run (default: the board's backend with --board, else cpu).
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// GPU reduction (default: subgroup where the device has it).
        #[arg(long, value_enum)]
        reduction: Option<ReductionArg>,
        /// GPU activation storage (default f32; f16 needs SHADER_F16).
        #[arg(long, value_enum)]
        act: Option<ActivationArg>,
        /// GPU GEMV rows per workgroup: 4, 8 or 16 (default 4).
        #[arg(long)]
        rows: Option<u32>,
        /// Model benchmarks: print the time per op type and the slowest nodes.
        #[arg(long)]
        profile: bool,
        /// With --profile: how many of the slowest nodes to list.
        #[arg(long, default_value_t = 8)]
        top: usize,
        /// CPU worker threads for model benchmarks (default: every core).
        #[arg(long)]
        threads: Option<usize>,
        /// A board profile (`kestrel boards`): its backend and worker threads.
        #[arg(long)]
        board: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Run a model on .npy inputs and write every output as .npy.
    Run {
        /// A packed model (.kpak), or an .onnx file imported on the fly.
        model: PathBuf,
        /// NAME=FILE.npy for each graph input (NAME may be omitted for a single input).
        #[arg(long = "input", required = true)]
        inputs: Vec<String>,
        #[arg(long)]
        output_dir: PathBuf,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Import an ONNX model and pack it into a .kpak with the chosen weight precision.
    Pack {
        /// The .onnx file (opsets 13 to 21, static shapes).
        model: PathBuf,
        #[arg(long, short)]
        out: PathBuf,
        /// Precision of conv and matmul weights: f32, f16, q8, q4, q4g32, q4g64, q4g128, fp4.
        #[arg(long, default_value = "f32")]
        weights: String,
        /// Per-layer override by node-name pattern, e.g. 'model.22.*=f16' (repeatable).
        #[arg(long = "layer")]
        layers: Vec<String>,
        /// Quantize the first conv and the output convs too (by default they stay f32).
        #[arg(long)]
        quantize_ends: bool,
        #[arg(long)]
        json: bool,
    },
    /// Generate paired RGB + infrared frames of street scenes with boxes (LLVIP layout, plus YOLO
    /// labels and an index of conditions).
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Frame size WxH.
        #[arg(long, default_value = "320x240")]
        size: String,
        /// Write video clips of this many frames (static or slowly panning camera, moving objects).
        #[arg(long)]
        sequence: Option<usize>,
        /// Camera of the clips: mixed (half pan), static or pan.
        #[arg(long, default_value = "mixed", requires = "sequence")]
        camera: String,
        #[arg(long)]
        json: bool,
    },
    /// Detect objects in RGB + infrared frame pairs (files, folders paired by name, or a dataset).
    Detect {
        #[arg(long)]
        model: PathBuf,
        /// Visible frame (.png), or a folder of them.
        #[arg(long)]
        rgb: Option<PathBuf>,
        /// Thermal frame (.png), or a folder of them (paired with --rgb by file name).
        #[arg(long)]
        ir: Option<PathBuf>,
        /// A dataset folder (LLVIP, M3FD-style or YOLO-txt layout) instead of --rgb/--ir.
        #[arg(long, conflicts_with_all = ["rgb", "ir"])]
        dataset: Option<PathBuf>,
        /// A video sequence in a dataset folder's layout, run frame after frame as one stream
        /// (frames in file-name order); see --delta.
        #[arg(long, conflicts_with_all = ["rgb", "ir", "dataset"])]
        stream: Option<PathBuf>,
        #[command(flatten)]
        delta: stream::DeltaArgs,
        /// Write the frames side by side with the boxes (a .png; a folder for several pairs).
        #[arg(long)]
        annotate: Option<PathBuf>,
        /// Minimum class score.
        #[arg(long, default_value_t = 0.25)]
        score: f32,
        /// NMS IoU threshold (per class).
        #[arg(long, default_value_t = 0.45)]
        iou: f32,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// COCO-style mAP of a detector on a paired dataset, overall, per condition and per class.
    Eval {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, required_unless_present = "sequence")]
        dataset: Option<PathBuf>,
        /// A video sequence (dataset layout): runs its frames as a stream, dense and, with
        /// --delta, in delta mode too, and compares MACs, latency and mAP@0.5.
        #[arg(long, conflicts_with_all = ["dataset", "limit"])]
        sequence: Option<PathBuf>,
        #[command(flatten)]
        delta: stream::DeltaArgs,
        /// With --sequence: the time per op type, dense and delta (stderr).
        #[arg(long, requires = "sequence")]
        profile: bool,
        /// Evaluate the first N pairs only.
        #[arg(long)]
        limit: Option<usize>,
        /// Minimum class score (low, for mAP: the curve needs the uncertain detections too).
        #[arg(long, default_value_t = 0.001)]
        score: f32,
        #[arg(long, default_value_t = 0.7)]
        iou: f32,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Choose per-layer delta thresholds for a target accuracy drop on a sequence, and store them
    /// in the model's metadata (used by `--delta` with no value).
    CalibrateDelta {
        #[arg(long)]
        model: PathBuf,
        /// A video sequence with labels (dataset layout), e.g. from `kestrel synth --sequence`.
        #[arg(long)]
        sequence: PathBuf,
        /// Largest mAP@0.5 loss against dense, in points (1 = 0.01).
        #[arg(long, default_value_t = 1.0)]
        max_drop: f64,
        /// Smallest agreement with dense: mAP@0.5 of the delta detections against the dense
        /// ones (score >= 0.25) as labels. Guards against a sequence too easy for mAP to move.
        /// (On the shipped detector, agreement on a held-out sequence ran 1 to 2 points below
        /// the calibration sequence's, and a 0.97 floor let held-out mAP drop 2.8 points.)
        #[arg(long, default_value_t = 0.98)]
        min_agreement: f64,
        /// Write the calibrated model here instead of over --model.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        delta: stream::DeltaArgs,
        #[arg(long)]
        json: bool,
    },
    /// Flip random bits in a copy of the stored weights at bit-error rate B and report mAP@0.5
    /// over the trials (PAPERS.md section 10): `n = stored bits x B` flips per tensor, biases
    /// and scales included. Lists (--ber 1e-7,1e-5 --clip none,hybrid) sweep, a JSON line each.
    Faults {
        #[arg(long)]
        model: PathBuf,
        /// A labelled dataset of pairs.
        #[arg(long)]
        dataset: PathBuf,
        #[arg(long)]
        ber: String,
        #[arg(long, default_value_t = 10)]
        trials: u32,
        /// none, layer or hybrid (thresholds from `kestrel calibrate-clip`).
        #[arg(long, default_value = "none")]
        clip: String,
        /// Weight format the faults land in: stored, f32 or q4.
        #[arg(long, default_value = "stored")]
        precision: String,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// ProAct clipping thresholds from activation statistics (the largest output of each
    /// ReLU/SiLU layer, per channel on the last ones), stored in the model's graph.
    CalibrateClip {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        dataset: PathBuf,
        #[arg(long)]
        limit: Option<usize>,
        /// Write the calibrated model here instead of over --model.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run the controller loop: camera pairs -> detector -> conformal verdicts -> policy ->
    /// watchdog -> actions, at a fixed rate in the built-in world (paired RGB + thermal camera,
    /// a target person to follow, others to avoid). Reports success, safe actions, deadline
    /// misses and per-stage latency.
    Loop {
        /// Run in the built-in simulator (the default source, and the only closed-loop one).
        #[arg(long, default_value_t = true)]
        sim: bool,
        /// Open loop on a folder of visible/infrared pairs (LLVIP or `kestrel synth` layout),
        /// replayed once at the loop's rate (as fast as possible with --fast).
        #[arg(long, conflicts_with = "v4l2")]
        frames: Option<PathBuf>,
        /// Open loop on two V4L2 cameras, VISIBLE,THERMAL (e.g. /dev/video0,/dev/video2);
        /// needs a build with `--features v4l2`.
        #[arg(long)]
        v4l2: Option<String>,
        /// Capture size asked of the V4L2 cameras (the driver may pick the nearest).
        #[arg(long, default_value = "640x480")]
        size: String,
        /// Split the run into this many windows and report each one's latency percentiles,
        /// resident memory, deadline misses and clock drift (soak runs; --sim only).
        #[arg(long, default_value_t = 0)]
        windows: u32,
        /// Write every decision here as CSV (cycle, the 7 action values, the safe-action
        /// reason or "ok"); `-` for standard output.
        #[arg(long)]
        actions: Option<PathBuf>,
        #[arg(long, default_value = "models/rgbir-fused.kpak")]
        model: PathBuf,
        /// A packed policy network, or `expert` for the scripted (privileged) controller.
        #[arg(long, default_value = "models/policy.kpak")]
        policy: String,
        /// Control rate (default: the board's, else 30 Hz).
        #[arg(long)]
        rate: Option<f64>,
        /// Simulated seconds to run (rate x seconds cycles).
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// A board profile (`kestrel boards`): its rate, backend and threads.
        #[arg(long)]
        board: Option<String>,
        /// Run perception here (default: the board's backend, else cpu).
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
        /// Do not keep the wall clock: run cycles back to back and wait for every frame.
        #[arg(long)]
        fast: bool,
        /// Every episode under this condition (day, dusk, night, fog, glare).
        #[arg(long)]
        condition: Option<String>,
        /// The safe action: stop, hold or hold:N (repeat the last good action N periods).
        #[arg(long, default_value = "stop")]
        safe: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write demonstrations (features.npy, actions.npy with the expert's labels,
        /// episodes.npy) here, for tools/train_policy.py.
        #[arg(long)]
        record: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Conformal calibration of a detector (PAPERS.md section 11): the class-set threshold
    /// q-hat at level alpha and a label-free abstention threshold, stored in the model.
    Calibrate {
        #[arg(long)]
        model: PathBuf,
        /// A labelled dataset of pairs (e.g. from `kestrel synth`).
        #[arg(long)]
        dataset: PathBuf,
        #[arg(long, default_value_t = 0.1)]
        alpha: f64,
        /// A second labelled dataset to report coverage on.
        #[arg(long)]
        holdout: Option<PathBuf>,
        #[arg(long)]
        limit: Option<usize>,
        /// Write the calibrated model here instead of over --model.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
        backend: BackendArg,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Make a deployable bundle for a board: the cross-compiled binary and library, the models
    /// at the board's precision, the board profile, the C header, a systemd unit, a README and
    /// a checksum manifest.
    Bundle {
        #[arg(long)]
        board: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "models/rgbir-fused.kpak")]
        model: PathBuf,
        #[arg(long, default_value = "models/policy.kpak")]
        policy: PathBuf,
        /// Use the artifacts already in target/ instead of running cargo.
        #[arg(long)]
        no_build: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the board profiles.
    Boards {
        #[arg(long)]
        json: bool,
    },
    /// Write the demo model (models/demo-mlp.kpak) from its seed.
    DemoModel {
        #[arg(long, short)]
        out: PathBuf,
        #[arg(long, default_value_t = kestrel::demo::DEMO_SEED)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    // `kestrel info model.kpak | head` must end quietly when the reader goes away, as Unix tools
    // do, instead of panicking on a failed print.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("error: {first} (see kestrel --help)");
            return ExitCode::FAILURE;
        }
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Info { file, json, bits } => info(&file, json, bits),
        Command::Selftest { backend, json, model, bits, seed, bundle, gpu } => {
            if let Some(dir) = bundle {
                if !bundle::verify_bundle(&dir, json)? {
                    return Err(Error::InvalidArgument {
                        reason: format!("bundle {} does not match its manifest", dir.display()),
                    });
                }
            }
            selftest_cmd(backend, json, model, bits, seed, &gpu)
        }
        Command::Bench {
            kind,
            attention,
            tokens,
            dim,
            heads,
            weights,
            n,
            k,
            m,
            backend,
            runs,
            reduction,
            act,
            rows,
            json,
            profile,
            top,
            threads,
            board,
            gpu,
        } => {
            let board = board.as_deref().map(kestrel::board::Board::load).transpose()?;
            if let Some(t) = threads.or(board.as_ref().map(|b| b.runtime.threads as usize)) {
                kestrel::ops::set_max_threads(t.max(1));
            }
            let backend = backend.unwrap_or(match &board {
                Some(b) if b.uses_gpu() => BackendArg::Gpu,
                _ => BackendArg::Cpu,
            });
            if kind == "attention" {
                return bench_attention_cmd(attention, tokens, dim, heads, backend, runs, json, &gpu);
            }
            if kind != "gemv" && kind != "gemm" {
                return bench_model_cmd(std::path::Path::new(&kind), backend, runs, json, profile.then_some(top), &gpu);
            }
            let backend = match backend {
                BackendArg::Cpu => BackendKind::Cpu,
                BackendArg::Gpu => BackendKind::Gpu,
                BackendArg::All => {
                    return Err(Error::InvalidArgument { reason: "bench runs one backend: cpu or gpu".into() })
                }
            };
            let cfg = BenchConfig {
                scheme: Scheme::parse(&weights)?,
                n,
                k,
                m: if kind == "gemv" { 1 } else { m },
                backend,
                runs,
                reduction: reduction.map(|r| match r {
                    ReductionArg::Shared => Reduction::Shared,
                    ReductionArg::Subgroup => Reduction::Subgroup,
                }),
                activation: act.map(|a| match a {
                    ActivationArg::F32 => Activation::F32,
                    ActivationArg::F16 => Activation::F16,
                }),
                rows,
            };
            bench_cmd(&cfg, json, &gpu)
        }
        Command::Run { model, inputs, output_dir, backend, gpu } => {
            run_cmd(&model, &inputs, &output_dir, backend, &gpu)
        }
        Command::Pack { model, out, weights, layers, quantize_ends, json } => {
            pack_cmd(&model, &out, &weights, &layers, !quantize_ends, json)
        }
        Command::Synth { out, count, seed, size, sequence, camera, json } => {
            vision::synth_cmd(&out, count, seed, &size, sequence, &camera, json)
        }
        Command::Detect { model, rgb, ir, dataset, stream, delta, annotate, score, iou, backend, json, gpu } => {
            let m = model_args(&model, backend, &gpu)?;
            let source = vision::Source {
                rgb: rgb.as_deref(),
                ir: ir.as_deref(),
                dataset: dataset.as_deref(),
                stream: stream.as_deref(),
            };
            vision::detect_cmd(&m, &source, &delta, annotate.as_deref(), score, iou, json)
        }
        Command::Eval { model, dataset, sequence, delta, profile, limit, score, iou, backend, json, gpu } => {
            let m = model_args(&model, backend, &gpu)?;
            match (sequence, dataset) {
                (Some(seq), _) => stream::eval_sequence_cmd(&m, &seq, &delta, profile, json),
                (None, Some(ds)) if delta.delta.is_none() => vision::eval_cmd(&m, &ds, limit, score, iou, json),
                (None, Some(_)) => Err(kestrel::Error::InvalidArgument {
                    reason: "--delta runs on a stream: give --sequence DIR instead of --dataset".into(),
                }),
                (None, None) => unreachable!("clap requires --dataset or --sequence"),
            }
        }
        Command::Faults { model, dataset, ber, trials, clip, precision, limit, seed, json } => {
            reliability::faults_cmd(&reliability::FaultArgs {
                model: &model,
                dataset: &dataset,
                bers: &ber,
                trials,
                clips: &clip,
                precision: &precision,
                limit,
                seed,
                json,
            })
        }
        Command::CalibrateClip { model, dataset, limit, out, json } => {
            reliability::calibrate_clip_cmd(&model, &dataset, limit, out.as_deref(), json)
        }
        Command::CalibrateDelta { model, sequence, max_drop, min_agreement, out, delta, json } => {
            let m = model_args(&model, BackendArg::Cpu, &GpuArgs::default())?;
            stream::calibrate_delta_cmd(&m, &sequence, max_drop, min_agreement, out.as_deref(), &delta, json)
        }
        Command::Loop {
            sim,
            frames,
            v4l2,
            size,
            actions,
            windows,
            model,
            policy,
            rate,
            seconds,
            board,
            backend,
            fast,
            condition,
            safe,
            seed,
            record,
            json,
            gpu,
        } => {
            let source = match (frames, v4l2) {
                (Some(dir), _) => control::Source::Frames(dir),
                (None, Some(devices)) => control::Source::V4l2 { devices, size },
                (None, None) if sim => control::Source::Sim,
                (None, None) => {
                    return Err(Error::InvalidArgument {
                        reason: "no frame source: --sim (the default), --frames DIR or --v4l2 VISIBLE,THERMAL".into(),
                    })
                }
            };
            let m = model_args(&model, backend.unwrap_or(BackendArg::Cpu), &gpu)?;
            let args = control::LoopArgs {
                model: &model,
                policy: &policy,
                rate,
                seconds,
                board: board.as_deref(),
                gpu: backend.map(|b| matches!(b, BackendArg::Gpu)),
                allow_software: m.allow_software,
                fast,
                condition: condition.as_deref(),
                safe: &safe,
                seed,
                record: record.as_deref(),
                json,
                source,
                actions: actions.as_deref(),
                windows,
            };
            control::loop_cmd(&args)
        }
        Command::Calibrate { model, dataset, alpha, holdout, limit, out, backend, json, gpu } => {
            let m = model_args(&model, backend, &gpu)?;
            control::calibrate_cmd(&m, &dataset, alpha, holdout.as_deref(), limit, out.as_deref(), json)
        }
        Command::Boards { json } => control::boards_cmd(json),
        Command::Bundle { board, out, model, policy, no_build, json } => bundle::bundle_cmd(&bundle::BundleArgs {
            board: &board,
            out: &out,
            model: &model,
            policy: &policy,
            no_build,
            json,
        }),
        Command::DemoModel { out, seed } => {
            kestrel::demo::build_demo_model(seed)?.write(&out)?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn model_args<'a>(model: &'a std::path::Path, backend: BackendArg, gpu: &GpuArgs) -> Result<vision::ModelArgs<'a>> {
    let on_gpu = match backend {
        BackendArg::Cpu => false,
        BackendArg::Gpu => true,
        BackendArg::All => return Err(Error::InvalidArgument { reason: "run on one backend: cpu or gpu".into() }),
    };
    let allow_software = gpu.allow_software || std::env::var("KESTREL_ALLOW_SOFTWARE_GPU").is_ok_and(|v| v == "1");
    Ok(vision::ModelArgs { model, gpu: on_gpu, allow_software })
}

fn info(file: &PathBuf, json: bool, bits: Option<u32>) -> Result<ExitCode> {
    // Open with the structure checked, then hash each tensor so the table can show which
    // tensor is damaged rather than stopping at the first.
    let pak = Kpak::open(file, Verify::Structure)?;
    let data = pak.sections().iter().find(|s| s.kind == kestrel::format::SectionKind::Data).copied();
    let data_ok = data.is_some_and(|s| {
        kestrel::format::crc32(&pak.bytes()[s.offset as usize..(s.offset + s.len) as usize]) == s.crc32
    });
    let mut rows = Vec::new();
    let mut all_ok = data_ok;
    for t in pak.tensors() {
        let status = match pak.verify_tensor(t) {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                all_ok = false;
                e.to_string()
            }
        };
        let format = match (bits, t.bitswitch_master) {
            (Some(b), true) => {
                format!("{} -> {}", t.scheme.label(), pak.matrix_at_bits(&t.name, Some(b))?.view().scheme.label())
            }
            _ => t.scheme.label(),
        };
        rows.push((t, format, status));
    }
    let (major, minor) = pak.version();
    if json {
        let tensors: Vec<Value> = rows
            .iter()
            .map(|(t, format, status)| {
                json!({
                    "name": t.name, "format": format, "shape": t.shape, "bytes": t.bytes(),
                    "lorc_rank": t.lorc_rank, "bitswitch_master": t.bitswitch_master,
                    "checksum": status,
                    "components": t.components.iter().map(|c| json!({
                        "kind": c.kind.name(), "offset": c.offset, "bytes": c.len, "crc32": format!("{:08x}", c.crc32)
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let meta: serde_json::Map<String, Value> = pak.metadata().iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let out = json!({
            "file": file.display().to_string(),
            "version": format!("{major}.{minor}"),
            "file_bytes": pak.bytes().len(),
            "sections": pak.sections().iter().map(|s| json!({"kind": s.kind.name(), "offset": s.offset, "bytes": s.len, "crc32": format!("{:08x}", s.crc32)})).collect::<Vec<_>>(),
            "data_checksum": if data_ok { "ok" } else { "mismatch" },
            "metadata": meta,
            "tensors": tensors,
            "verified": all_ok,
            "graph": pak.graph().map(graph_json),
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON values serialise"));
    } else {
        println!(
            "{}: .kpak {major}.{minor}, {} bytes, {} tensors",
            file.display(),
            pak.bytes().len(),
            pak.tensors().len()
        );
        for s in pak.sections() {
            println!(
                "  section {:<8} offset {:>8}  {:>10} bytes  crc32 {:08x}",
                s.kind.name(),
                s.offset,
                s.len,
                s.crc32
            );
        }
        println!("  data checksum: {}", if data_ok { "ok" } else { "MISMATCH" });
        println!("metadata:");
        for (k, v) in pak.metadata() {
            println!("  {k}: {v}");
        }
        println!("tensors:");
        println!("  {:<24} {:<34} {:<14} {:>10}  {:<6} checksum", "name", "format", "shape", "bytes", "lorc");
        for (t, format, status) in &rows {
            let lorc = if t.lorc_rank > 0 { format!("r{}", t.lorc_rank) } else { "-".into() };
            let master = if t.bitswitch_master { " (int8 master)" } else { "" };
            println!(
                "  {:<24} {:<34} {:<14} {:>10}  {:<6} {status}",
                t.name,
                format!("{format}{master}"),
                format!("{:?}", t.shape),
                t.bytes(),
                lorc
            );
        }
        if let Some(g) = pak.graph() {
            let plan = kestrel::graph::plan::plan_activation_memory(g);
            let io = |ids: &[usize]| {
                ids.iter()
                    .map(|&v| format!("{} {:?}", g.values[v].name, g.values[v].shape))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!("graph: {} nodes, peak activations {} bytes", g.nodes.len(), plan.arena_bytes);
            println!("  inputs: {}", io(&g.inputs));
            println!("  outputs: {}", io(&g.outputs));
            let ops: Vec<String> = g.op_histogram().iter().map(|(op, n)| format!("{op} {n}")).collect();
            println!("  ops: {}", ops.join(", "));
        }
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn graph_json(g: &kestrel::graph::Graph) -> Value {
    let plan = kestrel::graph::plan::plan_activation_memory(g);
    let io = |ids: &[usize]| -> Vec<Value> {
        ids.iter().map(|&v| json!({"name": g.values[v].name, "shape": g.values[v].shape})).collect()
    };
    let ops: serde_json::Map<String, Value> = g.op_histogram().into_iter().map(|(op, n)| (op, json!(n))).collect();
    json!({
        "nodes": g.nodes.len(), "inputs": io(&g.inputs), "outputs": io(&g.outputs),
        "ops": ops, "peak_activation_bytes": plan.arena_bytes,
    })
}

/// A model prepared on one backend.
enum Runner {
    Cpu(Box<kestrel::exec::CpuExecutor>),
    Gpu(Box<(GpuContext, kestrel::exec::GpuExecutor)>),
}

impl Runner {
    fn input_shapes(&self) -> &[Vec<usize>] {
        match self {
            Runner::Cpu(e) => e.input_shapes(),
            Runner::Gpu(b) => b.1.input_shapes(),
        }
    }

    fn arena_bytes(&self) -> usize {
        match self {
            Runner::Cpu(e) => e.arena_bytes(),
            Runner::Gpu(b) => b.1.arena_bytes(),
        }
    }

    fn run(&mut self, inputs: &[&[f32]]) -> Result<()> {
        match self {
            Runner::Cpu(e) => e.run(inputs),
            Runner::Gpu(b) => b.1.run(&b.0, inputs),
        }
    }

    fn output(&self, i: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        match self {
            Runner::Cpu(e) => Ok((e.output_shape(i).to_vec(), e.output(i).to_vec())),
            Runner::Gpu(b) => {
                let shape = b.1.output_shape(i).to_vec();
                let mut out = vec![0f32; shape.iter().product()];
                b.1.read_output(&b.0, i, &mut out)?;
                Ok((shape, out))
            }
        }
    }

    fn backend(&self) -> String {
        match self {
            Runner::Cpu(_) => format!("cpu ({} threads)", kestrel::ops::max_threads()),
            Runner::Gpu(b) => format!("gpu: {}", b.0.adapter_name()),
        }
    }
}

/// A model file prepared on `backend`, with its graph's input and output names.
fn load_runner(
    model: &std::path::Path,
    backend: BackendArg,
    gpu: &GpuArgs,
) -> Result<(Runner, Vec<String>, Vec<String>)> {
    let names =
        |g: &kestrel::graph::Graph, ids: &[usize]| ids.iter().map(|&v| g.values[v].name.clone()).collect::<Vec<_>>();
    let ctx = match backend {
        BackendArg::Cpu => None,
        BackendArg::Gpu => Some(gpu.context()?),
        BackendArg::All => return Err(Error::InvalidArgument { reason: "run on one backend: cpu or gpu".into() }),
    };
    let make = |g: &kestrel::graph::Graph,
                weights: &dyn Fn(usize) -> Result<Vec<f32>>,
                ctx: Option<GpuContext>|
     -> Result<Runner> {
        Ok(match ctx {
            None => Runner::Cpu(Box::new(kestrel::exec::CpuExecutor::new(g, weights)?)),
            Some(ctx) => {
                let e = kestrel::exec::GpuExecutor::new(&ctx, g, weights)?;
                Runner::Gpu(Box::new((ctx, e)))
            }
        })
    };
    if model.extension().is_some_and(|e| e == "onnx") {
        let mut g = kestrel::graph::onnx::import(&kestrel::import::onnx::Model::load(model)?)?;
        kestrel::graph::passes::optimize(&mut g)?;
        let r = make(&g, &|_| unreachable!("imported graphs carry their weights"), ctx)?;
        Ok((r, names(&g, &g.inputs), names(&g, &g.outputs)))
    } else {
        let pak = Kpak::open(model, Verify::Full)?;
        let g = pak
            .graph()
            .ok_or_else(|| Error::Unsupported { what: format!("{} has no graph to run", model.display()) })?;
        let r = make(g, &|id| kestrel::exec::kpak_weights(&pak, g, id), ctx)?;
        Ok((r, names(g, &g.inputs), names(g, &g.outputs)))
    }
}

/// Times one attention op on random [1, H, N, D] inputs (median after a warm-up).
#[allow(clippy::too_many_arguments)]
fn bench_attention_cmd(
    kind: AttentionArg,
    tokens: usize,
    dim: usize,
    heads: usize,
    backend: BackendArg,
    runs: usize,
    json: bool,
    gpu: &GpuArgs,
) -> Result<ExitCode> {
    if tokens == 0 || dim == 0 || heads == 0 || runs == 0 {
        return Err(Error::InvalidArgument { reason: "--tokens, --dim, --heads and --runs must be positive".into() });
    }
    let shape = [1, heads, tokens, dim];
    let len =
        heads.checked_mul(tokens).and_then(|x| x.checked_mul(dim)).filter(|&x| x <= 1 << 28).ok_or_else(|| {
            Error::InvalidArgument { reason: format!("{heads} heads x {tokens} tokens x {dim} is too large to bench") }
        })?;
    let mut rng = SplitMix64::new(3);
    let (q, k, v) = (rng.normal_vec(len), rng.normal_vec(len), rng.normal_vec(len));
    let scale = 1.0 / (dim as f32).sqrt();
    let (ms, backend_name) = match backend {
        BackendArg::Cpu => {
            let mut out = vec![0f32; len];
            let mut once = || match kind {
                AttentionArg::Care => kestrel::ops::linear_attention(&q, &shape, &k, &shape, &v, &shape, &mut out),
                AttentionArg::Softmax => {
                    kestrel::ops::softmax_attention(&q, &shape, &k, &shape, &v, &shape, scale, &mut out)
                }
            };
            (time_runs(runs, &mut once)?, format!("cpu ({} threads)", kestrel::ops::max_threads()))
        }
        BackendArg::Gpu => {
            use kestrel::backend::gpu::graph_ops::{self as gops, GpuView};
            let ctx = gpu.context()?;
            // q, k, v and the output in one buffer, each on a 256-byte boundary.
            let stride = len.next_multiple_of(64);
            let mut host = vec![0f32; 4 * stride];
            for (i, part) in [&q, &k, &v].into_iter().enumerate() {
                host[i * stride..][..len].copy_from_slice(part);
            }
            let buf = ctx.storage_buffer("attention bench", bytemuck::cast_slice(&host))?;
            let view = |i: usize| GpuView::new(&buf, (i * stride * 4) as u64, &shape);
            let steps = match kind {
                AttentionArg::Care => gops::linear_attention(&ctx, view(0), view(1), view(2), view(3))?,
                AttentionArg::Softmax => gops::softmax_attention(&ctx, view(0), view(1), view(2), scale, view(3))?,
            };
            let mut once = || -> Result<()> {
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    steps.iter().for_each(|s| s.encode(&mut pass));
                }
                ctx.queue.submit([enc.finish()]);
                ctx.wait()
            };
            (time_runs(runs, &mut once)?, format!("gpu ({}, submit to completion)", ctx.info.name))
        }
        BackendArg::All => return Err(Error::InvalidArgument { reason: "bench runs one backend: cpu or gpu".into() }),
    };
    let median = ms[ms.len() / 2];
    let p99 = ms[((ms.len() as f64 * 0.99).ceil() as usize).clamp(1, ms.len()) - 1];
    // Multiply-adds: CARE reduces keys (N D D) and applies (N D D); softmax scores and mixes (2 N^2 D).
    let (n, d, h) = (tokens as f64, dim as f64, heads as f64);
    let macs = match kind {
        AttentionArg::Care => 2.0 * h * n * d * d,
        AttentionArg::Softmax => 2.0 * h * n * n * d,
    };
    let name = if kind == AttentionArg::Care { "care" } else { "softmax" };
    if json {
        println!(
            "{}",
            json!({"kind": name, "backend": backend_name, "tokens": tokens, "dim": dim, "heads": heads, "runs": runs,
                   "median_ms": median, "p99_ms": p99, "macs": macs, "gmacs_per_s": macs / median / 1e6})
        );
    } else {
        println!(
            "{name} attention, {heads} heads x {tokens} tokens x {dim}, {backend_name}: median {median:.3} ms, p99 {p99:.3} ms ({:.1} GMAC/s)",
            macs / median / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Milliseconds of `runs` calls after one warm-up call, sorted.
fn time_runs(runs: usize, once: &mut dyn FnMut() -> Result<()>) -> Result<Vec<f64>> {
    once()?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = std::time::Instant::now();
        once()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

fn bench_model_cmd(
    model: &std::path::Path,
    backend: BackendArg,
    runs: usize,
    json: bool,
    profile: Option<usize>,
    gpu: &GpuArgs,
) -> Result<ExitCode> {
    // With profiling: how many of the slowest nodes to list.
    let (top, profile) = (profile.unwrap_or(0), profile.is_some());
    if runs == 0 {
        return Err(Error::InvalidArgument { reason: "--runs must be positive".into() });
    }
    let (mut exec, _, _) = load_runner(model, backend, gpu)?;
    if profile && !matches!(exec, Runner::Cpu(_)) {
        return Err(Error::Unsupported { what: "--profile on the GPU backend".into() });
    }
    let mut rng = SplitMix64::new(1);
    let inputs: Vec<Vec<f32>> = exec
        .input_shapes()
        .iter()
        .map(|s| (0..s.iter().product::<usize>()).map(|_| rng.uniform(0.0, 1.0)).collect())
        .collect();
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    for _ in 0..3 {
        exec.run(&refs)?; // warm-up: caches, page faults, thread start-up
    }
    let mut ms = Vec::with_capacity(runs);
    if let Runner::Cpu(e) = &mut exec {
        e.set_profiling(profile);
    }
    for _ in 0..runs {
        let t = std::time::Instant::now();
        exec.run(&refs)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    if let (true, Runner::Cpu(e)) = (profile, &exec) {
        let steps = e.profile();
        let total: f64 = steps.iter().map(|s| s.2).sum();
        let mut by_op: Vec<(String, f64)> = Vec::new();
        for (_, op, t) in &steps {
            match by_op.iter_mut().find(|(o, _)| o == op) {
                Some((_, acc)) => *acc += t,
                None => by_op.push((op.clone(), *t)),
            }
        }
        by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
        eprintln!("time per op type ({runs} runs):");
        for (op, t) in &by_op {
            eprintln!("  {op:<20} {:>9.3} ms/run {:>5.1}%", t * 1e3 / runs as f64, 100.0 * t / total);
        }
        let mut slow = steps.clone();
        slow.sort_by(|a, b| b.2.total_cmp(&a.2));
        eprintln!("slowest nodes:");
        for (name, op, t) in slow.iter().take(top) {
            eprintln!("  {:>8.3} ms/run  {op:<12} {name}", t * 1e3 / runs as f64);
        }
    }
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    let p99 = ms[((ms.len() as f64 * 0.99).ceil() as usize).clamp(1, ms.len()) - 1];
    let device = exec.backend();
    if json {
        println!(
            "{}",
            json!({"model": model.display().to_string(), "backend": device, "runs": runs,
                   "median_ms": median, "p99_ms": p99, "min_ms": ms[0], "peak_activation_bytes": exec.arena_bytes()})
        );
    } else {
        println!(
            "{} on {device}: median {median:.3} ms, p99 {p99:.3} ms, min {:.3} ms over {runs} runs; peak activations {} bytes",
            model.display(), ms[0], exec.arena_bytes()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_cmd(
    model: &std::path::Path,
    inputs: &[String],
    output_dir: &std::path::Path,
    backend: BackendArg,
    gpu: &GpuArgs,
) -> Result<ExitCode> {
    let (mut exec, in_names, out_names) = load_runner(model, backend, gpu)?;
    let mut data: Vec<Option<Vec<f32>>> = vec![None; in_names.len()];
    for spec in inputs {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) => (n.to_string(), f),
            None if in_names.len() == 1 => (in_names[0].clone(), spec.as_str()),
            None => {
                return Err(Error::InvalidArgument {
                    reason: format!(
                        "--input {spec}: name the input (NAME=FILE.npy); the model has {}",
                        in_names.join(", ")
                    ),
                })
            }
        };
        let i = in_names.iter().position(|n| *n == name).ok_or_else(|| Error::InvalidArgument {
            reason: format!("the model has no input '{name}' (inputs: {})", in_names.join(", ")),
        })?;
        let path = std::path::Path::new(file);
        let (shape, values) = kestrel::npy::read(path)?;
        if shape != exec.input_shapes()[i] {
            return Err(Error::ShapeMismatch {
                op: "run",
                expected: format!("{name} of shape {:?}", exec.input_shapes()[i]),
                actual: format!("{} of shape {shape:?}", path.display()),
            });
        }
        if let Some(j) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument { reason: format!("{}: value {j} is {}", path.display(), values[j]) });
        }
        data[i] = Some(values);
    }
    let missing: Vec<&str> = in_names.iter().zip(&data).filter(|(_, d)| d.is_none()).map(|(n, _)| n.as_str()).collect();
    if !missing.is_empty() {
        return Err(Error::InvalidArgument { reason: format!("missing input(s): {}", missing.join(", ")) });
    }
    let refs: Vec<&[f32]> = data.iter().map(|d| d.as_deref().unwrap_or(&[])).collect();
    exec.run(&refs)?;
    std::fs::create_dir_all(output_dir).map_err(|e| Error::Io { path: output_dir.to_path_buf(), source: e })?;
    for (i, name) in out_names.iter().enumerate() {
        let file: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' { c } else { '_' })
            .collect();
        let path = output_dir.join(format!("{file}.npy"));
        let (shape, values) = exec.output(i)?;
        kestrel::npy::write(&path, &shape, &values)?;
        println!("{name}: {shape:?} -> {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn pack_cmd(
    model: &std::path::Path,
    out: &std::path::Path,
    weights: &str,
    layers: &[String],
    protect: bool,
    json: bool,
) -> Result<ExitCode> {
    use kestrel::graph;
    let onnx = kestrel::import::onnx::Model::load(model)?;
    let mut g = graph::onnx::import(&onnx)?;
    let imported = g.nodes.len();
    let passes = graph::passes::optimize(&mut g)?;
    let plan = graph::plan::plan_activation_memory(&g);
    let mut metadata: Vec<(String, String)> = Vec::new();
    for (k, v) in &onnx.metadata {
        if !metadata.iter().any(|(mk, _)| mk == k) {
            metadata.push((k.clone(), v.clone()));
        }
    }
    let source = model.file_name().map_or_else(|| model.display().to_string(), |f| f.to_string_lossy().into_owned());
    metadata.push(("kestrel.source".into(), source));
    metadata.push(("kestrel.opset".into(), onnx.opset().unwrap_or(0).to_string()));
    metadata.push(("kestrel.producer".into(), format!("{} {}", onnx.producer_name, onnx.producer_version)));
    metadata.push(("kestrel.weights".into(), weights.to_string()));
    if onnx.meta("stride").is_some() {
        metadata.push(("kestrel.preprocess".into(), "letterbox to the input size, RGB, scale 1/255, NCHW".into()));
    }
    let opts = graph::pack::PackOptions {
        weights: Scheme::parse(weights)?,
        layers: layers.iter().map(|l| graph::pack::parse_layer_override(l)).collect::<Result<_>>()?,
        protect_ends: protect,
        metadata,
    };
    let (writer, report) = graph::pack::pack(&g, &opts)?;
    writer.write(out)?;
    let file_bytes = std::fs::metadata(out).map_err(|e| Error::Io { path: out.to_path_buf(), source: e })?.len();
    if json {
        let o = json!({
            "model": model.display().to_string(), "out": out.display().to_string(),
            "nodes_imported": imported, "nodes": g.nodes.len(),
            "batchnorms_folded": passes.batchnorms_folded, "activations_fused": passes.activations_fused,
            "peak_activation_bytes": plan.arena_bytes, "f32_weight_bytes": report.f32_bytes,
            "packed_weight_bytes": report.packed_bytes, "file_bytes": file_bytes,
            "layers": report.layers.iter().map(|l| json!({"node": l.node, "tensor": l.tensor, "format": l.scheme.label(), "why": l.why})).collect::<Vec<_>>(),
        });
        println!("{o}");
    } else {
        println!(
            "packed {} -> {}: {imported} ONNX nodes -> {} ({} activations fused, {} batch norms folded)",
            model.display(),
            out.display(),
            g.nodes.len(),
            passes.activations_fused,
            passes.batchnorms_folded
        );
        println!(
            "weights {} -> {} bytes, file {file_bytes} bytes, peak activations {} bytes",
            report.f32_bytes, report.packed_bytes, plan.arena_bytes
        );
        let mut counts: Vec<(String, usize)> = Vec::new();
        for l in &report.layers {
            let key = format!("{} ({})", l.scheme.label(), l.why);
            match counts.iter_mut().find(|(k, _)| *k == key) {
                Some((_, c)) => *c += 1,
                None => counts.push((key, 1)),
            }
        }
        for (k, c) in counts {
            println!("  {c:>4} weights {k}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn kernel_json(k: &KernelCheck) -> Value {
    let name = match k.variant {
        Some(v) => format!("{}/{}", k.name, v.name()),
        None => k.name.clone(),
    };
    json!({
        "name": name, "backend": k.backend.name(), "format": k.format,
        "rel_err": if k.rel_err.is_finite() { json!(k.rel_err) } else { json!(null) },
        "tol": k.tol.rel_l2, "ok": k.ok, "error": k.error,
    })
}

fn selftest_cmd(
    backend: BackendArg,
    json: bool,
    model: Option<PathBuf>,
    bits: Option<u32>,
    seed: Option<u64>,
    gpu_args: &GpuArgs,
) -> Result<ExitCode> {
    let backends: Vec<BackendKind> = match backend {
        BackendArg::Cpu => vec![BackendKind::Cpu],
        BackendArg::Gpu => vec![BackendKind::Gpu],
        BackendArg::All => vec![BackendKind::Cpu, BackendKind::Gpu],
    };
    let seed = seed.unwrap_or_else(|| SplitMix64::from_time().next_u64());
    // A GPU that was asked for but cannot be opened is a failure, reported as a failed check.
    let mut gpu_error = None;
    let ctx = if backends.contains(&BackendKind::Gpu) {
        match gpu_args.context() {
            Ok(c) => Some(c),
            Err(e) => {
                gpu_error = Some(e.to_string());
                None
            }
        }
    } else {
        None
    };
    let mut report = selftest::run(&backends, ctx.as_ref(), seed)?;
    if let Some(e) = &gpu_error {
        report.kernels.push(KernelCheck {
            name: "open GPU".into(),
            backend: BackendKind::Gpu,
            variant: None,
            format: "-".into(),
            rel_err: f64::INFINITY,
            tol: Tol::QUANT,
            ok: false,
            error: Some(e.clone()),
        });
    }
    if let Some(path) = &model {
        report.kernels.extend(check_model(path, bits, &backends, ctx.as_ref(), seed)?);
    }
    let passed = report.passed();
    if json {
        let out = json!({
            "passed": passed,
            "adapter": report.adapter.clone().unwrap_or_else(|| "none".into()),
            "seed": seed,
            "kernels": report.kernels.iter().map(kernel_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON values serialise"));
    } else {
        println!("kestrel selftest (seed {seed}), GPU adapter: {}", report.adapter.as_deref().unwrap_or("none"));
        for k in &report.kernels {
            let variant = k.variant.map_or(String::new(), |v| format!("/{}", v.name()));
            let status = if k.ok { "ok  " } else { "FAIL" };
            let detail = k.error.as_deref().map_or(String::new(), |e| format!("  ({e})"));
            println!(
                "  {status} {:<4} {:<14} {:<34} rel_err {:>9.2e} (tol {:.0e}){detail}",
                k.backend.name(),
                k.format,
                format!("{}{variant}", k.name),
                k.rel_err,
                k.tol.rel_l2
            );
        }
        let failed = report.kernels.iter().filter(|k| !k.ok).count();
        println!("{} passed, {} failed", report.kernels.len() - failed, failed);
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Verifies a model fully and checks every matrix on every backend against the f64 reference.
fn check_model(
    path: &PathBuf,
    bits: Option<u32>,
    backends: &[BackendKind],
    gpu: Option<&GpuContext>,
    seed: u64,
) -> Result<Vec<KernelCheck>> {
    let pak = Kpak::open(path, Verify::Full)?;
    let mut rng = SplitMix64::new(seed ^ 0x006d_6f64_656c);
    let mut out = Vec::new();
    for t in pak.tensors().iter().filter(|t| t.shape.len() == 2) {
        let loaded = pak.matrix_at_bits(&t.name, bits)?;
        let w = loaded.view();
        let x = rng.normal_vec(w.k);
        let reference = kestrel::quant::reference_gemv(&w, &x);
        let mut push = |backend, variant: Option<gpu::KernelVariant>, y: Result<Vec<f32>>| {
            let (rel_err, error) = match y {
                Ok(y) => (rel_l2(&y, &reference), None),
                Err(e) => (f64::INFINITY, Some(e.to_string())),
            };
            let tol = variant.map_or(Tol::QUANT, gpu::variant_tol);
            out.push(KernelCheck {
                name: format!("model:{}", t.name),
                backend,
                variant,
                format: w.scheme.label(),
                rel_err,
                tol,
                ok: error.is_none() && tol.accepts(rel_err),
                error,
            });
        };
        if backends.contains(&BackendKind::Cpu) {
            let mut y = vec![0f32; w.n];
            push(BackendKind::Cpu, None, kestrel::backend::cpu::gemv(&w, &x, &mut y).map(|_| y));
        }
        if let (true, Some(ctx)) = (backends.contains(&BackendKind::Gpu), gpu) {
            for v in gpu::selftest_variants(ctx) {
                push(BackendKind::Gpu, Some(v), gpu::matmul_once(ctx, &w, &x, 1, v));
            }
        }
    }
    Ok(out)
}

fn bench_cmd(cfg: &BenchConfig, json: bool, gpu_args: &GpuArgs) -> Result<ExitCode> {
    let ctx = if cfg.backend == BackendKind::Gpu { Some(gpu_args.context()?) } else { None };
    let r = bench::run(cfg, ctx.as_ref())?;
    let kind = if cfg.m == 1 { "gemv" } else { "gemm" };
    if json {
        let out = json!({
            "kind": kind, "backend": cfg.backend.name(), "device": r.device, "variant": r.variant, "timing": r.timing,
            "weights": cfg.scheme.label(), "n": cfg.n, "k": cfg.k, "m": cfg.m, "runs": cfg.runs,
            "median_us": r.median_us, "min_us": r.min_us, "bytes": r.bytes,
            "gbps": r.gbps, "copy_gbps": r.copy_gbps, "ratio": r.ratio, "gflops": r.gflops,
        });
        println!("{out}");
    } else {
        println!(
            "{kind} {} n={} k={} m={} on {} [{}]: median {:.1} us, {:.2} GB/s, copy {:.2} GB/s, ratio {:.3}, {:.2} GFLOP/s",
            cfg.scheme.label(), cfg.n, cfg.k, cfg.m, r.device, r.variant, r.median_us, r.gbps, r.copy_gbps, r.ratio, r.gflops
        );
    }
    Ok(ExitCode::SUCCESS)
}

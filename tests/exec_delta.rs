//! Delta mode of the CPU executor on a real graph (the YOLOv8 fixture): with theta = 0 a stream
//! where a patch moves gives the dense outputs up to float rounding while doing less work;
//! scene cuts and scheduled keyframes run dense; thresholds come from options or metadata.

use std::path::Path;

use kestrel::exec::delta::{format_thetas, parse_thetas, plane_noise_sigma, RELATIVE_METADATA_KEY, THETA_METADATA_KEY};
use kestrel::exec::{CpuExecutor, DeltaOptions, RelativeThetas};
use kestrel::graph::{onnx::import, passes::optimize};
use kestrel::import::onnx::Model;
use kestrel::rng::SplitMix64;

/// Relative L2 error allowed between a delta stream at theta = 0 and the dense run: the
/// accumulated outputs differ from the dense ones only by float summation order.
const DELTA_EXACT_TOL: f64 = 1e-5;

/// Relative L2 error allowed between a stream under small scene-relative thresholds (t = 0.1,
/// 0.05 on the camera layer) and the dense run, one frame after the keyframe: the thresholds
/// bound each input's error, so the outputs stay close to the dense ones.
const RELATIVE_THETA_TOL: f64 = 0.1;

fn executor() -> (CpuExecutor, Vec<f32>, Vec<usize>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolov8-tiny");
    let mut g = import(&Model::load(&dir.join("model.onnx")).unwrap()).unwrap();
    optimize(&mut g).unwrap();
    let exec = CpuExecutor::new(&g, &|_| unreachable!()).unwrap();
    let (shape, input) = kestrel::npy::read(&dir.join("input.npy")).unwrap();
    (exec, input, shape)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// `x` with a `size` x `size` patch at (top, left) of every channel redrawn.
fn move_patch(x: &[f32], shape: &[usize], top: usize, left: usize, size: usize, r: &mut SplitMix64) -> Vec<f32> {
    let (c, h, w) = (shape[1], shape[2], shape[3]);
    let mut y = x.to_vec();
    for ci in 0..c {
        for i in top..(top + size).min(h) {
            for j in left..(left + size).min(w) {
                y[(ci * h + i) * w + j] = r.normal();
            }
        }
    }
    y
}

#[test]
fn a_stream_at_theta_zero_matches_dense_with_less_work() {
    let (mut dense, input, shape) = executor();
    let (mut delta, _, _) = executor();
    delta.enable_delta(DeltaOptions { keyframe_interval: 0, ..DeltaOptions::default() }).unwrap();
    let mut r = SplitMix64::new(41);
    let mut frame = input.clone();
    for n in 0..5 {
        if n > 0 {
            frame = move_patch(&frame, &shape, 3 * n, 5 * n, 6, &mut r);
        }
        dense.run(&[&frame]).unwrap();
        delta.run(&[&frame]).unwrap();
        for o in 0..dense.num_outputs() {
            let err = rel_l2(delta.output(o), dense.output(o));
            assert!(err <= DELTA_EXACT_TOL, "frame {n} output {o}: relative L2 {err:.2e} > {DELTA_EXACT_TOL:.0e}");
        }
    }
    let s = delta.delta_stats().unwrap();
    assert_eq!((s.frames, s.keyframes, s.scene_cuts), (5, 1, 0), "{s:?}");
    assert!(!s.layers.is_empty());
    // Four of five frames moved one 6x6 patch of 160x160. At theta = 0 every change spreads
    // through the receptive fields, so the deep layers redo most of their work; the first conv
    // redoes only the patch's neighbourhood.
    assert!(s.macs() * 5 < s.dense_macs() * 4, "delta {} MACs against dense {}", s.macs(), s.dense_macs());
    let first = &s.layers[0];
    let first_delta_frames = first.macs - first.dense_macs; // the keyframe did one dense run
    assert!(first_delta_frames * 20 < first.dense_macs * 4, "first layer: {first:?}");
    // The keyframe fires everything; the other four frames fire far less.
    assert!(s.fired_fraction() > 0.2 && s.fired_fraction() < 0.75, "fired {}", s.fired_fraction());
    assert_eq!(s.dense_macs(), 5 * dense.dense_macs());
}

#[test]
fn scene_cuts_and_scheduled_keyframes_run_dense() {
    let (mut dense, input, shape) = executor();
    let (mut delta, _, _) = executor();
    delta.enable_delta(DeltaOptions { keyframe_interval: 3, theta: 0.01, ..DeltaOptions::default() }).unwrap();
    let mut r = SplitMix64::new(7);
    let mut frame = input.clone();
    let mut cut_frame = 0;
    for n in 0..7 {
        if n == 4 {
            // Everything changes: a scene cut.
            frame = (0..frame.len()).map(|_| r.normal()).collect();
            cut_frame = n;
        } else if n > 0 {
            frame = move_patch(&frame, &shape, n, n, 4, &mut r);
        }
        dense.run(&[&frame]).unwrap();
        delta.run(&[&frame]).unwrap();
        if n == cut_frame {
            // A dense frame is the dense run.
            assert!(rel_l2(delta.output(0), dense.output(0)) <= DELTA_EXACT_TOL);
        }
    }
    let s = delta.delta_stats().unwrap().clone();
    // Keyframes at frames 0, 3 and 6; frame 4 is a cut.
    assert_eq!((s.frames, s.keyframes, s.scene_cuts), (7, 3, 1), "{s:?}");
    // reset_delta: the next frame is a keyframe; stats restart on request.
    delta.reset_delta_stats();
    delta.reset_delta();
    delta.run(&[&frame]).unwrap();
    let s = delta.delta_stats().unwrap();
    assert_eq!((s.frames, s.keyframes), (1, 1));
    assert!(s.layers.iter().all(|l| l.dense_frames == 1));
}

#[test]
fn thresholds_come_from_options_per_layer_and_per_channel() {
    let (mut exec, input, _) = executor();
    exec.enable_delta(DeltaOptions::default()).unwrap();
    exec.run(&[&input]).unwrap();
    let rms = exec.delta_input_rms();
    assert!(!rms.is_empty() && rms.iter().all(|(_, r)| !r.is_empty() && r.iter().all(|v| v.is_finite())));
    // One value per channel for the first layer, one value for the second.
    let (first, second) = (&rms[0], &rms[1]);
    let layer_theta =
        vec![(first.0.clone(), first.1.iter().map(|v| v * 0.1).collect()), (second.0.clone(), vec![0.25])];
    let text = format_thetas(0.05, &layer_theta);
    let (default, parsed) = parse_thetas(&text).unwrap();
    assert_eq!(default, Some(0.05));
    assert_eq!(parsed.len(), 2);
    for ((a, ta), (b, tb)) in parsed.iter().zip(&layer_theta) {
        assert_eq!(a, b);
        assert!(ta.iter().zip(tb).all(|(x, y)| (x - y).abs() <= 1e-6 * y.abs().max(1e-6)));
    }
    let metadata = vec![(THETA_METADATA_KEY.to_string(), text)];
    let opts = DeltaOptions::from_metadata(&metadata).unwrap();
    assert_eq!(opts.theta_of(&second.0), &[0.25]);
    assert_eq!(opts.theta_of("no such layer"), &[0.05]);
    exec.enable_delta(opts).unwrap();
    let s = exec.delta_stats().unwrap();
    assert!((s.layers[1].theta - 0.25).abs() < 1e-6);
    assert!((s.layers[2].theta - 0.05).abs() < 1e-6);
    // Wrong channel counts, negative or NaN thresholds and malformed text are errors.
    let wrong =
        DeltaOptions { layer_theta: vec![(first.0.clone(), vec![0.1; first.1.len() + 1])], ..DeltaOptions::default() };
    assert!(exec.enable_delta(wrong).is_err());
    assert!(exec.enable_delta(DeltaOptions { theta: -1.0, ..DeltaOptions::default() }).is_err());
    assert!(exec.enable_delta(DeltaOptions { theta: f32::NAN, ..DeltaOptions::default() }).is_err());
    assert!(exec.enable_delta(DeltaOptions { dense_above: 1.5, ..DeltaOptions::default() }).is_err());
    for bad in ["conv", "conv=x", "conv=-1", "*=1,2", "=0.1", "conv=NaN"] {
        assert!(parse_thetas(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn relative_thresholds_follow_the_scene_at_every_keyframe() {
    let (mut exec, input, _) = executor();
    let metadata = vec![(RELATIVE_METADATA_KEY.to_string(), "t=0.1 t_camera=0.05".to_string())];
    let opts = DeltaOptions::from_metadata(&metadata).unwrap();
    assert_eq!(opts.relative, Some(RelativeThetas { t: 0.1, t_camera: 0.05, exact_below: 0.0, noise: 0.0 }));
    exec.enable_delta(DeltaOptions { keyframe_interval: 0, ..opts }).unwrap();
    exec.run(&[&input]).unwrap();
    let rms = exec.delta_input_rms();
    let s = exec.delta_stats().unwrap().clone();
    // theta of every channel = multiple x max(channel RMS, a tenth of the layer's RMS).
    for (l, (name, r)) in s.layers.iter().zip(&rms) {
        assert_eq!(&l.name, name);
        let layer = (r.iter().map(|v| v * v).sum::<f32>() / r.len() as f32).sqrt();
        let mult = if l.reads_input { 0.05 } else { 0.1 };
        let want = r.iter().map(|v| v.max(0.1 * layer) * mult).sum::<f32>() / r.len() as f32;
        assert!((l.theta - want).abs() <= 1e-4 * want.max(1e-6), "{name}: theta {} against {want}", l.theta);
    }
    // A darker scene (the input scaled down) gets proportionally smaller thresholds at its
    // keyframe.
    let dark: Vec<f32> = input.iter().map(|v| v * 0.25).collect();
    exec.reset_delta();
    exec.run(&[&dark]).unwrap();
    let first = exec.delta_stats().unwrap().layers[0].theta;
    assert!((first - 0.25 * s.layers[0].theta).abs() <= 1e-3 * s.layers[0].theta, "{first} vs {}", s.layers[0].theta);
    for bad in ["t=0.1", "t=-1 t_camera=0.1", "t=x t_camera=1", "t=1 t_camera=1 u=2"] {
        assert!(RelativeThetas::parse(bad).is_err(), "{bad:?} parsed");
    }
}

/// How close the noise estimate of one plane comes to the sigma it was drawn with.
const NOISE_SIGMA_TOL: f64 = 0.1;

#[test]
fn the_noise_estimate_reads_sensor_noise_and_not_the_scene() {
    // A letterboxed frame: grey padding above and below a smoothly shaded scene with a hard
    // edge, plus Gaussian noise of a known sigma.
    let (h, w, top, bottom) = (192, 192, 24, 168);
    let mut r = SplitMix64::new(5);
    for sigma in [0.005f64, 0.02, 0.05] {
        let plane: Vec<f32> = (0..h * w)
            .map(|i| {
                let (y, x) = ((i / w) as f64, (i % w) as f64);
                if !(top..bottom).contains(&(i / w)) {
                    return 114.0 / 255.0;
                }
                let scene = 0.4 + 0.2 * (x / 17.0).sin() * (y / 23.0).cos() + if x > 120.0 { 0.3 } else { 0.0 };
                (scene + sigma * r.normal() as f64) as f32
            })
            .collect();
        let got = plane_noise_sigma(&plane, h, w);
        assert!((got - sigma).abs() <= NOISE_SIGMA_TOL * sigma, "sigma {sigma}: estimated {got}");
    }
    // Degenerate planes have no noise to measure.
    assert_eq!(plane_noise_sigma(&[0.5; 64], 8, 8), 0.0);
    assert_eq!(plane_noise_sigma(&[0.5; 4], 2, 2), 0.0);
}

#[test]
fn a_noise_floor_lifts_only_the_camera_layers_thresholds() {
    let (mut plain, input, shape) = executor();
    let (mut floored, _, _) = executor();
    let base = RelativeThetas::parse("t=0.1 t_camera=0.05").unwrap();
    let with_noise = RelativeThetas::parse("t=0.1 t_camera=0.05 noise=3").unwrap();
    assert_eq!(with_noise, RelativeThetas { noise: 3.0, ..base });
    assert_eq!(RelativeThetas::parse(&with_noise.format()).unwrap(), with_noise);
    assert!(RelativeThetas::parse("t=0.1 t_camera=0.05 noise=-1").is_err());
    for (exec, r) in [(&mut plain, base), (&mut floored, with_noise)] {
        exec.enable_delta(DeltaOptions { keyframe_interval: 0, relative: Some(r), ..DeltaOptions::default() }).unwrap();
        exec.run(&[&input]).unwrap();
    }
    let (a, b) = (plain.delta_stats().unwrap(), floored.delta_stats().unwrap());
    let rms = plain.delta_input_rms();
    let (c, h, w) = (shape[1], shape[2], shape[3]);
    let mut camera_layers = 0;
    for ((la, lb), (_, r)) in a.layers.iter().zip(&b.layers).zip(&rms) {
        if !lb.reads_input {
            assert_eq!(la.theta, lb.theta, "{}: not a camera layer", la.name);
            continue;
        }
        camera_layers += 1;
        // Per channel: max(RMS rule, 3 sqrt(2) sigma of the frame's noise).
        let layer = (r.iter().map(|v| v * v).sum::<f32>() / r.len() as f32).sqrt();
        let want = (0..c)
            .map(|ci| {
                let noise = 3.0 * std::f64::consts::SQRT_2 * plane_noise_sigma(&input[ci * h * w..][..h * w], h, w);
                (r[ci].max(0.1 * layer) * 0.05).max(noise as f32)
            })
            .sum::<f32>()
            / c as f32;
        assert!((lb.theta - want).abs() <= 1e-4 * want, "{}: theta {} against {want}", lb.name, lb.theta);
        assert!(lb.theta > la.theta, "{}: the floor should bind on a noisy input", lb.name);
    }
    assert!(camera_layers > 0);
}

#[test]
fn layers_under_the_exact_below_share_keep_theta_zero() {
    let text = "t=0.1 t_camera=0.05 exact_below=0.02";
    let parsed = RelativeThetas::parse(text).unwrap();
    assert_eq!(parsed, RelativeThetas { t: 0.1, t_camera: 0.05, exact_below: 0.02, noise: 0.0 });
    assert_eq!(RelativeThetas::parse(&parsed.format()).unwrap(), parsed);
    // Without the exemption the key is left out, so older readers still parse it.
    assert_eq!(RelativeThetas { exact_below: 0.0, ..parsed }.format(), "t=0.1 t_camera=0.05");
    for bad in ["t=0.1 t_camera=0.05 exact_below=1.5", "t=0.1 t_camera=0.05 exact_below=-0.1"] {
        assert!(RelativeThetas::parse(bad).is_err(), "{bad:?} parsed");
    }

    let (mut exec, input, shape) = executor();
    let (mut dense, _, _) = executor();
    exec.enable_delta(DeltaOptions { keyframe_interval: 0, relative: Some(parsed), ..DeltaOptions::default() })
        .unwrap();
    // A keyframe, then a frame where a patch moved.
    let moved = move_patch(&input, &shape, 4, 4, 6, &mut SplitMix64::new(7));
    for frame in [&input, &moved] {
        exec.run(&[frame]).unwrap();
        dense.run(&[frame]).unwrap();
    }
    let s = exec.delta_stats().unwrap().clone();
    let total = (s.layers.iter().map(|l| l.dense_macs).sum::<u64>() + s.other_macs_per_frame) as f64;
    let (mut exempt, mut thresholded) = (0, 0);
    for l in &s.layers {
        let share = l.dense_macs as f64 / total;
        if share < 0.02 {
            assert_eq!(l.theta, 0.0, "{}: {:.4} of the MACs, theta {}", l.name, share, l.theta);
            // It ran as the dense op on both frames.
            assert_eq!((l.dense_frames, l.macs, l.fired), (2, 2 * l.dense_macs, 2 * l.inputs), "{}", l.name);
            exempt += 1;
        } else {
            assert!(l.theta > 0.0, "{}: {:.4} of the MACs kept theta 0", l.name, share);
            thresholded += 1;
        }
    }
    // The fixture has layers on both sides of 2%, so both branches were checked.
    assert!(exempt > 0 && thresholded > 0, "exempt {exempt}, thresholded {thresholded}");
    // Thresholds moved the outputs only a little from the dense run's.
    for o in 0..dense.num_outputs() {
        let err = rel_l2(exec.output(o), dense.output(o));
        assert!(err < RELATIVE_THETA_TOL, "output {o}: relative L2 {err:.2e} against dense");
    }
}

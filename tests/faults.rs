//! `kestrel calibrate-clip` and `kestrel faults` end to end (issue 7, item 2), on the shipped
//! fused detector and fresh synthetic pairs: thresholds are stored in the graph and leave a
//! clean network's output alone, both backends apply them alike, faults cost mAP, and the JSON
//! contract holds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kestrel::format::{Kpak, Verify};
use kestrel::graph::clip;
use kestrel::vision::dataset::write_synth;
use kestrel::vision::detector::{Detector, Device};
use kestrel::vision::image::Image;
use kestrel::vision::synth::SynthOptions;

/// Largest difference in box corners (pixels) and scores between the CPU and the GPU on the
/// clipped network: f32 reassociation only (the thresholds sit far from typical activations).
const BOX_TOL_PX: f32 = 0.5;
const SCORE_TOL: f32 = 2e-3;

fn kestrel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "off")
        .output()
        .expect("run kestrel")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/rgbir-fused.kpak")
}

fn pairs(dir: &Path, count: usize, seed: u64) {
    write_synth(dir, count, &SynthOptions { seed, ..Default::default() }, &|_| {}).unwrap();
}

/// Calibrates the shipped detector on fresh pairs into `dir/clipped.kpak`.
fn calibrated(dir: &Path) -> (PathBuf, serde_json::Value) {
    let cal = dir.join("cal");
    pairs(&cal, 16, 93_100);
    let out = dir.join("clipped.kpak");
    let stdout = ok(&kestrel(&[
        "calibrate-clip",
        "--model",
        shipped().to_str().unwrap(),
        "--dataset",
        cal.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    (out, serde_json::from_str(&stdout).unwrap())
}

#[test]
fn calibrated_thresholds_leave_clean_output_alone_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let (model, report) = calibrated(dir.path());
    let (layers, channels) = (report["layers"].as_u64().unwrap(), report["channel_layers"].as_u64().unwrap());
    assert!(layers > 50 && channels >= 6, "{report}");
    let (unclipped, clipped) = (report["map50_unclipped"].as_f64().unwrap(), report["map50_clipped"].as_f64().unwrap());
    // On its own calibration pairs nothing exceeds a threshold: the same mAP.
    assert!((unclipped - clipped).abs() < 1e-9, "{report}");
    let pak = Kpak::open(&model, Verify::Full).unwrap();
    assert_eq!(clip::count(pak.graph().unwrap()), (layers as usize, channels as usize));
    assert!(pak.meta("clip.calibration").unwrap().contains("statistic=max"));

    // CPU and GPU run the clipped SiLUs alike on fresh frames.
    let fresh = dir.path().join("fresh");
    pairs(&fresh, 2, 93_200);
    let mut cpu = Detector::open(&model, Device::Cpu).unwrap();
    let mut gpu = Detector::open(&model, Device::Gpu { allow_software: true })
        .expect("GPU tests are mandatory: install mesa-vulkan-drivers");
    for stem in ["000000", "000001"] {
        let rgb = Image::load(&fresh.join("visible").join(format!("{stem}.png"))).unwrap();
        let ir = Image::load(&fresh.join("infrared").join(format!("{stem}.png"))).unwrap();
        let (c, g) = (cpu.detect(Some(&rgb), Some(&ir)).unwrap(), gpu.detect(Some(&rgb), Some(&ir)).unwrap());
        assert_eq!(c.len(), g.len(), "{stem}: {c:?} vs {g:?}");
        for (a, b) in c.iter().zip(&g) {
            assert_eq!(a.class_id, b.class_id);
            assert!((a.score - b.score).abs() <= SCORE_TOL, "{a:?} vs {b:?}");
            for k in 0..4 {
                assert!((a.box_xyxy[k] - b.box_xyxy[k]).abs() <= BOX_TOL_PX, "{a:?} vs {b:?}");
            }
        }
    }
}

#[test]
fn faults_cost_map_and_report_the_issue_json() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = calibrated(dir.path());
    let eval = dir.path().join("eval");
    pairs(&eval, 8, 93_300);
    let stdout = ok(&kestrel(&[
        "faults",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        eval.to_str().unwrap(),
        "--ber",
        "0,1e-3",
        "--trials",
        "2",
        "--clip",
        "none,hybrid",
        "--precision",
        "f32",
        "--json",
    ]));
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    for r in &rows {
        for key in ["ber", "clip", "trials", "map50_mean", "map50_min"] {
            assert!(r.get(key).is_some(), "{key} in {r}");
        }
        assert_eq!(r["trials"], 2);
        assert_eq!(r["precision"], "f32");
        let (mean, min, clean) =
            (r["map50_mean"].as_f64().unwrap(), r["map50_min"].as_f64().unwrap(), r["map50_clean"].as_f64().unwrap());
        assert!(min <= mean && (0.0..=1.0).contains(&mean), "{r}");
        if r["ber"] == 0.0 {
            assert_eq!(r["flips_mean"], 0.0);
            assert_eq!(mean, clean, "no faults, the clean score: {r}");
            assert!(clean > 0.5, "the shipped detector works on fresh pairs: {r}");
        } else {
            // f32 at 1e-3: about 41,000 flips in the 41 Mbit of conv and linear weights.
            assert!(r["flips_mean"].as_f64().unwrap() > 10_000.0, "{r}");
            if r["clip"] == "none" {
                assert!(mean < 0.5 * clean, "unprotected, the network is wrecked: {r}");
            }
        }
    }
}

#[test]
fn clipping_a_model_without_thresholds_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    pairs(dir.path(), 2, 93_400);
    let out = kestrel(&[
        "faults",
        "--model",
        shipped().to_str().unwrap(),
        "--dataset",
        dir.path().to_str().unwrap(),
        "--ber",
        "1e-5",
        "--clip",
        "hybrid",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("calibrate-clip"), "{err}");
    let bad = kestrel(&["faults", "--model", "x.kpak", "--dataset", ".", "--ber", "2"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--ber"), "{}", String::from_utf8_lossy(&bad.stderr));
}

//! The vision commands end to end with the shipped RGB+IR detectors: `synth` writes a dataset,
//! `detect` finds objects in its pairs (JSON contract, annotated picture, single-modality
//! models taking one frame), `eval` scores it, and bad input gets one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn kestrel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kestrel")).args(args).env("RUST_LOG", "off").output().expect("run kestrel")
}

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn one_line_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("XDG_RUNTIME_DIR")).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "{lines:?}");
}

/// A small held-out set: a seed the shipped models were not trained on.
fn dataset(dir: &Path, count: usize) -> PathBuf {
    let out = dir.join("synth");
    let r = json_of(&kestrel(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--count",
        &count.to_string(),
        "--seed",
        "777",
        "--json",
    ]));
    assert_eq!(r["pairs"], count);
    out
}

#[test]
fn detect_reports_json_and_draws_the_pair() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 24);
    let fused = model("rgbir-fused.kpak");
    let annotated = dir.path().join("pair.png");
    let (rgb, ir) = (ds.join("visible/000003.png"), ds.join("infrared/000003.png"));
    let r = json_of(&kestrel(&[
        "detect",
        "--model",
        fused.to_str().unwrap(),
        "--rgb",
        rgb.to_str().unwrap(),
        "--ir",
        ir.to_str().unwrap(),
        "--annotate",
        annotated.to_str().unwrap(),
        "--json",
    ]));
    let images = r["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["rgb"], rgb.to_str().unwrap());
    for d in images[0]["detections"].as_array().unwrap() {
        assert!(["person", "car", "bicycle"].contains(&d["class"].as_str().unwrap()), "{d}");
        let score = d["score"].as_f64().unwrap();
        assert!((0.25..=1.0).contains(&score), "{d}");
        let b: Vec<f64> = d["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(b[0] <= b[2] && b[1] <= b[3] && b[2] <= 320.0 && b[3] <= 240.0, "{d}");
    }
    // Side by side: twice the frame's width.
    let picture = kestrel::vision::image::Image::load_png(&annotated).unwrap();
    assert_eq!((picture.width, picture.height), (640, 240));
    // Over the whole set the fused model finds objects (a broken graph or decode would not).
    let r =
        json_of(&kestrel(&["detect", "--model", fused.to_str().unwrap(), "--dataset", ds.to_str().unwrap(), "--json"]));
    let found: usize = r["images"].as_array().unwrap().iter().map(|i| i["detections"].as_array().unwrap().len()).sum();
    assert!(found >= 24, "only {found} detections in 24 pairs");
}

#[test]
fn single_modality_models_take_only_their_frame() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 4);
    let ir = ds.join("infrared/000001.png");
    let r = json_of(&kestrel(&[
        "detect",
        "--model",
        model("rgbir-ir-only.kpak").to_str().unwrap(),
        "--ir",
        ir.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(r["images"][0]["rgb"], Value::Null);
    one_line_error(
        &kestrel(&["detect", "--model", model("rgbir-rgb-only.kpak").to_str().unwrap(), "--ir", ir.to_str().unwrap()]),
        "give --rgb",
    );
    one_line_error(
        &kestrel(&["detect", "--model", model("rgbir-fused.kpak").to_str().unwrap(), "--ir", ir.to_str().unwrap()]),
        "give --rgb",
    );
}

#[test]
fn eval_reports_map_per_condition_and_class() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 40);
    let r = json_of(&kestrel(&[
        "eval",
        "--model",
        model("rgbir-fused.kpak").to_str().unwrap(),
        "--dataset",
        ds.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(r["images"], 40);
    for key in ["map50", "map50_95"] {
        let v = r[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
    // A trained model, not noise: the threshold is far below what it scores on held-out data
    // (models/README.md) and far above what an untrained one does (about 0.005).
    assert!(r["map50"].as_f64().unwrap() > 0.3, "{r}");
    let conditions = r["per_condition"].as_object().unwrap();
    assert!(conditions.keys().all(|k| ["day", "dusk", "night", "fog", "glare"].contains(&k.as_str())), "{r}");
    let counted: u64 = conditions.values().map(|c| c["images"].as_u64().unwrap()).sum();
    assert_eq!(counted, 40);
    assert_eq!(r["per_class"].as_object().unwrap().len(), 3);
    assert!(r["latency_ms"]["median"].as_f64().unwrap() > 0.0);
    assert!(r["latency_ms"]["p99"].as_f64().unwrap() >= r["latency_ms"]["median"].as_f64().unwrap());
}

#[test]
fn bad_vision_input_gets_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 3);
    let fused = model("rgbir-fused.kpak");
    let f = fused.to_str().unwrap();
    // Unpaired: a thermal frame is missing.
    std::fs::remove_file(ds.join("infrared/000002.png")).unwrap();
    one_line_error(&kestrel(&["eval", "--model", f, "--dataset", ds.to_str().unwrap()]), "000002.png");
    // A corrupt image.
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    one_line_error(
        &kestrel(&["detect", "--model", f, "--rgb", bad.to_str().unwrap(), "--ir", bad.to_str().unwrap()]),
        "bad.png",
    );
    // Frames of different sizes.
    let big = dir.path().join("big");
    json_of(&kestrel(&["synth", "--out", big.to_str().unwrap(), "--count", "1", "--size", "160x120", "--json"]));
    let (rgb, ir) = (ds.join("visible/000000.png"), big.join("infrared/000000.png"));
    one_line_error(
        &kestrel(&["detect", "--model", f, "--rgb", rgb.to_str().unwrap(), "--ir", ir.to_str().unwrap()]),
        "one size",
    );
    // Bad synth arguments.
    one_line_error(&kestrel(&["synth", "--out", dir.path().to_str().unwrap(), "--size", "12x9"]), "--size");
    // Thresholds that are not probabilities.
    let (rgb0, ir0) = (ds.join("visible/000000.png"), ds.join("infrared/000000.png"));
    one_line_error(
        &kestrel(&[
            "detect",
            "--model",
            f,
            "--rgb",
            rgb0.to_str().unwrap(),
            "--ir",
            ir0.to_str().unwrap(),
            "--score",
            "NaN",
        ]),
        "--score",
    );
    // A model that is not a detector.
    let demo = model("demo-mlp.kpak");
    one_line_error(
        &kestrel(&["detect", "--model", demo.to_str().unwrap(), "--rgb", rgb.to_str().unwrap()]),
        "no graph",
    );
}

#[test]
fn detect_runs_an_ultralytics_export_with_its_class_names() {
    // The committed reduced YOLOv8 (ultralytics' exporter, 8 classes named in its metadata,
    // input `images`): the same decode path as the shipped models, on a visible frame only.
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 2);
    let yolo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolov8-tiny/model.onnx");
    let rgb = ds.join("visible/000000.png");
    let r = json_of(&kestrel(&[
        "detect",
        "--model",
        yolo.to_str().unwrap(),
        "--rgb",
        rgb.to_str().unwrap(),
        "--score",
        "0.0001",
        "--json",
    ]));
    let dets = r["images"][0]["detections"].as_array().unwrap();
    assert!(!dets.is_empty(), "an untrained model still scores every anchor above 1e-4");
    // The fixture's metadata names its classes class0..class7.
    for d in dets {
        let id = d["class_id"].as_u64().unwrap();
        assert!(id < 8 && d["class"] == format!("class{id}"), "{d}");
        let b: Vec<f64> = d["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(b[0] >= 0.0 && b[2] <= 320.0 && b[1] >= 0.0 && b[3] <= 240.0, "boxes in frame pixels: {d}");
    }
}

#[test]
fn detect_on_the_gpu_agrees_with_the_cpu() {
    // The shipped q8 model: the GPU reads the packed weights, the CPU their dequantized copy.
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 3);
    let fused = model("rgbir-fused.kpak");
    let (rgb, ir) = (ds.join("visible/000002.png"), ds.join("infrared/000002.png"));
    let run = |backend: &str| {
        let mut args = vec!["detect", "--model", fused.to_str().unwrap(), "--rgb", rgb.to_str().unwrap()];
        args.extend(["--ir", ir.to_str().unwrap(), "--backend", backend, "--allow-software", "--json"]);
        json_of(&kestrel(&args))["images"][0]["detections"].as_array().unwrap().clone()
    };
    let (cpu, gpu) = (run("cpu"), run("gpu"));
    assert!(!cpu.is_empty());
    assert_eq!(cpu.len(), gpu.len(), "cpu {cpu:?}\ngpu {gpu:?}");
    for (a, b) in cpu.iter().zip(&gpu) {
        assert_eq!(a["class"], b["class"]);
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-3, "{a} {b}");
        for (p, q) in a["box"].as_array().unwrap().iter().zip(b["box"].as_array().unwrap()) {
            assert!((p.as_f64().unwrap() - q.as_f64().unwrap()).abs() < 0.5, "{a} {b}");
        }
    }
}

/// A static-camera sequence: `clips` clips of `frames` frames.
fn sequence(dir: &Path, clips: usize, frames: usize) -> PathBuf {
    let out = dir.join("sequence");
    let r = json_of(&kestrel(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--count",
        &(clips * frames).to_string(),
        "--sequence",
        &frames.to_string(),
        "--camera",
        "static",
        "--seed",
        "3000",
        "--json",
    ]));
    assert_eq!(r["sequence"], frames);
    out
}

#[test]
fn eval_on_a_sequence_compares_delta_with_dense() {
    let dir = tempfile::tempdir().unwrap();
    let seq = sequence(dir.path(), 2, 4);
    let fused = model("rgbir-fused.kpak");
    // The shipped model carries calibrated relative thresholds: --delta with no value uses them.
    let r = json_of(&kestrel(&[
        "eval",
        "--model",
        fused.to_str().unwrap(),
        "--sequence",
        seq.to_str().unwrap(),
        "--delta",
        "--json",
    ]));
    assert_eq!(r["frames"], 8);
    for key in ["macs", "median_ms", "map50"] {
        assert!(r["dense"][key].is_number() && r["delta"][key].is_number(), "{key}: {r}");
    }
    assert!(r["delta"]["fired_fraction"].as_f64().unwrap() > 0.0);
    assert!(r["delta"]["theta"].as_str().unwrap().starts_with("t="), "{}", r["delta"]["theta"]);
    // Two clips: the first frame is a keyframe, the clip change a scene cut.
    assert_eq!((r["delta"]["keyframes"].as_u64(), r["delta"]["scene_cuts"].as_u64()), (Some(1), Some(1)), "{r}");
    assert!(r["delta"]["macs"].as_f64().unwrap() < r["dense"]["macs"].as_f64().unwrap());
    let layers = r["per_layer"].as_array().unwrap();
    assert!(layers.len() > 100);
    for l in layers {
        let f = l["fired_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f) && l["name"].is_string() && l["macs"].is_number(), "{l}");
    }
    // A global theta of 0 fires every change: the same detections as dense.
    let r = json_of(&kestrel(&[
        "eval",
        "--model",
        fused.to_str().unwrap(),
        "--sequence",
        seq.to_str().unwrap(),
        "--delta",
        "0",
        "--json",
    ]));
    assert!(r["agreement_map50"].as_f64().unwrap() > 0.999, "{r}");
    assert!((r["map50_drop_points"].as_f64().unwrap()).abs() < 0.1, "{r}");

    // detect --stream --delta: one result per frame and the stream's totals.
    let r = json_of(&kestrel(&[
        "detect",
        "--model",
        fused.to_str().unwrap(),
        "--stream",
        seq.to_str().unwrap(),
        "--delta",
        "--json",
    ]));
    assert_eq!(r["images"].as_array().unwrap().len(), 8);
    assert_eq!(r["delta"]["frames"], 8);
    // --delta needs a stream; a negative theta is refused.
    let out = kestrel(&["detect", "--model", fused.to_str().unwrap(), "--dataset", seq.to_str().unwrap(), "--delta"]);
    one_line_error(&out, "--stream");
    let out = kestrel(&["eval", "--model", fused.to_str().unwrap(), "--sequence", seq.to_str().unwrap(), "--delta=-1"]);
    one_line_error(&out, "theta");
    // --exact-below means nothing with one global theta, and says so.
    let out = kestrel(&[
        "eval",
        "--model",
        fused.to_str().unwrap(),
        "--sequence",
        seq.to_str().unwrap(),
        "--delta",
        "0.05",
        "--exact-below",
        "0.01",
    ]);
    one_line_error(&out, "--exact-below");
}

#[test]
fn calibrate_delta_writes_thresholds_the_stream_then_uses() {
    let dir = tempfile::tempdir().unwrap();
    let seq = sequence(dir.path(), 1, 3);
    let out = dir.path().join("calibrated.kpak");
    let r = json_of(&kestrel(&[
        "calibrate-delta",
        "--model",
        model("rgbir-fused.kpak").to_str().unwrap(),
        "--sequence",
        seq.to_str().unwrap(),
        "--max-drop",
        "100",
        "--min-agreement",
        "0",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    // Every candidate is within so loose a budget: the largest saving wins.
    let tried = r["tried"].as_array().unwrap();
    assert!(tried.len() > 10 && tried.iter().all(|t| t["within_budget"] == true));
    let best = tried.iter().map(|t| t["mac_ratio"].as_f64().unwrap()).fold(0.0, f64::max);
    assert_eq!(r["mac_ratio"].as_f64().unwrap(), best);
    let pak = kestrel::format::Kpak::open(&out, kestrel::format::Verify::Full).unwrap();
    // The default exemption of the smallest layers (0.2% of the MACs) is written with them.
    assert_eq!(r["exact_below"].as_f64().unwrap() as f32, 0.002);
    let want = format!(
        "t={} t_camera={} exact_below=0.002",
        r["t"].as_f64().unwrap() as f32,
        r["t_camera"].as_f64().unwrap() as f32
    );
    assert_eq!(pak.meta("delta.relative"), Some(want.as_str()));
    // The weights and graph are the original's, byte for byte.
    let orig = kestrel::format::Kpak::open(model("rgbir-fused.kpak"), kestrel::format::Verify::Full).unwrap();
    assert_eq!(pak.tensors().len(), orig.tensors().len());
    for (a, b) in pak.tensors().iter().zip(orig.tensors()) {
        assert_eq!(a.name, b.name);
        for (ca, cb) in a.components.iter().zip(&b.components) {
            assert_eq!(pak.component_bytes(ca), orig.component_bytes(cb), "{}", a.name);
        }
    }
    assert_eq!(pak.graph().map(|g| g.nodes.len()), orig.graph().map(|g| g.nodes.len()));
    // An impossible budget is a one-line error, and the model is not touched.
    let out2 = dir.path().join("never.kpak");
    let res = kestrel(&[
        "calibrate-delta",
        "--model",
        model("rgbir-fused.kpak").to_str().unwrap(),
        "--sequence",
        seq.to_str().unwrap(),
        "--min-agreement",
        "1.5",
        "--out",
        out2.to_str().unwrap(),
    ]);
    one_line_error(&res, "--min-agreement");
    assert!(!out2.exists());
}

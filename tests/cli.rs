//! The command-line contract: JSON keys other code relies on, exit codes, one-line errors, and
//! the shipped demo model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kestrel::format::{Kpak, KpakWriter, Verify};
use kestrel::tensor::{LorcFactors, PackedMatrix};
use serde_json::Value;

fn kestrel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kestrel")).args(args).env("RUST_LOG", "off").output().expect("run kestrel")
}

fn demo_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo-mlp.kpak")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// stderr lines from kestrel itself (Mesa's lavapipe may add its own warnings).
fn kestrel_errors(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
        .map(str::to_string)
        .collect()
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = kestrel_errors(out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "{lines:?}");
}

#[test]
fn info_reports_the_demo_model_as_json() {
    let path = demo_model();
    let v = json_of(&kestrel(&["info", path.to_str().unwrap(), "--json"]));
    assert_eq!(v["verified"], true);
    assert_eq!(v["metadata"]["name"], "demo-mlp");
    let tensors = v["tensors"].as_array().unwrap();
    let names: Vec<&str> = tensors.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]);
    let fc1 = &tensors[0];
    assert_eq!(fc1["format"], "q4g32");
    assert_eq!(fc1["lorc_rank"], 8);
    assert_eq!(fc1["checksum"], "ok");
    assert_eq!(tensors[2]["format"], "fp4g32-e8m0");
    assert_eq!(tensors[4]["bitswitch_master"], true);
    for t in tensors {
        for c in t["components"].as_array().unwrap() {
            assert_eq!(c["offset"].as_u64().unwrap() % 256, 0, "{t}");
        }
    }
    let switched = json_of(&kestrel(&["info", path.to_str().unwrap(), "--json", "--bits", "4"]));
    assert_eq!(switched["tensors"][4]["format"], "q8 -> q4g128-sym");
}

#[test]
fn info_names_the_damaged_tensor_and_fails() {
    let bytes = std::fs::read(demo_model()).unwrap();
    let pak = Kpak::from_bytes(&bytes, Verify::Full).unwrap();
    let c = pak.tensor("fc2.weight").unwrap().components[0];
    let mut damaged = bytes.clone();
    damaged[c.offset as usize + 5] ^= 0x10;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.kpak");
    std::fs::write(&path, &damaged).unwrap();
    let out = kestrel(&["info", path.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], false);
    assert!(v["tensors"][2]["checksum"].as_str().unwrap().contains("fc2.weight"));
    assert_eq!(v["tensors"][0]["checksum"], "ok");
}

#[test]
fn errors_are_one_line_with_exit_status_1() {
    assert_one_line_error(&kestrel(&["info", "/nonexistent/model.kpak"]), "/nonexistent/model.kpak");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.kpak");
    std::fs::write(&path, b"this is not a model").unwrap();
    assert_one_line_error(&kestrel(&["info", path.to_str().unwrap()]), "bad magic");
    let truncated = dir.path().join("truncated.kpak");
    std::fs::write(&truncated, &std::fs::read(demo_model()).unwrap()[..5000]).unwrap();
    assert_one_line_error(&kestrel(&["info", truncated.to_str().unwrap()]), "truncated");
    assert_one_line_error(&kestrel(&["bench", "gemv", "--weights", "q3"]), "unknown weight format 'q3'");
    assert_one_line_error(&kestrel(&["bench", "gemv", "--n", "zero"]), "");
    assert_one_line_error(&kestrel(&["frobnicate"]), "");
}

#[test]
fn selftest_json_on_cpu_and_gpu_with_the_demo_model() {
    let path = demo_model();
    let v = json_of(&kestrel(&["selftest", "--json", "--allow-software", "--model", path.to_str().unwrap()]));
    assert_eq!(v["passed"], true);
    assert!(v["adapter"].as_str().unwrap() != "none");
    let kernels = v["kernels"].as_array().unwrap();
    for backend in ["cpu", "gpu"] {
        for format in ["f32", "f16", "q8", "q4g32", "q4g64-sym", "q4g128", "fp4g32-e8m0", "fp4g64-f16"] {
            assert!(kernels.iter().any(|k| k["backend"] == backend && k["format"] == format), "{backend} {format}");
        }
    }
    for k in kernels {
        for key in ["name", "backend", "format", "rel_err", "tol", "ok"] {
            assert!(k.get(key).is_some(), "{key} missing in {k}");
        }
        assert!(k["rel_err"].as_f64().unwrap() <= k["tol"].as_f64().unwrap());
    }
    assert!(kernels.iter().any(|k| k["name"].as_str().unwrap().starts_with("model:fc1.weight")));
}

#[test]
fn selftest_fails_when_the_gpu_is_asked_for_but_not_allowed() {
    // Without --allow-software, lavapipe is refused: a GPU selftest must then fail, not pass by
    // testing nothing. (On a machine with a hardware GPU this case does not apply.)
    let probe = kestrel::backend::gpu::GpuContext::new(&kestrel::backend::gpu::GpuOptions { allow_software: false });
    if probe.is_ok() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(["selftest", "--backend", "gpu", "--json"])
        .env_remove("KESTREL_ALLOW_SOFTWARE_GPU")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], false);
}

#[test]
fn bench_reports_ratios_against_copy_bandwidth() {
    for backend in ["cpu", "gpu"] {
        for weights in ["q4", "fp4", "f16"] {
            let out = kestrel(&[
                "bench",
                "gemv",
                "--weights",
                weights,
                "--n",
                "256",
                "--k",
                "512",
                "--runs",
                "3",
                "--json",
                "--backend",
                backend,
                "--allow-software",
            ]);
            let v = json_of(&out);
            for key in ["median_us", "gbps", "copy_gbps", "ratio"] {
                let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"));
                assert!(x.is_finite() && x > 0.0, "{key} = {x}");
            }
            let ratio = v["gbps"].as_f64().unwrap() / v["copy_gbps"].as_f64().unwrap();
            assert!((ratio - v["ratio"].as_f64().unwrap()).abs() < 1e-9 * ratio.max(1.0));
        }
    }
    let v = json_of(&kestrel(&[
        "bench",
        "gemm",
        "--weights",
        "q8",
        "--n",
        "64",
        "--k",
        "128",
        "--m",
        "8",
        "--runs",
        "2",
        "--json",
    ]));
    assert_eq!(v["m"], 8);
}

#[test]
fn the_demo_model_round_trips_through_the_writer_byte_for_byte() {
    let bytes = std::fs::read(demo_model()).unwrap();
    let pak = Kpak::from_bytes(&bytes, Verify::Full).unwrap();
    let mut w = KpakWriter::new();
    for (k, v) in pak.metadata() {
        w.metadata(k, v).unwrap();
    }
    for t in pak.tensors() {
        if t.shape.len() == 2 {
            let m = pak.matrix(&t.name).unwrap();
            let packed = PackedMatrix {
                n: m.n,
                k: m.k,
                scheme: m.scheme,
                main: m.main.to_vec(),
                aux: m.aux.to_vec(),
                lorc: m.lorc.map(|l| LorcFactors { rank: l.rank, u: l.u.to_vec(), v: l.v.to_vec() }),
                bitswitch_master: t.bitswitch_master,
            };
            w.add_matrix(&t.name, &packed).unwrap();
        } else {
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            w.add_f32(&t.name, &shape, &pak.tensor_f32(&t.name).unwrap()).unwrap();
        }
    }
    assert!(w.to_bytes() == bytes, "re-written demo model differs from models/demo-mlp.kpak");
}

/// The committed file is what `kestrel demo-model` writes. The generator draws normal samples
/// through libm (ln, cos), so this is checked where the file was made: x86_64 Linux.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn the_demo_model_regenerates_from_its_seed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.kpak");
    let status = kestrel(&["demo-model", "--out", out.to_str().unwrap()]);
    assert!(status.status.success());
    assert!(
        std::fs::read(out).unwrap() == std::fs::read(demo_model()).unwrap(),
        "regenerate with: kestrel demo-model --out models/demo-mlp.kpak"
    );
}

fn yolo_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolov8-tiny/model.onnx")
}

#[test]
fn pack_imports_the_yolo_fixture_and_info_shows_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("yolo.kpak");
    let v = json_of(&kestrel(&[
        "pack",
        yolo_fixture().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--weights",
        "q4g32",
        "--layer",
        "/model.2/*=f16",
        "--json",
    ]));
    assert_eq!(v["nodes_imported"], 237);
    assert_eq!(v["nodes"], 119);
    assert_eq!(v["activations_fused"], 57);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 64);
    let format_of = |node: &str| layers.iter().find(|l| l["node"] == node).unwrap()["format"].clone();
    // The input conv and the head's output convs stay f32; the override applies; rows shorter
    // than a group (a 1x1 conv over 16 channels: K = 16) stay f32; the rest is q4.
    let why_of = |node: &str| layers.iter().find(|l| l["node"] == node).unwrap()["why"].clone();
    assert_eq!(format_of("/model.0/conv/Conv"), "f32");
    assert_eq!(format_of("/model.22/cv3.0/cv3.0.2/Conv"), "f32");
    assert_eq!(format_of("/model.22/cv2.2/cv2.2.2/Conv"), "f32");
    assert_eq!(format_of("/model.2/cv1/conv/Conv"), "f16");
    assert_eq!(format_of("/model.4/cv1/conv/Conv"), "f32");
    assert!(why_of("/model.4/cv1/conv/Conv").as_str().unwrap().contains("shorter than a quantization group"));
    assert_eq!(format_of("/model.4/m.0/cv1/conv/Conv"), "q4g32");
    assert!(v["packed_weight_bytes"].as_u64().unwrap() < v["f32_weight_bytes"].as_u64().unwrap());

    let info = json_of(&kestrel(&["info", out.to_str().unwrap(), "--json"]));
    assert_eq!(info["verified"], true);
    assert_eq!(info["metadata"]["stride"], "32");
    assert_eq!(info["metadata"]["kestrel.weights"], "q4g32");
    let g = &info["graph"];
    assert_eq!(g["nodes"], 119);
    assert_eq!(g["inputs"][0]["shape"], serde_json::json!([1, 3, 160, 160]));
    assert_eq!(g["outputs"][0]["shape"], serde_json::json!([1, 12, 525]));
    assert_eq!(g["ops"]["Conv"], 64);
    assert!(g["peak_activation_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn pack_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.kpak");
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"\x0a\xff\xff").unwrap();
    assert_one_line_error(&kestrel(&["pack", bad.to_str().unwrap(), "-o", out.to_str().unwrap()]), "malformed ONNX");
    assert_one_line_error(
        &kestrel(&["pack", yolo_fixture().to_str().unwrap(), "-o", out.to_str().unwrap(), "--layer", "nonsense"]),
        "PATTERN=FORMAT",
    );
    assert!(!out.exists(), "no partial output on failure");
}

#[test]
fn run_and_bench_a_packed_model_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let kpak = dir.path().join("yolo.kpak");
    json_of(&kestrel(&["pack", yolo_fixture().to_str().unwrap(), "-o", kpak.to_str().unwrap(), "--json"]));
    let fixture_dir = yolo_fixture().parent().unwrap().to_path_buf();
    let (_, want) = kestrel::npy::read(&fixture_dir.join("output0.npy")).unwrap();
    let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    for backend in ["cpu", "gpu"] {
        let out_dir = dir.path().join(backend);
        let input = format!("images={}", fixture_dir.join("input.npy").display());
        let out = kestrel(&[
            "run",
            kpak.to_str().unwrap(),
            "--input",
            &input,
            "--output-dir",
            out_dir.to_str().unwrap(),
            "--backend",
            backend,
            "--allow-software",
        ]);
        assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
        let (shape, got) = kestrel::npy::read(&out_dir.join("output0.npy")).unwrap();
        assert_eq!(shape, [1, 12, 525]);
        let err = kestrel::tol::rel_l2(&got, &want);
        assert!(err < 1e-4, "{backend}: {err:e}");

        let v = json_of(&kestrel(&[
            "bench",
            kpak.to_str().unwrap(),
            "--backend",
            backend,
            "--runs",
            "3",
            "--json",
            "--allow-software",
        ]));
        for key in ["median_ms", "p99_ms", "peak_activation_bytes"] {
            assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{backend}: {key} in {v}");
        }
    }
    // Bad inputs are one-line errors: a wrong name, a wrong shape, a NaN pixel.
    let bad = dir.path().join("bad.npy");
    std::fs::write(&bad, kestrel::npy::encode(&[1, 3, 8, 8], &[0.5; 192])).unwrap();
    let out_dir = dir.path().join("x");
    let run = |input: &str| {
        kestrel(&["run", kpak.to_str().unwrap(), "--input", input, "--output-dir", out_dir.to_str().unwrap()])
    };
    assert_one_line_error(&run(&format!("nope={}", bad.display())), "no input 'nope'");
    assert_one_line_error(&run(&format!("images={}", bad.display())), "shape");
    let mut nan = vec![0.5f32; 3 * 160 * 160];
    nan[77] = f32::NAN;
    std::fs::write(&bad, kestrel::npy::encode(&[1, 3, 160, 160], &nan)).unwrap();
    assert_one_line_error(&run(&format!("images={}", bad.display())), "value 77 is NaN");
}

#[test]
fn bench_attention_reports_median_ms_on_both_backends() {
    for backend in ["cpu", "gpu"] {
        for kind in ["care", "softmax"] {
            let v = json_of(&kestrel(&[
                "bench",
                "attention",
                "--kind",
                kind,
                "--tokens",
                "64",
                "--dim",
                "16",
                "--heads",
                "2",
                "--runs",
                "3",
                "--backend",
                backend,
                "--allow-software",
                "--json",
            ]));
            assert_eq!(v["kind"], kind);
            assert_eq!(v["tokens"], 64);
            assert!(v["median_ms"].as_f64().unwrap() > 0.0, "{v}");
            assert!(v["backend"].as_str().unwrap().starts_with(backend), "{v}");
        }
    }
    assert_one_line_error(&kestrel(&["bench", "attention", "--tokens", "0"]), "--tokens");
}

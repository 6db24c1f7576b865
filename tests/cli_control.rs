//! `kestrel loop`, `kestrel boards`, `kestrel calibrate` and `selftest --bundle` from the
//! command line: the JSON contracts, board profiles applied, bad arguments refused by name.

use std::process::{Command, Output};

fn kestrel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "off")
        .output()
        .expect("run kestrel")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn the_loop_reports_the_issue_json_and_applies_a_board() {
    let r = json(&kestrel(&["loop", "--sim", "--fast", "--seconds", "3", "--board", "cpu-only", "--json"]));
    for key in ["cycles", "episodes", "success_rate", "abstentions", "safe_actions", "deadline_misses"] {
        assert!(r.get(key).is_some(), "{key} in {r}");
    }
    // cpu-only runs at 15 Hz: 3 s is 45 cycles.
    assert_eq!(r["cycles"], 45);
    assert_eq!(r["rate_hz"], 15.0);
    assert_eq!(r["board"], "cpu-only");
    for stage in ["total", "read", "perceive", "decide", "act"] {
        let s = &r["latency_ms"][stage];
        let (p50, p99, max) = (s["p50"].as_f64().unwrap(), s["p99"].as_f64().unwrap(), s["max"].as_f64().unwrap());
        assert!(p50 <= p99 && p99 <= max, "{stage}: {s}");
    }
    assert!(r["latency_ms"]["perceive"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["conformal"]["qhat"].as_f64().is_some(), "the shipped detector is calibrated");
    assert_eq!(r["frame_faults"]["missing"], 0, "fast mode waits for every frame");
}

#[test]
fn bad_loop_arguments_are_refused_by_name() {
    for (args, needle) in [
        (vec!["loop", "--rate", "0"], "--rate"),
        (vec!["loop", "--board", "jetson-nope"], "jetson-nope"),
        (vec!["loop", "--safe", "drift"], "--safe"),
        (vec!["loop", "--condition", "snow"], "--condition"),
        (vec!["loop", "--policy", "models/rgbir-fused.kpak", "--seconds", "1"], "as a policy"),
        (vec!["loop", "--model", "models/missing.kpak", "--seconds", "1"], "missing.kpak"),
    ] {
        let out = kestrel(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: ") && err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"));
    }
}

#[test]
fn bench_takes_a_board_too() {
    let r = json(&kestrel(&[
        "bench",
        "gemv",
        "--weights",
        "q8",
        "--n",
        "256",
        "--k",
        "256",
        "--runs",
        "3",
        "--board",
        "cpu-only",
        "--json",
    ]));
    assert_eq!(r["backend"], "cpu");
    let out = kestrel(&["bench", "gemv", "--board", "jetson-nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("jetson-nope"));
}

#[test]
fn boards_lists_every_shipped_profile() {
    let r = json(&kestrel(&["boards", "--json"]));
    let names: Vec<&str> = r["boards"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "generic-vulkan", "cpu-only"]
    );
}

#[test]
fn calibrate_stores_thresholds_that_cover_and_the_loop_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &str| d.join(p).to_str().unwrap().to_string();
    for (name, seed) in [("cal", "501"), ("test", "502")] {
        assert!(kestrel(&["synth", "--out", &s(name), "--count", "60", "--seed", seed]).status.success());
    }
    let r = json(&kestrel(&[
        "calibrate",
        "--model",
        "models/rgbir-fused.kpak",
        "--dataset",
        &s("cal"),
        "--holdout",
        &s("test"),
        "--alpha",
        "0.2",
        "--out",
        &s("m.kpak"),
        "--json",
    ]));
    let (qhat, tau) = (r["qhat"].as_f64().unwrap(), r["tau"].as_f64().unwrap());
    assert!(qhat > 0.0 && qhat < 1.0 && tau.is_finite(), "{r}");
    // Coverage on the calibration set itself is at least 1 - alpha by construction.
    assert!(r["calibration"]["coverage"].as_f64().unwrap() >= 0.8, "{r}");
    assert!(r["holdout"]["matched"].as_u64().unwrap() > 50);
    let info = String::from_utf8(kestrel(&["info", &s("m.kpak")]).stdout).unwrap();
    assert!(info.contains(&format!("conformal.qhat: {qhat}")), "{info}");
    let l = json(&kestrel(&["loop", "--model", &s("m.kpak"), "--fast", "--seconds", "1", "--json"]));
    assert_eq!(l["conformal"]["qhat"].as_f64().unwrap(), qhat);
    // A bad level is refused.
    let out = kestrel(&[
        "calibrate",
        "--model",
        "models/rgbir-fused.kpak",
        "--dataset",
        &s("cal"),
        "--alpha",
        "1.5",
        "--out",
        &s("x.kpak"),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("alpha"));
}

#[test]
fn selftest_refuses_a_bundle_that_does_not_match_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    std::fs::create_dir(b.join("models")).unwrap();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo-mlp.kpak"), b.join("models/demo-mlp.kpak"))
        .unwrap();
    kestrel::bundle::write_manifest(b).unwrap();
    let ok = kestrel(&["selftest", "--bundle", b.to_str().unwrap(), "--backend", "cpu"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // One flipped byte in the model.
    let p = b.join("models/demo-mlp.kpak");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[5000] ^= 0x10;
    std::fs::write(&p, bytes).unwrap();
    let bad = kestrel(&["selftest", "--bundle", b.to_str().unwrap(), "--backend", "cpu"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("Mismatch(\"models/demo-mlp.kpak\")"));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not match its manifest"));
}

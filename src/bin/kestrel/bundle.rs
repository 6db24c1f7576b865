//! `kestrel bundle --board NAME --out DIR`: cross-compiles kestrel for the board (cargo, with
//! `aarch64-linux-gnu-gcc` as the linker for aarch64 boards), checks that the binary needs no
//! glibc newer than the board's, and lays out a deployable folder with a checksum manifest.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::json;

use kestrel::board::Board;
use kestrel::bundle::{self, copy_atomic, newest_glibc, write_atomic};
use kestrel::{Error, Result};

pub struct BundleArgs<'a> {
    pub board: &'a str,
    pub out: &'a Path,
    pub model: &'a Path,
    pub policy: &'a Path,
    /// Use artifacts already built instead of running cargo.
    pub no_build: bool,
    pub json: bool,
}

fn host_triple() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "aarch64-unknown-linux-gnu"
    } else {
        "x86_64-unknown-linux-gnu"
    }
}

fn linker_for(triple: &str) -> Option<&'static str> {
    (triple == "aarch64-unknown-linux-gnu" && host_triple() != triple).then_some("aarch64-linux-gnu-gcc")
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().map_err(|e| Error::InvalidArgument { reason: format!("{what}: cannot start it ({e})") })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        return Err(Error::InvalidArgument {
            reason: format!("{what} failed: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | ")),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds (unless told not to) and returns the folder holding the release artifacts.
fn build(triple: &str, no_build: bool) -> Result<PathBuf> {
    let dir = if triple == host_triple() && std::env::var("CARGO_BUILD_TARGET").is_err() {
        PathBuf::from("target/release")
    } else {
        PathBuf::from(format!("target/{triple}/release"))
    };
    let target_root = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| "target".into());
    let dir = target_root.join(dir.strip_prefix("target").expect("starts with target"));
    if no_build {
        return Ok(dir);
    }
    if !Path::new("Cargo.toml").is_file() {
        return Err(Error::InvalidArgument {
            reason: "bundle builds from the kestrel source tree: run it in the repository root, or pass --no-build"
                .into(),
        });
    }
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--release", "--locked"]);
    if dir.to_string_lossy().contains(triple) {
        cmd.args(["--target", triple]);
    }
    if let Some(linker) = linker_for(triple) {
        let var = format!("CARGO_TARGET_{}_LINKER", triple.to_uppercase().replace('-', "_"));
        if std::env::var_os(&var).is_none() {
            cmd.env(var, linker);
        }
    }
    eprintln!("building kestrel for {triple} (cargo build --release --target {triple}) ...");
    run(&mut cmd, &format!("cargo build for {triple}"))?;
    Ok(dir)
}

/// The newest glibc symbol version each artifact needs, checked against the board's limit.
fn check_glibc(board: &Board, triple: &str, files: &[PathBuf]) -> Result<Option<(u32, u32)>> {
    let objdump = if linker_for(triple).is_some() { "aarch64-linux-gnu-objdump" } else { "objdump" };
    let mut newest = None;
    for f in files {
        let dump = run(Command::new(objdump).arg("-T").arg(f), &format!("{objdump} -T {}", f.display()))?;
        newest = newest.max(newest_glibc(&dump));
    }
    if let (Some((maj, min)), Some((lmaj, lmin))) = (newest, board.glibc.split_once('.')) {
        let limit: (u32, u32) = (lmaj.parse().unwrap_or(0), lmin.parse().unwrap_or(0));
        if (maj, min) > limit {
            return Err(Error::Unsupported {
                what: format!(
                    "the {triple} build needs GLIBC_{maj}.{min}, newer than {}'s glibc {}",
                    board.name, board.glibc
                ),
            });
        }
    }
    Ok(newest)
}

pub fn bundle_cmd(a: &BundleArgs) -> Result<ExitCode> {
    let board = Board::load(a.board)?;
    let triple = if board.target.is_empty() { host_triple().to_string() } else { board.target.clone() };
    let built = build(&triple, a.no_build)?;
    let artifacts = ["kestrel", "libkestrel.so", "libkestrel.a"].map(|f| built.join(f));
    for f in &artifacts {
        if !f.is_file() {
            return Err(Error::InvalidArgument {
                reason: format!("{} is missing: build for {triple} first", f.display()),
            });
        }
    }
    let glibc = check_glibc(&board, &triple, &artifacts[..2])?;
    let out = a.out;
    for sub in ["bin", "lib", "include", "models"] {
        std::fs::create_dir_all(out.join(sub)).map_err(|e| Error::io(out.join(sub), e))?;
    }
    copy_atomic(&artifacts[0], &out.join("bin/kestrel"))?;
    copy_atomic(&artifacts[1], &out.join("lib/libkestrel.so"))?;
    copy_atomic(&artifacts[2], &out.join("lib/libkestrel.a"))?;
    copy_atomic(Path::new("include/kestrel.h"), &out.join("include/kestrel.h"))?;
    let (model, changed) = bundle::model_at_bits(a.model, board.runtime.weight_bits)?;
    model.write(&out.join("models/detector.kpak"))?;
    copy_atomic(a.policy, &out.join("models/policy.kpak"))?;
    let profile = kestrel::board::SHIPPED
        .iter()
        .find(|(n, _)| *n == board.name)
        .map(|(_, t)| t.to_string())
        .map_or_else(|| std::fs::read_to_string(a.board).map_err(|e| Error::io(a.board, e)), Ok)?;
    write_atomic(&out.join("board.toml"), profile.as_bytes())?;
    write_atomic(&out.join("kestrel-loop.service"), bundle::service_unit(&board).as_bytes())?;
    write_atomic(&out.join("README.md"), bundle::readme(&board, &triple, changed).as_bytes())?;
    let files = bundle::write_manifest(out)?;
    let size = |p: &str| std::fs::metadata(out.join(p)).map(|m| m.len()).unwrap_or(0);
    let report = json!({
        "board": board.name, "target": triple, "out": out.display().to_string(), "files": files,
        "glibc_needed": glibc.map(|(a, b)| format!("{a}.{b}")), "glibc_limit": board.glibc,
        "weight_bits": board.runtime.weight_bits, "matrices_requantized": changed,
        "bytes": {"bin/kestrel": size("bin/kestrel"), "lib/libkestrel.so": size("lib/libkestrel.so"),
                  "lib/libkestrel.a": size("lib/libkestrel.a"), "models/detector.kpak": size("models/detector.kpak"),
                  "models/policy.kpak": size("models/policy.kpak")},
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "bundle for {} ({triple}) in {}: {files} files, needs glibc {} (limit {})",
            board.name,
            out.display(),
            glibc.map_or("-".into(), |(a, b)| format!("{a}.{b}")),
            if board.glibc.is_empty() { "none" } else { &board.glibc }
        );
        println!(
            "  detector at {} bits ({changed} matrices requantized), manifest {}",
            board.runtime.weight_bits,
            bundle::MANIFEST
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `selftest --bundle DIR`: the manifest first (a damaged bundle is refused before anything
/// runs from it).
pub fn verify_bundle(dir: &Path, json_out: bool) -> Result<bool> {
    let problems = bundle::verify_manifest(dir)?;
    if !json_out {
        if problems.is_empty() {
            println!("bundle {}: every file matches {}", dir.display(), bundle::MANIFEST);
        }
        for p in &problems {
            println!("bundle {}: {p:?}", dir.display());
        }
    }
    Ok(problems.is_empty())
}

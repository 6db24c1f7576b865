//! The fuzz targets' committed inputs, run under `cargo test` (no fuzzer needed):
//! - `fuzz/seeds/<target>/`: the seed corpus. Each target must accept some of its seeds, so
//!   the fuzzer starts from real structure rather than from bytes that fail the first check.
//! - `fuzz/regressions/<target>/`: every input a fuzzer ever crashed on. Each must now return
//!   normally (accepted or rejected with a typed error); `tools/fuzz.sh` copies new crashes
//!   there, and a crash becomes a fix plus this regression test.

use std::path::{Path, PathBuf};

type Target = fn(&[u8]) -> bool;

const TARGETS: [(&str, Target); 5] = [
    ("kpak", kestrel::fuzzing::kpak),
    ("onnx", kestrel::fuzzing::onnx),
    ("voc", kestrel::fuzzing::voc),
    ("yolo", kestrel::fuzzing::yolo),
    ("board", kestrel::fuzzing::board),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn every_target_accepts_some_of_its_seeds_and_survives_all() {
    for (name, target) in TARGETS {
        let seeds = files(&fuzz_dir().join("seeds").join(name));
        assert!(!seeds.is_empty(), "fuzz/seeds/{name} is empty");
        let accepted = seeds.iter().filter(|p| target(&std::fs::read(p).unwrap())).count();
        assert!(accepted > 0, "no seed of {name} is accepted: the fuzzer would start from garbage");
        eprintln!("{name}: {accepted} of {} seeds accepted", seeds.len());
    }
}

#[test]
fn every_crash_found_so_far_returns_normally() {
    let mut ran = 0;
    for (name, target) in TARGETS {
        for path in files(&fuzz_dir().join("regressions").join(name)) {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{} panics again", path.display());
            ran += 1;
        }
    }
    eprintln!("{ran} regression inputs");
}

/// Truncations and single-byte damage of every seed: the cheap part of what the fuzzer does,
/// so that a target that panics on its own seeds' neighbours fails here first.
#[test]
fn damaged_seeds_return_normally() {
    let mut rng = kestrel::rng::SplitMix64::new(0x5eed);
    for (name, target) in TARGETS {
        for path in files(&fuzz_dir().join("seeds").join(name)) {
            let seed = std::fs::read(&path).unwrap();
            for cut in [0, 1, seed.len() / 3, seed.len() / 2, seed.len().saturating_sub(1)] {
                target(&seed[..cut]);
            }
            for _ in 0..64 {
                let mut d = seed.clone();
                let at = (rng.next_u64() % d.len() as u64) as usize;
                d[at] ^= 1 << (rng.next_u64() % 8);
                target(&d);
            }
        }
    }
}

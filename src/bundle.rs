//! Deployable bundles: everything a board needs in one folder, with a checksum manifest the
//! board verifies (`kestrel selftest --bundle DIR`).
//!
//! ```text
//! bin/kestrel              the CLI (the loop service runs it)
//! lib/libkestrel.{so,a}    the C ABI
//! include/kestrel.h
//! models/detector.kpak     the detector at the board's weight precision
//! models/policy.kpak
//! board.toml               the board profile
//! kestrel-loop.service     a systemd unit for `kestrel loop`
//! README.md                how to install and run it on this board
//! MANIFEST.sha256          `sha256sum -c` format, every file above
//! ```

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::board::Board;
use crate::error::{Error, Result};
pub use crate::format::write_atomic;
use crate::format::{Kpak, KpakWriter, Verify};
use crate::tensor::Scheme;

pub const MANIFEST: &str = "MANIFEST.sha256";

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `MANIFEST.sha256` over every file under `dir` (sorted, relative paths).
pub fn write_manifest(dir: &Path) -> Result<usize> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.retain(|f| f != Path::new(MANIFEST));
    files.sort();
    let mut text = String::new();
    for f in &files {
        text.push_str(&format!("{}  {}\n", sha256_file(&dir.join(f))?, f.display()));
    }
    write_atomic(&dir.join(MANIFEST), text.as_bytes())?;
    Ok(files.len())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).expect("under root").to_path_buf());
        }
    }
    Ok(())
}

/// A file of a bundle that failed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestProblem {
    Missing(String),
    Mismatch(String),
    Unlisted(String),
}

/// Checks every file the manifest lists (and that nothing unlisted was added). Empty: intact.
pub fn verify_manifest(dir: &Path) -> Result<Vec<ManifestProblem>> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut problems = Vec::new();
    let mut listed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some((hash, name)) = line.split_once("  ") else {
            return Err(Error::InvalidArgument {
                reason: format!("{}: line {} is not 'HASH  PATH'", path.display(), i + 1),
            });
        };
        if name.contains("..") || name.starts_with('/') {
            return Err(Error::InvalidArgument {
                reason: format!("{}: line {} names {name} outside the bundle", path.display(), i + 1),
            });
        }
        listed.push(PathBuf::from(name));
        let file = dir.join(name);
        if !file.is_file() {
            problems.push(ManifestProblem::Missing(name.into()));
        } else if sha256_file(&file)? != hash {
            problems.push(ManifestProblem::Mismatch(name.into()));
        }
    }
    let mut present = Vec::new();
    collect(dir, dir, &mut present)?;
    for f in present {
        if f != Path::new(MANIFEST) && !listed.contains(&f) {
            problems.push(ManifestProblem::Unlisted(f.display().to_string()));
        }
    }
    Ok(problems)
}

/// Copies a file atomically (keeping the executable bit).
pub fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(|e| Error::io(from, e))?;
    write_atomic(to, &bytes)?;
    #[cfg(unix)]
    {
        let mode = std::fs::metadata(from).map_err(|e| Error::io(from, e))?.permissions();
        std::fs::set_permissions(to, mode).map_err(|e| Error::io(to, e))?;
    }
    Ok(())
}

/// The detector at the board's weight precision: for 4-bit boards, its int8 weight matrices
/// requantized to int4 (groups of 32, asymmetric); f32 tensors and rows shorter than a group
/// stay as they are. 2 bits is refused (no shipped detector holds up at 2 bits). Returns the
/// writer and the number of matrices requantized.
pub fn model_at_bits(model: &Path, bits: u32) -> Result<(KpakWriter, usize)> {
    let pak = Kpak::open(model, Verify::Full)?;
    let mut w = KpakWriter::from_kpak(&pak);
    let scheme = match bits {
        8 => None,
        4 => Some(Scheme::Q4 { group: 32, symmetric: false }),
        b => return Err(Error::Unsupported { what: format!("bundling weights at {b} bits (8 or 4)") }),
    };
    let mut changed = 0;
    if let Some(scheme) = scheme {
        for t in pak.tensors() {
            if t.scheme != Scheme::Q8 || t.shape.len() != 2 {
                continue;
            }
            let (n, k) = (t.shape[0] as usize, t.shape[1] as usize);
            if k % 32 != 0 {
                continue;
            }
            let m = pak.matrix(&t.name)?;
            let dense: Vec<f32> = crate::quant::dequantize(&m).into_iter().map(|v| v as f32).collect();
            let q = crate::quant::quantize(&dense, n, k, scheme)?;
            w.replace_matrix(&t.name, &q)?;
            changed += 1;
        }
        w.set_metadata(
            "kestrel.weights",
            &format!("q4g32 (requantized from q8 for {bits}-bit boards; unchanged rows shorter than 32)"),
        )?;
    }
    Ok((w, changed))
}

/// The systemd unit that runs the loop on the board from `/opt/kestrel`.
pub fn service_unit(board: &Board) -> String {
    let backend = if board.uses_gpu() { "gpu" } else { "cpu" };
    format!(
        "[Unit]\n\
         Description=kestrel perception-to-action loop ({name})\n\
         After=multi-user.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         WorkingDirectory=/opt/kestrel\n\
         # Refuse to start from a damaged bundle.\n\
         ExecStartPre=/opt/kestrel/bin/kestrel selftest --bundle /opt/kestrel --backend cpu\n\
         ExecStart=/opt/kestrel/bin/kestrel loop --board /opt/kestrel/board.toml --backend {backend} \\\n\
         \x20   --model /opt/kestrel/models/detector.kpak --policy /opt/kestrel/models/policy.kpak --seconds 0\n\
         Restart=on-failure\n\
         RestartSec=1\n\
         # The loop keeps deadlines: give it priority over batch work.\n\
         Nice=-10\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = board.name
    )
}

/// The bundle's README.
pub fn readme(board: &Board, binary_target: &str, changed: usize) -> String {
    let pm = board.power_mode();
    format!(
        "# kestrel bundle for {name}\n\n\
         {desc}. Built for `{target}`{glibc}.\n\n\
         | | |\n| --- | --- |\n\
         | memory | {mem} MiB, {bw} GB/s |\n\
         | GPU | {gpu} |\n\
         | power mode | {pm} ({watts} W; set it with `sudo nvpmodel` to the mode of this name) |\n\
         | weights | {bits}-bit ({changed} matrices requantized from the shipped int8 master) |\n\
         | loop | {rate} Hz, perception budget {budget} ms, {backend} backend, {threads} threads |\n\n\
         ## Install\n\n\
         ```sh\n\
         sudo mkdir -p /opt/kestrel && sudo cp -r . /opt/kestrel\n\
         cd /opt/kestrel && sha256sum -c MANIFEST.sha256     # or: bin/kestrel selftest --bundle .\n\
         bin/kestrel selftest --backend cpu\n\
         bin/kestrel loop --board board.toml --model models/detector.kpak --policy models/policy.kpak --seconds 10\n\
         sudo cp kestrel-loop.service /etc/systemd/system/ && sudo systemctl enable --now kestrel-loop\n\
         ```\n\n\
         ## From C\n\n\
         `include/kestrel.h` and `lib/libkestrel.so` (or `.a`): see `examples/c/control_loop.c` in the\n\
         kestrel repository. Link with `-lkestrel -lm -ldl -lpthread`.\n\n\
         The service runs the loop in kestrel's built-in world (a heartbeat and soak of the whole\n\
         perception-to-action path on this board); camera input (V4L2) comes with the `v4l2` feature.\n",
        name = board.name,
        desc = board.description,
        target = binary_target,
        glibc = if board.glibc.is_empty() { String::new() } else { format!(", glibc {} or newer", board.glibc) },
        mem = board.memory.size_mib,
        bw = board.memory.bandwidth_gbs,
        gpu = board.gpu.description,
        pm = pm.name,
        watts = pm.watts,
        bits = board.runtime.weight_bits,
        rate = board.runtime.loop_rate_hz,
        budget = board.runtime.latency_budget_ms,
        backend = board.runtime.backend,
        threads = board.runtime.threads,
    )
}

/// Newest `GLIBC_x.y` version among `symbols` (the output of `objdump -T`), as (x, y).
pub fn newest_glibc(objdump: &str) -> Option<(u32, u32)> {
    objdump
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut it = v.split('.');
            Some((it.next()?.parse().ok()?, it.next().unwrap_or("0").parse().ok()?))
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_glibc_version_is_found() {
        let dump = "0000 DF *UND* 0000 (GLIBC_2.17) memcpy\n0000 DF *UND* 0000 (GLIBC_2.34) __libc_start_main\n0000 DF *UND* GLIBC_2.9 x";
        assert_eq!(newest_glibc(dump), Some((2, 34)));
        assert_eq!(newest_glibc("nothing"), None);
    }

    #[test]
    fn a_manifest_catches_changed_missing_and_added_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("models")).unwrap();
        std::fs::write(d.path().join("models/a.kpak"), b"weights").unwrap();
        std::fs::write(d.path().join("board.toml"), b"name = 'x'").unwrap();
        assert_eq!(write_manifest(d.path()).unwrap(), 2);
        assert!(verify_manifest(d.path()).unwrap().is_empty());
        std::fs::write(d.path().join("models/a.kpak"), b"weightz").unwrap();
        std::fs::remove_file(d.path().join("board.toml")).unwrap();
        std::fs::write(d.path().join("extra"), b"?").unwrap();
        let p = verify_manifest(d.path()).unwrap();
        assert!(p.contains(&ManifestProblem::Mismatch("models/a.kpak".into())));
        assert!(p.contains(&ManifestProblem::Missing("board.toml".into())));
        assert!(p.contains(&ManifestProblem::Unlisted("extra".into())));
    }
}

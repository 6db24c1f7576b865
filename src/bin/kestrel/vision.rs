//! The vision commands: `synth` (and, with the detector, `detect` and `eval`).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use kestrel::vision::dataset::write_synth;
use kestrel::vision::synth::SynthOptions;
use kestrel::{Error, Result};

/// `WxH` -> (W, H), each in 16..=4096.
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let bad =
        || Error::InvalidArgument { reason: format!("--size {s:?}: expected WxH, e.g. 320x240, sides 16 to 4096") };
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
    if !(16..=4096).contains(&w) || !(16..=4096).contains(&h) {
        return Err(bad());
    }
    Ok((w, h))
}

pub fn synth_cmd(
    out: &Path,
    count: usize,
    seed: u64,
    size: &str,
    sequence: Option<usize>,
    json: bool,
) -> Result<ExitCode> {
    let (width, height) = parse_size(size)?;
    if count == 0 {
        return Err(Error::InvalidArgument { reason: "--count must be positive".into() });
    }
    if sequence == Some(0) {
        return Err(Error::InvalidArgument { reason: "--sequence must be at least 1 frame".into() });
    }
    let opts = SynthOptions { width, height, seed, sequence };
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let progress = |done: usize| {
        if tty && (done.is_multiple_of(50) || done == count) {
            eprint!("\r[{done}/{count}] pairs");
        }
    };
    write_synth(out, count, &opts, &progress)?;
    if tty {
        eprintln!();
    }
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            json!({"out": out.display().to_string(), "pairs": count, "seed": seed, "width": width, "height": height,
                   "sequence": sequence, "seconds": secs, "pairs_per_minute": count as f64 / secs * 60.0})
        );
    } else {
        println!("wrote {count} pairs ({width}x{height}, seed {seed}) to {} in {secs:.1} s", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

//! Board profiles: what a deployment target has (memory, bandwidth, GPU, power modes) and how
//! kestrel runs on it (backend, weight precision, loop rate, latency budget). One TOML file per
//! board in `boards/`; the shipped ones are also built into the binary, so `--board NAME` works
//! from a bundle with no files beside it. `boards/README.md` explains each key.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The profiles shipped in `boards/`, embedded at build time: (name, TOML text).
pub const SHIPPED: [(&str, &str); 6] = [
    ("jetson-orin-nano", include_str!("../boards/jetson-orin-nano.toml")),
    ("jetson-orin-nx", include_str!("../boards/jetson-orin-nx.toml")),
    ("jetson-agx-orin", include_str!("../boards/jetson-agx-orin.toml")),
    ("jetson-xavier-nx", include_str!("../boards/jetson-xavier-nx.toml")),
    ("generic-vulkan", include_str!("../boards/generic-vulkan.toml")),
    ("cpu-only", include_str!("../boards/cpu-only.toml")),
];

/// Largest profile file read (a profile is a page of text).
const MAX_PROFILE_BYTES: u64 = 64 * 1024;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// "aarch64", "x86_64" or "any".
    pub arch: String,
    /// Rust target triple of the bundle ("" for the host's).
    pub target: String,
    /// Newest glibc symbol version the binary may need ("" when unconstrained).
    pub glibc: String,
    pub jetpack: String,
    pub memory: Memory,
    pub cpu: Cpu,
    pub gpu: Gpu,
    pub power_modes: Vec<PowerMode>,
    pub runtime: Runtime,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub size_mib: u64,
    pub bandwidth_gbs: f64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    pub cores: u32,
    pub description: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// "vulkan" or "none".
    pub backend: String,
    pub description: String,
    pub fp16_tflops: f64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PowerMode {
    pub name: String,
    pub watts: f64,
    pub cpu_max_mhz: u32,
    pub gpu_max_mhz: u32,
    pub online_cores: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub power_mode: String,
    /// Bit-switching level for int8-master weights: 8, 4 or 2.
    pub weight_bits: u32,
    /// "gpu" or "cpu".
    pub backend: String,
    pub loop_rate_hz: f64,
    pub latency_budget_ms: f64,
    pub threads: u32,
}

impl Board {
    /// Parses and checks a profile (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Board> {
        let bad = |reason: String| Error::InvalidArgument { reason: format!("board profile {origin}: {reason}") };
        let b: Board = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        if b.power_modes.is_empty() {
            return Err(bad("no power_modes".into()));
        }
        if !b.power_modes.iter().any(|m| m.name == b.runtime.power_mode) {
            return Err(bad(format!("runtime.power_mode '{}' is not one of its power_modes", b.runtime.power_mode)));
        }
        if ![8, 4, 2].contains(&b.runtime.weight_bits) {
            return Err(bad(format!("runtime.weight_bits {} is not 8, 4 or 2", b.runtime.weight_bits)));
        }
        match (b.runtime.backend.as_str(), b.gpu.backend.as_str()) {
            ("cpu", _) | ("gpu", "vulkan") => {}
            (r, g) => return Err(bad(format!("runtime.backend '{r}' cannot run on gpu.backend '{g}'"))),
        }
        let rate = b.runtime.loop_rate_hz;
        if !(rate.is_finite() && rate > 0.0 && rate <= 1000.0) {
            return Err(bad(format!("runtime.loop_rate_hz {rate} is not in (0, 1000]")));
        }
        let budget = b.runtime.latency_budget_ms;
        if !(budget.is_finite() && budget > 0.0 && budget < 1000.0 / rate) {
            return Err(bad(format!(
                "runtime.latency_budget_ms {budget} does not fit in a {:.1} ms period",
                1000.0 / rate
            )));
        }
        if b.runtime.threads == 0 {
            return Err(bad("runtime.threads is 0".into()));
        }
        Ok(b)
    }

    /// A shipped profile by name, or a profile file by path (anything with a `.toml` ending or
    /// a path separator).
    pub fn load(name_or_path: &str) -> Result<Board> {
        if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
            let path = Path::new(name_or_path);
            let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
            if len > MAX_PROFILE_BYTES {
                return Err(Error::LimitExceeded { what: "board profile bytes", value: len, limit: MAX_PROFILE_BYTES });
            }
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            return Board::parse(&text, &path.display().to_string());
        }
        let (_, text) = SHIPPED.iter().find(|(n, _)| *n == name_or_path).ok_or_else(|| Error::InvalidArgument {
            reason: format!(
                "no board '{name_or_path}' (shipped: {})",
                SHIPPED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        })?;
        Board::parse(text, name_or_path)
    }

    /// Every shipped profile, parsed.
    pub fn shipped() -> Result<Vec<Board>> {
        SHIPPED.iter().map(|(n, t)| Board::parse(t, n)).collect()
    }

    /// The power mode the runtime section selects.
    pub fn power_mode(&self) -> &PowerMode {
        self.power_modes.iter().find(|m| m.name == self.runtime.power_mode).expect("checked at parse")
    }

    pub fn uses_gpu(&self) -> bool {
        self.runtime.backend == "gpu"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_parses_and_names_itself() {
        for (name, text) in SHIPPED {
            let b = Board::parse(text, name).unwrap();
            assert_eq!(b.name, name);
            assert!(b.runtime.latency_budget_ms < 1000.0 / b.runtime.loop_rate_hz);
            assert_eq!(b.power_mode().name, b.runtime.power_mode);
        }
        let nano = Board::load("jetson-orin-nano").unwrap();
        assert_eq!((nano.arch.as_str(), nano.glibc.as_str(), nano.runtime.weight_bits), ("aarch64", "2.35", 4));
    }

    #[test]
    fn bad_profiles_are_refused_by_name() {
        let (_, good) = SHIPPED[0];
        let cases = [
            (good.replace("weight_bits = 4", "weight_bits = 3"), "weight_bits 3"),
            (good.replace("power_mode = \"15W\"", "power_mode = \"99W\""), "99W"),
            (good.replace("loop_rate_hz = 30.0", "loop_rate_hz = 100.0"), "does not fit"),
            (format!("{good}\nturbo = true\n"), "turbo"),
            (good.replace("[memory]", "[memory]\nsize_mib = \"lots\"\n"), "board profile"),
            ("name = ".to_string(), "board profile"),
        ];
        for (text, needle) in cases {
            let e = Board::parse(&text, "test").unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        assert!(Board::load("jetson-nope").unwrap_err().to_string().contains("jetson-orin-nano"));
    }
}

//! `cargo bench`: GEMV for each weight format at 4096 x 4096 on the CPU, and on the GPU when one
//! is available (set KESTREL_ALLOW_SOFTWARE_GPU=1 to include lavapipe). Prints throughput as a
//! ratio of the copy bandwidth measured in the same run. `KESTREL_BENCH_SIZE=N` changes the size.

use kestrel::backend::gpu::{GpuContext, GpuOptions};
use kestrel::backend::BackendKind;
use kestrel::bench::{self, BenchConfig};
use kestrel::tensor::Scheme;

fn main() {
    // `cargo test` runs benches in test mode with --bench absent: keep that fast.
    let quick = !std::env::args().any(|a| a == "--bench");
    let size: usize =
        std::env::var("KESTREL_BENCH_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(if quick { 256 } else { 4096 });
    let gpu = GpuContext::new(&GpuOptions::from_env()).map_err(|e| eprintln!("GPU benchmarks skipped: {e}")).ok();
    println!(
        "{:<5} {:<14} {:>6} {:>6} {:>11} {:>9} {:>9} {:>7}",
        "", "weights", "n", "k", "median_us", "GB/s", "copy", "ratio"
    );
    for backend in [BackendKind::Cpu, BackendKind::Gpu] {
        if backend == BackendKind::Gpu && gpu.is_none() {
            continue;
        }
        for weights in ["f16", "q8", "q4", "q4g32", "fp4", "fp4g128-f16"] {
            let cfg = BenchConfig {
                scheme: Scheme::parse(weights).expect("known format"),
                n: size,
                k: size,
                m: 1,
                backend,
                runs: if quick { 2 } else { 15 },
                reduction: None,
                activation: None,
                rows: None,
            };
            match bench::run(&cfg, gpu.as_ref()) {
                Ok(r) => println!(
                    "{:<5} {:<14} {:>6} {:>6} {:>11.1} {:>9.2} {:>9.2} {:>7.3}",
                    backend.name(),
                    cfg.scheme.label(),
                    size,
                    size,
                    r.median_us,
                    r.gbps,
                    r.copy_gbps,
                    r.ratio
                ),
                Err(e) => {
                    eprintln!("{} {weights}: {e}", backend.name());
                    std::process::exit(1);
                }
            }
        }
    }
}

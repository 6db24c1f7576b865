#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, cargo-fuzz + libFuzzer) for SECONDS each.
#
#   tools/fuzz.sh [SECONDS] [TARGET...]      default: 20 s for each of kpak onnx voc yolo board
#
# CI runs it with a short budget; run it for hours on demand (tools/fuzz.sh 3600). New corpus
# entries go to fuzz's work folder (ignored by git); a crash is copied to fuzz/regressions/TARGET/,
# where tests/fuzz_corpus.rs runs it under `cargo test` from then on, and the script fails.
# With a nightly toolchain it fuzzes under AddressSanitizer; on stable (CI) it builds without
# a sanitizer (RUSTC_BOOTSTRAP lets cargo-fuzz's coverage flags through), which still finds
# panics, overflows (debug assertions are on), hangs and runaway allocations.
set -euo pipefail
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kpak onnx voc yolo board)
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2

toolchain=()
sanitizer=none
if [ -z "${KESTREL_FUZZ_STABLE:-}" ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
    sanitizer=address
else
    export RUSTC_BOOTSTRAP=1
fi
cargo "${toolchain[@]}" fuzz build --sanitizer "$sanitizer"

failed=()
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t"
    echo "== fuzz $t for ${seconds}s ($sanitizer sanitizer)"
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: a runaway allocation.
    if ! cargo "${toolchain[@]}" fuzz run --sanitizer "$sanitizer" "$t" "work/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        ${KESTREL_FUZZ_SEED:+-seed=$KESTREL_FUZZ_SEED} 2>"work/$t.log"; then
        failed+=("$t")
        mkdir -p "regressions/$t"
        for f in "artifacts/$t"/*; do
            [ -f "$f" ] && cp "$f" "regressions/$t/" && echo "   crash: fuzz/regressions/$t/$(basename "$f")"
        done
        tail -n 40 "work/$t.log"
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "work/$t.log" | sed 's/^/   /' || true
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in ${failed[*]}"
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"

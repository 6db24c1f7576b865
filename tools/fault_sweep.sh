#!/usr/bin/env bash
# The fault-injection table and plot (issue 7): mAP@0.5 against bit-error rate, with and
# without ProAct clipping, for f32 and q4 weights.
#
#   tools/fault_sweep.sh [OUT_DIR] [TRIALS] [PAIRS]     default: /tmp/kestrel-faults 10 50
#
# Builds a release kestrel, generates fresh synthetic pairs (a calibration set and an
# evaluation set with other seeds than anything the detector was trained or calibrated on),
# calibrates clip thresholds on the shipped fused detector, sweeps, and writes OUT_DIR/faults.jsonl.
# The plot (docs/img/faults.png) is drawn by tools/plot_faults.py (host Python, matplotlib).
set -euo pipefail
out=${1:-/tmp/kestrel-faults}
trials=${2:-10}
pairs=${3:-50}
cd "$(dirname "$0")/.."
cargo build --release --quiet
k=target/release/kestrel
mkdir -p "$out"
[ -d "$out/cal" ] || $k synth --out "$out/cal" --count 200 --seed 92000 >/dev/null
[ -d "$out/eval" ] || $k synth --out "$out/eval" --count "$pairs" --seed 92001 >/dev/null
$k calibrate-clip --model models/rgbir-fused.kpak --dataset "$out/cal" --out "$out/fused-clip.kpak"
: > "$out/faults.jsonl"
for precision in f32 q4; do
    $k faults --model "$out/fused-clip.kpak" --dataset "$out/eval" --precision "$precision" \
        --ber 1e-7,1e-6,1e-5,1e-4,1e-3 --trials "$trials" --clip none,layer,hybrid --json | tee -a "$out/faults.jsonl"
done
echo "wrote $out/faults.jsonl; plot: python3 tools/plot_faults.py $out/faults.jsonl docs/img/faults.png"

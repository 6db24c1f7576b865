#!/usr/bin/env bash
# kestrel's CPU executor against ONNX Runtime on the same machine, same thread count, interleaved
# so that drift in a shared machine's speed hits both alike. Prints one line per round and the
# median ratio at the end.
#
#   bash tools/bench_cpu_vs_ort.sh MODEL.onnx [THREADS] [ROUNDS] [RUNS]
#
# Needs the host-tools venv (tools/requirements.txt) for bench_ort.py and a release build.
set -eu
onnx=$1 threads=${2:-2} rounds=${3:-5} runs=${4:-30}
bin=${KESTREL_BIN:-target/release/kestrel}
py=${PYTHON:-python3}
kpak=$(mktemp --suffix .kpak)
trap 'rm -f "$kpak" "$kpak.q4"' EXIT
$bin pack "$onnx" -o "$kpak" --weights f32 > /dev/null
$bin pack "$onnx" -o "$kpak.q4" --weights q4 > /dev/null
field() { sed -n "s/.*\"$1\": *\([0-9.e+-]*\).*/\1/p"; }
ratios=()
for r in $(seq "$rounds"); do
  ours=$($bin bench "$kpak" --backend cpu --threads "$threads" --runs "$runs" --json | field median_ms)
  q4=$($bin bench "$kpak.q4" --backend cpu --threads "$threads" --runs "$runs" --json | field median_ms)
  ort=$($py "$(dirname "$0")/bench_ort.py" "$onnx" --threads "$threads" --runs "$runs" | field median_ms)
  ratio=$(awk -v a="$ours" -v b="$ort" 'BEGIN { printf "%.2f", a / b }')
  ratios+=("$ratio")
  printf 'round %d: kestrel f32 %.2f ms, kestrel q4 %.2f ms, onnxruntime %.2f ms, kestrel/ort %s\n' \
    "$r" "$ours" "$q4" "$ort" "$ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "median kestrel/onnxruntime over %d rounds: %s\n", NR, a[int((NR + 1) / 2)] }'

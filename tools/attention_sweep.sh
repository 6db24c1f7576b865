#!/usr/bin/env bash
# Cost against tokens for CARE linear attention and softmax attention (issue 5): one JSON line per
# (kind, N) from `kestrel bench attention`, then a table. Usage:
#   bash tools/attention_sweep.sh [BACKEND=cpu] [DIM=64] [HEADS=1] [MAX_TOKENS=16384]
set -euo pipefail
backend=${1:-cpu}; dim=${2:-64}; heads=${3:-1}; max=${4:-16384}
bin=${KESTREL:-target/release/kestrel}
[ -x "$bin" ] || cargo build --release
out=$(mktemp)
for n in 256 512 1024 2048 4096 8192 16384; do
  [ "$n" -le "$max" ] || continue
  for kind in care softmax; do
    # Fewer runs where one softmax run takes seconds.
    runs=$(( n >= 8192 ? 3 : (n >= 2048 ? 5 : 20) ))
    "$bin" bench attention --kind $kind --tokens $n --dim $dim --heads $heads --backend $backend \
      --runs $runs --allow-software --json | tail -1 >> "$out"
  done
done
python3 - "$out" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r.get("tokens"), {})[r.get("kind")] = r["median_ms"]
print("| tokens | CARE linear (ms) | softmax (ms) | softmax / CARE |")
print("|---|---|---|---|")
for n in sorted(rows):
    c, s = rows[n].get("care"), rows[n].get("softmax")
    print(f"| {n} | {c:.3f} | {s:.3f} | {s / c:.1f} |")
PY

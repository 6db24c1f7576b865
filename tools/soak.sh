#!/usr/bin/env bash
# The long soak (issue 7): the closed loop in real time for 100,000+ cycles, in windows.
#
#   tools/soak.sh [SECONDS] [RATE_HZ] [WINDOWS]     default: 3400 s at 30 Hz (102,000 cycles), 34 windows
#
# Each window reports total/perceive latency p50/p99/max, deadline misses so far, the loop's
# drift against the wall clock (it stays within one period with absolute deadlines) and the
# process's resident memory. Run it on an otherwise idle machine for latency figures; memory
# and drift hold whatever the load. Writes the JSON report to soak.json in the current folder.
set -euo pipefail
seconds=${1:-3400}
rate=${2:-30}
windows=${3:-34}
root="$(cd "$(dirname "$0")/.." && pwd)"
(cd "$root" && cargo build --release --quiet)
"$root/target/release/kestrel" loop --sim --seconds "$seconds" --rate "$rate" --windows "$windows" \
    --model "$root/models/rgbir-fused.kpak" --policy "$root/models/policy.kpak" --json > soak.json
echo "wrote soak.json ($(( ${seconds%.*} * rate )) cycles)"

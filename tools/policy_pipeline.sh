#!/usr/bin/env bash
# Trains the shipped policy (models/policy.kpak) by behaviour cloning with DAgger:
#   round 0: the scripted expert drives `kestrel loop --sim` and its actions are recorded with
#            the policy's features (what the detector, tracker and conformal gate made of the
#            camera); tools/train_policy.py fits the network; kestrel packs it.
#   round r: the round r-1 policy drives, the expert still labels every cycle (DAgger), and the
#            network is refitted on everything recorded so far.
# Needs: a release build of kestrel, python with tools/requirements.txt. About 45 minutes on
# 2 cores with the defaults. Usage: tools/policy_pipeline.sh [WORKDIR] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/kestrel-policy}
rounds=${2:-3}
seconds=${SECONDS_PER_RUN:-150}
py=${PYTHON:-python3}
k=target/release/kestrel
mkdir -p "$work"
data=()
record() { # round policy seed...
  local round=$1 policy=$2; shift 2
  for s in "$@"; do
    $k loop --policy "$policy" --fast --seconds "$seconds" --seed "$s" --record "$work/r$round-$s" --json >"$work/r$round-$s.json"
    data+=("$work/r$round-$s")
    echo "round $round seed $s: $(python3 -c "import json;d=json.load(open('$work/r$round-$s.json'));print(d['episodes'],'episodes, success',round(d['success_rate'],3))")"
  done
}
record 0 expert 11 12 13 14
for r in $(seq 1 "$rounds"); do
  $py tools/train_policy.py --data "${data[@]}" --out "$work/policy-$((r - 1)).onnx" --epochs 40 --seed 0 | tail -1
  $k pack "$work/policy-$((r - 1)).onnx" --out "$work/policy-$((r - 1)).kpak" --weights f32 >/dev/null
  record "$r" "$work/policy-$((r - 1)).kpak" $((r * 10 + 11)) $((r * 10 + 12))
done
$py tools/train_policy.py --data "${data[@]}" --out "$work/policy.onnx" --epochs 40 --seed 0 | tail -1
$k pack "$work/policy.onnx" --out models/policy.kpak --weights f32

#!/usr/bin/env bash
# Delta mode and CARE attention on a lent NVIDIA machine (the workplace's `device` tool), in one
# call. Prepare here: `cargo build --release && mkdir -p device-bin && strip -o
# device-bin/kestrel target/release/kestrel`, and the Vulkan loader in .gl (see the brief); then
# run there carrying .gl and device-bin (the sequence and the model ship with the repository):
#   bash tools/device_bench_delta.sh
# Results land in $OUT (or ./device-out): delta-*.json (dense against delta on the same frames,
# lockstep) and attention.jsonl (CARE against softmax over tokens).
set -u
out="${OUT:-device-out}"
mkdir -p "$out"
for f in .gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES="${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}"
bin=device-bin/kestrel
work=$(mktemp -d)
for cam in static pan; do
  timeout 60 $bin synth --out "$work/seq-$cam" --count 240 --sequence 30 --camera $cam --seed 3000 > /dev/null
  for theta in 0.02 0.05; do
    timeout 240 $bin eval --model models/rgbir-fused.kpak --sequence "$work/seq-$cam" --delta $theta \
      --backend gpu --json > "$out/delta-$cam-$theta.json"; echo "delta $cam $theta exit $?"
  done
done
: > "$out/attention.jsonl"
for n in 256 1024 4096 16384; do
  for kind in care softmax; do
    timeout 60 $bin bench attention --kind $kind --tokens $n --dim 32 --heads 8 --backend gpu --json \
      | tail -1 >> "$out/attention.jsonl"
  done
done
echo done

#!/usr/bin/env bash
# GPU measurements on a lent NVIDIA machine (the workplace's `device` tool), in one call.
# Build here first:  cargo build --release
# Then run there, carrying .gl (the Vulkan loader .debs) and target/release:
#   bash tools/device_bench.sh
# Results land in $OUT (or ./device-out): selftest.json, bench.jsonl, torch.json.
set -u
out="${OUT:-device-out}"
mkdir -p "$out"
for f in .gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES="${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}"
bin=target/release/kestrel
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee "$out/gpu.txt"

# Correctness first: every kernel and variant against the f64 reference on this GPU.
timeout 120 $bin selftest --backend gpu --json > "$out/selftest.json"; echo "selftest exit $?"
grep -m1 '"passed"' "$out/selftest.json"

# GEMV at the sizes the issue asks for, against the WGSL copy ceiling: every format, then a
# sweep of the kernel variants (reduction x activation storage x rows per workgroup) for q4/fp4.
: > "$out/bench.jsonl"
for size in 8192 16384; do
  for w in q4 fp4 f16 q8 q4g32 fp4g128-f16; do
    timeout 60 $bin bench gemv --backend gpu --weights $w --n $size --k $size --runs 20 --json \
      >> "$out/bench.jsonl" || echo "bench $w $size failed"
  done
  for w in q4 fp4; do
    for red in shared subgroup; do
      for act in f32 f16; do
        for rows in 4 8 16; do
          timeout 60 $bin bench gemv --backend gpu --weights $w --n $size --k $size --runs 20 --json \
            --reduction $red --act $act --rows $rows >> "$out/bench.jsonl" || echo "bench $w $size $red $act $rows failed"
        done
      done
    done
  done
done
timeout 60 $bin bench gemm --backend gpu --weights q4 --n 4096 --k 4096 --m 256 --json >> "$out/bench.jsonl"
cat "$out/bench.jsonl"

# Peer figures from PyTorch on the same GPU, same run.
if python3 -c 'import torch' 2>/dev/null; then
  timeout 120 python3 tools/torch_gemv_ref.py > "$out/torch.json"; cat "$out/torch.json"
fi

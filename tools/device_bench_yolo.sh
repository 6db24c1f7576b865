#!/usr/bin/env bash
# YOLO end to end on a lent NVIDIA machine (the workplace's `device` tool), in one call: kestrel's
# GPU executor against ONNX Runtime's outputs and against PyTorch's latency, same machine, same run.
#
# Prepare here (host venv with tools/requirements.txt; the three folders are git-ignored):
#   for s in 320 640; do python tools/export_yolo.py --cfg yolov8n.yaml --imgsz $s --torchscript \
#     --out device-fixtures/yolov8n-$s; rm device-fixtures/yolov8n-$s/manifest.json; done
#   cargo build --release && mkdir -p device-bin && strip -o device-bin/kestrel target/release/kestrel
# Then run there in one call, carrying .gl (the Vulkan loader .debs), device-bin and device-fixtures
# (about 60 MiB together, under the 64 MiB carry limit):
#   bash tools/device_bench_yolo.sh
# Results land in $OUT (or ./device-out): yolo.jsonl, one JSON line per measurement.
set -u
out="${OUT:-device-out}"
mkdir -p "$out"
for f in .gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES="${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}"
bin=device-bin/kestrel
work=$(mktemp -d)
: > "$out/yolo.jsonl"
timeout 60 $bin selftest --backend gpu --json > "$out/selftest.json"; echo "selftest exit $?"
for d in device-fixtures/*/; do
  name=$(basename "$d")
  imgsz=${name##*-}
  for w in f32 f16; do
    timeout 120 $bin pack "$d/model.onnx" -o "$work/$name-$w.kpak" --weights $w > "$out/pack-$name-$w.log" 2>&1 \
      || { echo "pack $name $w failed"; continue; }
    # Accuracy: the output against ONNX Runtime's, relative L2.
    timeout 120 $bin run "$work/$name-$w.kpak" --input "images=$d/input.npy" --output-dir "$work/run-$name-$w" \
      --backend gpu > "$out/run-$name-$w.log" 2>&1 || echo "run $name $w failed"
    python3 -c "
import json, numpy as np
a = np.load('$work/run-$name-$w/output0.npy').astype(np.float64); b = np.load('$d/output0.npy').astype(np.float64)
print(json.dumps({'model': '$name', 'weights': '$w', 'rel_l2_vs_onnxruntime': float(np.linalg.norm(a - b) / np.linalg.norm(b))}))
" >> "$out/yolo.jsonl" || echo "compare $name $w failed"
    timeout 120 $bin bench "$work/$name-$w.kpak" --backend gpu --runs 100 --json >> "$out/yolo.jsonl" \
      || echo "bench $name $w failed"
  done
  # PyTorch on the same GPU: eager fp32 / fp16 and an fp16 CUDA graph.
  [ -e "$d/model.ts" ] && timeout 300 python3 tools/torch_yolo_ref.py "$d/model.ts" --imgsz "$imgsz" --runs 100 \
    >> "$out/yolo.jsonl"
done
cat "$out/yolo.jsonl"

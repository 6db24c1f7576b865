#!/usr/bin/env bash
# The shipped RGB+IR detectors from scratch: data, training, export, packing, and the evaluation
# table of models/README.md. Host only (the venv of tools/requirements.txt); about 1.5 hours on
# 2 cores, most of it the four trainings. fused-care (the fused model plus a CARE linear-attention
# block at P5, tools/care.py) exports a kestrel::LinearAttention node, which `kestrel pack`
# imports as a native op.
#
#   bash tools/rgbir_pipeline.sh WORKDIR
set -euo pipefail
work=${1:?usage: rgbir_pipeline.sh WORKDIR}
bin=${KESTREL_BIN:-target/release/kestrel}
py=${PYTHON:-python3}
mkdir -p "$work"
# Training and held-out data: different seeds, so no held-out scene was seen in training.
$bin synth --out "$work/train" --count 3000 --seed 1000
$bin synth --out "$work/heldout" --count 600 --seed 2000
for m in fused rgb ir fused-care; do
  # The recipe is 10 epochs; --minutes is only a cap (fused-care: 24 min on 1 thread).
  if [ "$m" = fused-care ]; then minutes=40; else minutes=20; fi
  $py tools/train_rgbir.py train --data "$work/train" --modality $m --imgsz 192 --epochs 10 --minutes $minutes \
    --out "$work/$m"
  $py tools/train_rgbir.py export --checkpoint "$work/$m/model.pt" --out "$work/$m/model.onnx"
  for w in f32 q8 q4 fp4; do
    $bin pack "$work/$m/model.onnx" -o "$work/$m/$w.kpak" --weights $w
    $bin eval --model "$work/$m/$w.kpak" --dataset "$work/heldout" --json > "$work/$m/eval-$w.json"
  done
done
# The table: mAP@0.5 per condition and overall.
for m in rgb ir fused fused-care; do
  for w in f32 q8 q4 fp4; do
    $py -c "
import json, sys
r = json.load(open('$work/$m/eval-$w.json'))
c = r['per_condition']
cells = [c.get(k, {}).get('map50') for k in ('day', 'dusk', 'night', 'fog', 'glare')] + [r['map50']]
print('| $m | $w | ' + ' | '.join('-' if v is None else f'{v:.3f}' for v in cells) + ' |')"
  done
done

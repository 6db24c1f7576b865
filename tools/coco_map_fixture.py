"""Regenerate tests/fixtures/coco-map/fixture.json: ground truth and detections with the mAP that
pycocotools computes for them, the reference `kestrel eval`'s metric is held to (tests/vision.rs).

Host tool (tools/requirements.txt). The boxes are random but shaped like a detector's output on
`kestrel synth` frames: every object found with jittered boxes at various scores, some twice,
some missed, plus false positives, some crowd (VOC difficult) objects, a class with no ground
truth, and images with nothing in them. Scores are distinct, so no order depends on ties.

  python tools/coco_map_fixture.py --out tests/fixtures/coco-map/fixture.json
"""
import argparse
import contextlib
import io
import json

import numpy as np
import pycocotools
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CLASSES = ["person", "car", "bicycle", "dog"]  # no ground truth is ever a dog


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    images, gts, dts = [], [], []
    used_scores = set()

    def score():
        while True:
            s = round(float(rng.uniform(0.01, 0.99)), 6)
            if s not in used_scores:
                used_scores.add(s)
                return s

    W, H = 320, 240
    for i in range(args.images):
        img = {"truth": [], "detections": []}
        for _ in range(rng.integers(0, 6)):
            c = int(rng.integers(0, 3))
            w, h = float(rng.uniform(8, 120)), float(rng.uniform(8, 120))
            x, y = float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h))
            crowd = int(rng.random() < 0.1)
            img["truth"].append([c, round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2), crowd])
            for _ in range(rng.choice([0, 1, 1, 1, 2])):  # missed, found, or found twice
                j = rng.normal(0, 0.12, 4) * [w, h, w, h]
                dc = c if rng.random() < 0.9 else int(rng.integers(0, 3))
                b = [x + j[0], y + j[1], x + w + j[2], y + h + j[3]]
                b = [round(float(v), 2) for v in (min(b[0], b[2] - 1), min(b[1], b[3] - 1), b[2], b[3])]
                img["detections"].append([dc, score()] + b)
        for _ in range(rng.integers(0, 4)):  # false positives
            w, h = float(rng.uniform(8, 80)), float(rng.uniform(8, 80))
            x, y = float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h))
            img["detections"].append([int(rng.integers(0, 4)), score(), round(x, 2), round(y, 2), round(x + w, 2),
                                      round(y + h, 2)])
        images.append(img)
    coco_gt = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)]}
    det_list, ann_id = [], 1
    for i, img in enumerate(images):
        coco_gt["images"].append({"id": i + 1, "width": W, "height": H, "file_name": f"{i:06d}.png"})
        for c, x1, y1, x2, y2, crowd in img["truth"]:
            coco_gt["annotations"].append({"id": ann_id, "image_id": i + 1, "category_id": c + 1,
                                           "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                           "iscrowd": crowd})
            ann_id += 1
        for c, s, x1, y1, x2, y2 in img["detections"]:
            det_list.append({"image_id": i + 1, "category_id": c + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_gt
        gt.createIndex()
        dt = gt.loadRes(det_list)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    per_class = {}
    for k, name in enumerate(CLASSES):
        p = prec[:, :, k, 0, 2]
        per_class[name] = {"ap50": float(p[0][p[0] > -1].mean()) if (p[0] > -1).any() else None,
                           "ap50_95": float(p[p > -1].mean()) if (p > -1).any() else None}
    out = {"classes": CLASSES, "images": images,
           "pycocotools": {"map50": float(ev.stats[1]), "map50_95": float(ev.stats[0]), "per_class": per_class,
                           "version": pycocotools.__version__ if hasattr(pycocotools, "__version__") else "unknown"},
           "note": "boxes are x1 y1 x2 y2 pixels; truth rows: class, box, crowd; detection rows: class, score, box"}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=None, separators=(",", ":"))
    print(json.dumps(out["pycocotools"]))


if __name__ == "__main__":
    main()

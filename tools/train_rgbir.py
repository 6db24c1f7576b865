"""Train the shipped RGB+IR detectors on `kestrel synth` data and export them to ONNX.

Host tool only (tools/requirements.txt): CI and the runtime never run it. Its products are
models/rgbir-fused.kpak, models/rgbir-rgb-only.kpak and models/rgbir-ir-only.kpak (packed with
`kestrel pack`), and the model card in models/README.md.

The fused model follows DEYOLO (PAPERS.md section 3), scaled down to train on 2 CPU cores:
- two YOLOv8-style backbones with separate weights (RGB: 3 channels; IR: 1 channel, the thermal
  camera's single band rather than DEYOLO's replicated BGR), strides 8/16/32;
- a DEA block at P3, P4 and P5: DECA (channel weights from each modality's pooled features,
  crossed: the IR weights gate the RGB features and vice versa, through a 3x3 conv of both) and
  DEPA (spatial weights from 3x3 and 7x7 single-channel convs, again crossed), output
  sigmoid(out_vi + out_ir) as in the authors' code. At these sizes every level is below DECA's
  k = 80/40/20 pyramid, so its global term is the mean over the map, as the code falls back to;
- a YOLOv8 PAN neck and ultralytics' anchor-free Detect head (DFL 16 bins), trained with
  ultralytics' v8DetectionLoss (task-aligned assignment, CIoU + DFL + BCE).
The single-modality baselines are the same backbone, neck and head on one input (no DEA).
`fused-care` is the fused model plus one CARE block (tools/care.py, PAPERS.md section 1) on the
fused P5 map, before the neck, for global context: linear attention over the 6x6 = 36 positions
at 192 (g = 24 of the 96 channels, 2 heads of 12), dw 3x3 and 7x7 local slices, dual interaction
with expansions (4, 4) as in CARE-S0's stages 3-4, layer scale gamma from 1e-6. It exports at
opset 20 (exact GELU as `Gelu`) with one `kestrel::LinearAttention` node.

Inputs are letterboxed to --imgsz (grey 114 padding, /255), as `kestrel detect` does.

  python tools/train_rgbir.py train --data /tmp/synth-train --modality fused --imgsz 192 \
      --minutes 20 --out /tmp/rgbir-fused
  python tools/train_rgbir.py export --checkpoint /tmp/rgbir-fused/model.pt --out /tmp/rgbir-fused/model.onnx
  python tools/train_rgbir.py train --data /tmp/synth-train --modality fused-care --imgsz 192 \
      --epochs 10 --minutes 60 --out /tmp/rgbir-care
  python tools/train_rgbir.py train --data /tmp/synth-train --modality fused --imgsz 192 --epochs 10 \
      --minutes 45 --delta-temporal "t=0.2 t_camera=0.1 lam=1" --sequence /tmp/synth-seq --out /tmp/rgbir-temporal
"""

import argparse
import json
import math
import os
import time
import types
from pathlib import Path

os.environ["YOLO_OFFLINE"] = "1"

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ultralytics.nn.modules import C2f, SPPF, Conv, Detect
from ultralytics.utils.loss import v8DetectionLoss

from care import CUSTOM_OPSETS, CareBlock, OPSET as CARE_OPSET, check_onnx

CLASSES = ["person", "car", "bicycle"]
STRIDES = (8, 16, 32)
WIDTHS = (16, 32, 48, 64, 96)  # stem, /4, P3, P4, P5
# The inputs each modality takes (the export's input names; kestrel maps them to cameras).
INPUTS = {"fused": ("rgb", "ir"), "fused-care": ("rgb", "ir"), "rgb": ("rgb",), "ir": ("ir",)}
# fused-care's CARE block at P5 (C = 96): g = C / 4 as in every released CARE config, 2 heads
# (as in CARE-S0's attention stages), expansions of S0's stages 3-4.
CARE_P5 = dict(g=WIDTHS[4] // 4, head_dim=WIDTHS[4] // 8, attention=True, ratios=(4, 4))


# ------------------------------------------------------------------------------------------ model


class Backbone(nn.Module):
    """YOLOv8-style: Conv s2, Conv s2, C2f, Conv s2, C2f (P3), Conv s2, C2f (P4), Conv s2, C2f, SPPF (P5)."""

    def __init__(self, c_in):
        super().__init__()
        w = WIDTHS
        self.stem = nn.Sequential(Conv(c_in, w[0], 3, 2), Conv(w[0], w[1], 3, 2), C2f(w[1], w[1], 1, True))
        self.p3 = nn.Sequential(Conv(w[1], w[2], 3, 2), C2f(w[2], w[2], 1, True))
        self.p4 = nn.Sequential(Conv(w[2], w[3], 3, 2), C2f(w[3], w[3], 1, True))
        self.p5 = nn.Sequential(Conv(w[3], w[4], 3, 2), C2f(w[4], w[4], 1, True), SPPF(w[4], w[4], 5))

    def forward(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        return p3, p4, self.p5(p4)


class DECA(nn.Module):
    """Channel fusion: each modality's pooled features weight the other modality's channels."""

    def __init__(self, c, reduction=16):
        super().__init__()
        hidden = max(c // reduction, 4)
        # FC as 1x1 convs on the pooled [B, C, 1, 1] map: same math, exports as Conv.
        self.fc = nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, c, 1, bias=False),
                                nn.Sigmoid())
        self.mix = Conv(2 * c, c, 3, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, vi, ir):
        w_v, w_i = self.fc(self.pool(vi)), self.fc(self.pool(ir))
        g = self.pool(self.mix(torch.cat([vi, ir], 1)))
        return vi * torch.sigmoid(w_i * g), ir * torch.sigmoid(w_v * g)


class DEPA(nn.Module):
    """Spatial fusion: single-channel attention maps, crossed between the modalities."""

    def __init__(self, c):
        super().__init__()

        def att():
            return nn.ModuleList([nn.Conv2d(c, 1, 3, padding=1), nn.Conv2d(c, 1, 7, padding=3), nn.Conv2d(2, 1, 5, padding=2)])

        self.att_v, self.att_i = att(), att()
        self.g_v, self.g_i = nn.Conv2d(c, 1, 3, padding=1), nn.Conv2d(c, 1, 3, padding=1)

    @staticmethod
    def attention(m, x):
        return m[2](torch.cat([m[0](x), m[1](x)], 1))

    def forward(self, vi, ir):
        a_v, a_i = self.attention(self.att_v, vi), self.attention(self.att_i, ir)
        g = torch.sigmoid(self.g_v(vi) + self.g_i(ir))
        w_v, w_i = torch.sigmoid(g + a_v), torch.sigmoid(g + a_i)
        return vi * w_i, ir * w_v


class DEA(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.deca, self.depa = DECA(c), DEPA(c)

    def forward(self, vi, ir):
        vi, ir = self.depa(*self.deca(vi, ir))
        return torch.sigmoid(vi + ir)


class Neck(nn.Module):
    """YOLOv8 PAN: top-down then bottom-up, C2f at every merge."""

    def __init__(self):
        super().__init__()
        w = WIDTHS
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = C2f(w[4] + w[3], w[3], 1)
        self.td3 = C2f(w[3] + w[2], w[2], 1)
        self.down3 = Conv(w[2], w[2], 3, 2)
        self.bu4 = C2f(w[2] + w[3], w[3], 1)
        self.down4 = Conv(w[3], w[3], 3, 2)
        self.bu5 = C2f(w[3] + w[4], w[4], 1)

    def forward(self, p3, p4, p5):
        t4 = self.td4(torch.cat([self.up(p5), p4], 1))
        n3 = self.td3(torch.cat([self.up(t4), p3], 1))
        n4 = self.bu4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bu5(torch.cat([self.down4(n4), p5], 1))
        return [n3, n4, n5]


class RgbIrDetector(nn.Module):
    """modality: 'fused' and 'fused-care' take (rgb, ir); 'rgb' takes rgb; 'ir' takes ir."""

    def __init__(self, modality, nc=len(CLASSES)):
        super().__init__()
        self.modality = modality
        fused = modality in ("fused", "fused-care")
        if fused or modality == "rgb":
            self.rgb = Backbone(3)
        if fused or modality == "ir":
            self.ir = Backbone(1)
        if fused:
            self.fuse_levels = nn.ModuleList([DEA(c) for c in WIDTHS[2:]])
        self.neck = Neck()
        head = Detect(nc=nc, ch=WIDTHS[2:])
        head.stride = torch.tensor([float(s) for s in STRIDES])
        self.model = nn.ModuleList([head])  # v8DetectionLoss reads model.model[-1]
        head.bias_init()
        self.stride = head.stride
        self.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
        self.names = dict(enumerate(CLASSES))
        if modality == "fused-care":  # made last, so the shared layers start as in `fused` for a seed
            self.care_p5 = CareBlock(WIDTHS[4], **CARE_P5)

    def forward(self, *inputs):
        if self.modality == "fused":
            rgb, ir = inputs
            feats = [f(a, b) for f, a, b in zip(self.fuse_levels, self.rgb(rgb), self.ir(ir))]
        elif self.modality == "fused-care":
            rgb, ir = inputs
            p3, p4, p5 = [f(a, b) for f, a, b in zip(self.fuse_levels, self.rgb(rgb), self.ir(ir))]
            feats = [p3, p4, self.care_p5(p5)]
        elif self.modality == "rgb":
            feats = self.rgb(inputs[0])
        else:
            feats = self.ir(inputs[0])
        return self.model[-1](self.neck(*feats))


# ------------------------------------------------------------------------------------------- data


def letterbox(img, size, fill=114):
    """Resize keeping the aspect ratio, centre on a fill-coloured square: (array, scale, (dx, dy))."""
    h, w = img.shape[:2]
    r = min(size / w, size / h)
    nw, nh = round(w * r), round(h * r)
    mode = Image.BILINEAR
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), mode))
    dx, dy = (size - nw) // 2, (size - nh) // 2
    out = np.full((size, size) + img.shape[2:], fill, dtype=np.uint8)
    out[dy:dy + nh, dx:dx + nw] = resized
    return out, r, (dx, dy)


def load_split(root, size, limit=None):
    """Every pair of a `kestrel synth` folder, letterboxed: rgb [N,S,S,3], ir [N,S,S], labels."""
    root = Path(root)
    stems = sorted(p.stem for p in (root / "visible").glob("*.png"))[:limit]
    rgb = np.zeros((len(stems), size, size, 3), np.uint8)
    ir = np.zeros((len(stems), size, size), np.uint8)
    labels = []
    for i, s in enumerate(stems):
        v = np.asarray(Image.open(root / "visible" / f"{s}.png").convert("RGB"))
        t = np.asarray(Image.open(root / "infrared" / f"{s}.png").convert("L"))
        rgb[i], r, (dx, dy) = letterbox(v, size)
        ir[i] = letterbox(t, size)[0]
        h, w = v.shape[:2]
        rows = []
        txt = root / "labels" / f"{s}.txt"
        for line in txt.read_text().splitlines() if txt.exists() else []:
            c, cx, cy, bw, bh = map(float, line.split())
            # Normalised to the letterboxed square.
            rows.append([c, (cx * w * r + dx) / size, (cy * h * r + dy) / size, bw * w * r / size, bh * h * r / size])
        labels.append(np.array(rows, np.float32).reshape(-1, 5))
    return rgb, ir, labels


def batch_tensors(rgb, ir, labels, idx, flip):
    x_rgb = torch.from_numpy(rgb[idx]).permute(0, 3, 1, 2).float() / 255.0
    x_ir = torch.from_numpy(ir[idx]).unsqueeze(1).float() / 255.0
    bi, cls, boxes = [], [], []
    for j, i in enumerate(idx):
        lab = labels[i].copy()
        if flip[j]:
            lab[:, 1] = 1.0 - lab[:, 1]
        bi.append(np.full(len(lab), j, np.float32))
        cls.append(lab[:, 0])
        boxes.append(lab[:, 1:])
    if flip.any():
        f = torch.from_numpy(flip)
        x_rgb[f] = x_rgb[f].flip(3)
        x_ir[f] = x_ir[f].flip(3)
    batch = {"batch_idx": torch.from_numpy(np.concatenate(bi)), "cls": torch.from_numpy(np.concatenate(cls)),
             "bboxes": torch.from_numpy(np.concatenate(boxes).reshape(-1, 4))}
    return x_rgb, x_ir, batch


def inputs_for(model, x_rgb, x_ir):
    return tuple({"rgb": x_rgb, "ir": x_ir}[name] for name in INPUTS[model.modality])


# ------------------------------------------------------------------------------------------ train


def thresholded_convs(model, imgsz, exact_below):
    """The convs delta mode thresholds, as (conv, reads_a_camera, share of the dense MACs).

    The runtime keeps the layers under `exact_below` of the dense MACs exact (`--exact-below`);
    the camera stems get the camera multiplier (t_camera).
    """
    camera = {id(b.stem[0].conv) for b in (getattr(model, "rgb", None), getattr(model, "ir", None)) if b is not None}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    macs = {}

    def count(m, inputs, output):
        macs[id(m)] = output.numel() * m.weight[0].numel()

    handles = [m.register_forward_hook(count) for m in convs]
    was_training = model.training
    with torch.no_grad():
        model.eval()
        model(*(torch.zeros(1, {"rgb": 3, "ir": 1}[n], imgsz, imgsz) for n in INPUTS[model.modality]))
    model.train(was_training)
    for h in handles:
        h.remove()
    total = sum(macs.values())
    return [(m, id(m) in camera, macs[id(m)] / total) for m in convs if macs.get(id(m), 0) / total >= exact_below]


def channel_theta(x, mult):
    """Delta mode's scene-relative theta per (sample, channel): mult times the channel's RMS over
    the map, floored at a tenth of the layer's RMS (`exec::delta`, scene-relative thresholds)."""
    ms = x.pow(2).mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
    layer_rms = ms.mean(dim=1, keepdim=True).sqrt()
    return torch.maximum(ms.sqrt(), 0.1 * layer_rms) * mult


class DeltaRobust:
    """Training-time stand-in for delta mode's thresholds (PAPERS.md section 2, `exec::delta`).

    In delta mode a conv sees its held reference input, which differs from the true input by less
    than theta per entry, with theta = t times the channel's RMS over the keyframe (floored at a
    tenth of the layer's RMS; t_camera for the convs that read a camera). This adds uniform noise of
    that bound, scaled per sample by U(0, 1), to the input of every conv delta mode thresholds (the
    ones at or above `exact_below` of the dense MACs, which the runtime keeps exact below), to half
    of the samples, so the detector learns to tolerate the thresholds and calibration can choose
    larger ones for the same accuracy. The error this models is the worst case: delta mode's real
    error is smaller wherever an entry fired recently.

    Measured (README.md, "Video: delta mode"): with "t=0.3 t_camera=0.15" the fused model lost 1.5
    points of dense mAP@0.5 on the held-out stills, and on the held-out static sequence it traded
    MACs for mAP no better than the shipped model, so no model of it ships.
    """

    def __init__(self, model, spec, imgsz):
        kv = dict(part.split("=") for part in spec.split())
        t, t_camera = float(kv["t"]), float(kv["t_camera"])
        self.p = float(kv.get("p", 0.5))
        layers = thresholded_convs(model, imgsz, float(kv.get("exact_below", 0.002)))
        for m, camera, _ in layers:
            mult = t_camera if camera else t
            m.register_forward_pre_hook(lambda mod, args, mult=mult: self.perturb(mod, args, mult))
        self.layers = len(layers)

    def perturb(self, conv, args, mult):
        if not conv.training:
            return None
        x = args[0]
        with torch.no_grad():
            theta = channel_theta(x, mult)
            scale = torch.rand(x.shape[0], 1, 1, 1) * (torch.rand(x.shape[0], 1, 1, 1) < self.p)
            noise = (2 * torch.rand_like(x) - 1) * theta * scale
        return (x + noise,) + tuple(args[1:])


class DeltaTemporal:
    """Trains for delta mode over consecutive frames of `kestrel synth --sequence` clips, after the
    Delta Activation Layer's recipe (PAPERS.md section 2): the forward pass simulates delta mode,
    and a sparsity loss on the frame-to-frame change of every thresholded conv's input teaches the
    network to hold its features still where the scene is still (sensor noise, flicker) so that
    fewer entries pass the thresholds.

    Each step takes pairs (a, b) of frames `gap` = 1..max_gap apart in one clip, flipped alike,
    through one batched forward. At every conv delta mode thresholds (`thresholded_convs`), frame
    a's half is the keyframe and passes as it is; frame b's half sees what delta mode would hand the
    conv: its own entry where |b - a| >= theta (fired), frame a's where not (the held reference),
    with theta from frame a as the runtime takes it from the keyframe. The detection loss on both
    halves then trains accuracy under that error, and

        sparsity = sum over layers of share_l * mean(|b - a| / theta_l)

    (share_l: the layer's part of the dense MACs, so the loss weighs entries by the work they cost;
    theta is not detached, so shrinking a layer's scale does not lower it) is added times `lam`
    times the batch size, the DAL's L1 on the deltas.

    Measured (README.md, "Video: delta mode"), at t=0.2 t_camera=0.1 with 1800 static-camera
    sequence frames: at a given threshold the models trained with lam=1 and 4 save about twice the
    MACs of the shipped one, but they lose 2 to 3 points of dense mAP@0.5 on the held-out stills;
    with lam=0 (the simulation alone) the saving is the shipped model's, and with sim=0 (the loss
    alone) the dense loss is no smaller. No model of it ships.
    """

    def __init__(self, model, spec, imgsz):
        kv = dict(part.split("=") for part in spec.split())
        t, t_camera = float(kv["t"]), float(kv["t_camera"])
        self.lam = float(kv.get("lam", 1.0))
        self.max_gap = int(kv.get("max_gap", 3))
        self.clip = int(kv.get("clip", 30))
        self.pairs = int(kv.get("pairs", 8))
        # sim=0: frame b passes as it is (the sparsity loss alone, without delta mode's error).
        self.sim = kv.get("sim", "1") != "0"
        self.active = False
        # Per pair step: the sparsity sum (a tensor, for the gradient) and the MAC-weighted
        # fraction of frame b's entries that fired (for the log).
        self.sparsity, self.fired = torch.zeros(()), 0.0
        layers = thresholded_convs(model, imgsz, float(kv.get("exact_below", 0.002)))
        for m, camera, share in layers:
            mult = t_camera if camera else t
            m.register_forward_pre_hook(lambda mod, args, mult=mult, share=share: self.simulate(args, mult, share))
        self.layers = len(layers)

    def sample(self, n_frames, rng):
        """Indices (a, b) of `self.pairs` frame pairs, each inside one clip, b after a. The frames,
        sorted by name, come clip after clip (`synth` names them c{clip}_f{frame})."""
        gap = rng.integers(1, self.max_gap + 1, self.pairs)
        clips = n_frames // self.clip
        clip = rng.integers(0, clips, self.pairs)
        a = clip * self.clip + (rng.integers(0, self.clip - gap))
        return a, a + gap

    def simulate(self, args, mult, share):
        if not self.active:
            return None
        x = args[0]
        a, b = x.chunk(2)
        theta = channel_theta(a, mult)
        d = b - a
        ratio = d.abs() / theta
        fired = ratio >= 1.0
        self.sparsity = self.sparsity + share * ratio.mean()
        self.fired += share * fired.float().mean().item()
        if not self.sim:
            return None
        return (torch.cat([a, torch.where(fired, b, a)]),) + tuple(args[1:])

    def loss(self, model, loss_fn, seq, rng):
        """The pair step's loss: detection on both frames (b under delta mode unless sim=0) plus the
        sparsity term."""
        rgb, ir, labels = seq
        a, b = self.sample(len(labels), rng)
        flip = rng.random(self.pairs) < 0.5
        x_rgb, x_ir, batch = batch_tensors(rgb, ir, labels, np.concatenate([a, b]), np.concatenate([flip, flip]))
        self.active, self.sparsity, self.fired = True, torch.zeros(()), 0.0
        try:
            preds = model(*inputs_for(model, x_rgb, x_ir))
        finally:
            self.active = False
        det, _ = loss_fn(preds, batch)
        sparsity = self.lam * 2 * self.pairs * self.sparsity
        return det.sum() + sparsity, float(sparsity.detach()), self.fired


def train(args):
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rgb, ir, labels = load_split(args.data, args.imgsz, args.limit)
    print(f"loaded {len(labels)} pairs in {time.time() - t0:.0f} s", flush=True)
    model = RgbIrDetector(args.modality)
    params = sum(p.numel() for p in model.parameters())
    loss_fn = v8DetectionLoss(model)
    if args.delta_robust:
        robust = DeltaRobust(model, args.delta_robust, args.imgsz)
        print(f"delta-robust training: noise at the inputs of {robust.layers} convs", flush=True)
    temporal = None
    if args.delta_temporal:
        if not args.sequence:
            raise SystemExit("--delta-temporal needs --sequence DIR (kestrel synth --sequence N frames)")
        temporal = DeltaTemporal(model, args.delta_temporal, args.imgsz)
        seq = load_split(args.sequence, args.imgsz)
        if len(seq[2]) < temporal.clip:
            raise SystemExit(f"--sequence {args.sequence}: {len(seq[2])} frames, fewer than one clip of {temporal.clip}")
        print(f"delta-temporal training: {temporal.layers} convs, {len(seq[2])} sequence frames", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(labels) / args.batch)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0)))))
    rng = np.random.default_rng(args.seed)
    start, step, history = time.time(), 0, []
    model.train()
    done = False
    for epoch in range(args.epochs):
        order = rng.permutation(len(labels))
        running, temporal_stats = [], []
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            x_rgb, x_ir, batch = batch_tensors(rgb, ir, labels, idx, rng.random(len(idx)) < 0.5)
            preds = model(*inputs_for(model, x_rgb, x_ir))
            loss, items = loss_fn(preds, batch)
            loss = loss.sum()
            if temporal:
                pair_loss, sparsity, fired = temporal.loss(model, loss_fn, seq, rng)
                loss = loss + pair_loss
                temporal_stats.append((sparsity, fired))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            step += 1
            running.append(items.detach().numpy() if hasattr(items, "numpy") else np.array(list(items.values())))
            if (time.time() - start) / 60 > args.minutes:
                done = True
                break
        mean = np.mean(running, 0).tolist()
        history.append({"epoch": epoch, "loss_box_cls_dfl": mean, "minutes": (time.time() - start) / 60})
        if temporal_stats:
            # The sparsity loss and the MAC-weighted fired fraction of the delta-mode frames.
            history[-1]["sparsity_fired"] = np.mean(temporal_stats, 0).tolist()
        print(json.dumps(history[-1]), flush=True)
        if done:
            break
    torch.save({"modality": args.modality, "state": model.state_dict(), "imgsz": args.imgsz}, out / "model.pt")
    (out / "train.json").write_text(json.dumps({
        "modality": args.modality, "params": params, "pairs": len(labels), "imgsz": args.imgsz, "epochs_run": len(history),
        "steps": step, "batch": args.batch, "lr": args.lr, "seed": args.seed, "minutes": (time.time() - start) / 60,
        "threads": args.threads, "delta_robust": args.delta_robust,
        "delta_temporal": args.delta_temporal, "sequence": args.sequence, "data": str(args.data), "history": history, "torch": torch.__version__}, indent=1))
    print(f"saved {out / 'model.pt'} ({params} parameters)")


# ----------------------------------------------------------------------------------------- export


def export(args):
    import onnx

    ckpt = torch.load(args.checkpoint, map_location="cpu")
    model = RgbIrDetector(ckpt["modality"])
    model.load_state_dict(ckpt["state"])
    model.eval()
    head = model.model[-1]
    head.export, head.format = True, "onnx"
    size = ckpt["imgsz"]
    names = list(INPUTS[model.modality])
    dummy = tuple(torch.zeros(1, {"rgb": 3, "ir": 1}[n], size, size) for n in names)
    # fused-care: opset 20 for an exact `Gelu` (17 spells it with Erf), plus the kestrel domain.
    care = model.modality == "fused-care"
    with torch.no_grad():
        model(*dummy)
        torch.onnx.export(model, dummy, args.out, opset_version=CARE_OPSET if care else 17, input_names=names,
                          output_names=["output0"], dynamo=False, custom_opsets=CUSTOM_OPSETS if care else None)
    m = onnx.load(args.out)
    meta = {
        "description": f"kestrel RGB+IR detector ({model.modality}), DEYOLO-style, trained on kestrel synth",
        "stride": str(max(STRIDES)),
        "task": "detect",
        "imgsz": str([size, size]),
        "names": str(model.names),
        "modality": model.modality,
        "preprocess": "letterbox to imgsz (bilinear, centred, fill 114), RGB / 255; IR: one channel / 255",
    }
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, args.out)
    print(f"wrote {args.out}")
    if care:
        check_onnx(args.out)  # only ops kestrel imports, plus kestrel::LinearAttention


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--modality", choices=tuple(INPUTS), required=True)
    t.add_argument("--imgsz", type=int, default=192)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--minutes", type=float, default=20.0, help="stop after this much training time")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--limit", type=int, help="use the first N pairs")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--delta-robust", metavar="SPEC",
                   help="train for delta mode: 't=0.25 t_camera=0.12 [exact_below=0.002] [p=0.5]' (see DeltaRobust)")
    t.add_argument("--delta-temporal", metavar="SPEC",
                   help="train for delta mode over frame pairs of --sequence: 't=0.2 t_camera=0.1 [lam=1] "
                        "[max_gap=3] [clip=30] [pairs=8] [sim=1] [exact_below=0.002]' (see DeltaTemporal)")
    t.add_argument("--sequence", help="a `kestrel synth --sequence` folder for --delta-temporal")
    t.add_argument("--out", required=True)
    e = sub.add_parser("export")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    args = ap.parse_args()
    {"train": train, "export": export}[args.cmd](args)


if __name__ == "__main__":
    main()

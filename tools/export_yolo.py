"""Export a randomly initialised YOLO (or torchvision classifier) to ONNX, plus reference tensors.

Host tool only (tools/requirements.txt): the runtime and CI never run it; its output is committed
as a fixture (tests/fixtures/yolov8-tiny/) that the Rust ONNX importer is checked against.

What it does, deterministically from --seed and without downloading anything (YOLO_OFFLINE=1 is
forced, no pretrained weights, no onnxslim):

1. Builds the model from its yaml with ultralytics (`DetectionModel(cfg)`, e.g. yolov8n.yaml or
   yolo11n.yaml, shipped inside the ultralytics package), or a torchvision classifier with
   weights=None (--torchvision NAME). --width/--depth/--max-channels override the yaml's scale
   row, so a reduced-width variant keeps exactly the same graph structure; ultralytics rounds every
   channel count up to a multiple of 8 (make_divisible), so any width > 0 gives valid convs.
   --cls-bias sets the class-logit biases (ultralytics' prior, log(5 / nc / (640 / stride)^2),
   makes every score 1e-5..1e-2, where ONNX Runtime's own sigmoid is only ~1e-4 accurate in
   relative terms; 0 spreads them around 0.5).
   --box-ch overrides the hidden width of the Detect head's box branch (cv2), which ultralytics
   otherwise floors at 4 * reg_max = 64 channels whatever the width; reg_max (DFL bins) stays 16.
2. Random init (torch.manual_seed), then --calib-steps forward passes in train mode on seeded
   random images with cumulative BatchNorm averaging, so running mean/var are those of real
   activations rather than 0/1; then eval mode.
3. Exports ONNX, batch 1, static shapes, --imgsz, --opset. For YOLO it uses ultralytics' own
   Exporter (format=onnx, simplify=False, dynamic=False): BN is fused into Conv, the Detect head
   is exported with its decode (DFL + dist2bbox + strides + sigmoid) and metadata_props
   (stride, names, imgsz, task, ...) are written. --exporter torch uses torch.onnx.export
   (TorchScript exporter, dynamo=False) and writes the same metadata keys itself. The
   non-deterministic "date" metadata entry is removed.
4. Draws a fixed input (uniform [0,1), float32, [1,3,H,W]) saved as input.npy, runs onnxruntime
   (CPUExecutionProvider, default graph optimisations) and saves each output as <name>.npy, then
   writes manifest.json (files, shapes, op-type counts, versions, command line, seed, sizes, and
   how far torch and unoptimised onnxruntime are from the saved outputs).

Examples (from the repository root, with the host-tools venv):

  # committed fixture: reduced-width YOLOv8n, 8 classes, 160x160
  python tools/export_yolo.py --cfg yolov8n.yaml --width 0.03125 --box-ch 16 --cls-bias 0 --nc 8 \
      --imgsz 160 --out tests/fixtures/yolov8-tiny
  # full-width yolov8n / yolo11n at 320 (too big to commit)
  python tools/export_yolo.py --cfg yolov8n.yaml --imgsz 320 --out /tmp/yolov8n-320
  python tools/export_yolo.py --cfg yolo11n.yaml --imgsz 320 --out /tmp/yolo11n-320
  # torchvision classifier at 224
  python tools/export_yolo.py --torchvision mobilenet_v3_small --imgsz 224 --nc 1000 --out /tmp/mbv3
"""

import argparse
import collections
import contextlib
import copy
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["YOLO_OFFLINE"] = "1"  # before ultralytics is imported: no downloads, no telemetry

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--cfg", default="yolov8n.yaml", help="ultralytics model yaml (default yolov8n.yaml)")
    src.add_argument("--torchvision", metavar="NAME", help="torchvision.models classifier, weights=None")
    p.add_argument("--width", type=float, help="override width_multiple of the yaml's scale")
    p.add_argument("--depth", type=float, help="override depth_multiple of the yaml's scale")
    p.add_argument("--max-channels", type=int, help="override max_channels of the yaml's scale")
    p.add_argument("--box-ch", type=int, help="hidden channels of the Detect box branch (default: ultralytics' rule)")
    p.add_argument("--cls-bias", type=float,
                   help="set the Detect class-logit biases (default: ultralytics' prior, -12..-9 for 80 classes)")
    p.add_argument("--nc", type=int, default=80, help="number of classes (default 80)")
    p.add_argument("--imgsz", type=int, default=320, help="square input size (default 320)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, calibration and input (default 0)")
    p.add_argument("--calib-steps", type=int, default=4, help="train-mode BN calibration batches (default 4)")
    p.add_argument("--calib-batch", type=int, default=4, help="images per calibration batch (default 4)")
    p.add_argument("--exporter", choices=("auto", "ultralytics", "torch"), default="auto",
                   help="YOLO only: ultralytics Exporter, torch.onnx.export, or ultralytics then torch (default)")
    p.add_argument("--name", default="model", help="ONNX file stem (default model -> model.onnx)")
    p.add_argument("--torchscript", action="store_true",
                   help="also save <name>.ts: the eval model (BN fused) traced with torch.jit.trace, weights "
                        "stored fp16 to halve the file, so a machine without ultralytics can time PyTorch on it "
                        "(tools/torch_yolo_ref.py casts to each precision it times)")
    p.add_argument("--out", required=True, help="output directory (created; existing files are overwritten)")
    return p.parse_args(argv)


def seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def sanitize(name):
    s = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip("._")
    return s or "output"


def calibrate_bn(model, args, in_ch=3):
    """Train-mode passes on seeded random images; BN running stats become the cumulative average."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    gen = torch.Generator().manual_seed(args.seed + 1)
    model.train()
    with torch.no_grad():
        for _ in range(args.calib_steps):
            x = torch.rand(args.calib_batch, in_ch, args.imgsz, args.imgsz, generator=gen)
            model(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()
    return len(bns)


# --------------------------------------------------------------------------------------------- YOLO


def build_yolo(args):
    from ultralytics.nn.modules import Conv, Detect
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    d = yaml_model_load(args.cfg)  # sets d["scale"] from the file name (yolov8n.yaml -> "n")
    scale = d.get("scale") or next(iter(d["scales"]))
    d["scale"] = scale
    depth, width, max_ch = d["scales"][scale]
    depth = args.depth if args.depth is not None else depth
    width = args.width if args.width is not None else width
    max_ch = args.max_channels if args.max_channels is not None else max_ch
    d["scales"][scale] = [depth, width, max_ch]
    d["nc"] = args.nc
    model = DetectionModel(d, ch=3, nc=args.nc, verbose=False)
    head = model.model[-1]
    if not isinstance(head, Detect):
        raise SystemExit(f"{args.cfg}: last layer is {type(head).__name__}, not a Detect head")
    if args.box_ch is not None:
        if args.box_ch < 8 or args.box_ch % 8:
            raise SystemExit("--box-ch must be a positive multiple of 8")
        ch = [seq[0].conv.in_channels for seq in head.cv2]
        c2, r = args.box_ch, head.reg_max
        head.cv2 = torch.nn.ModuleList(
            torch.nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), torch.nn.Conv2d(c2, 4 * r, 1)) for x in ch
        )
        for m in head.cv2.modules():  # ultralytics' initialize_weights() settings
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03
        head.bias_init()
    if args.cls_bias is not None:  # scores near 0.5 instead of ~1e-4, where sigmoid's relative error is large
        for seq in head.cv3:
            seq[-1].bias.data[:] = args.cls_bias
    model.names = {i: f"class{i}" for i in range(args.nc)}
    model.task = "detect"
    info = {
        "cfg": args.cfg,
        "scale": scale,
        "depth_multiple": depth,
        "width_multiple": width,
        "max_channels": max_ch,
        "nc": args.nc,
        "reg_max": head.reg_max,
        "strides": [int(s) for s in head.stride.tolist()],
        "detect_in_channels": [seq[0].conv.in_channels for seq in head.cv2],
        "box_hidden_channels": head.cv2[0][0].conv.out_channels,
        "cls_hidden_channels": (head.cv3[0][0].conv.out_channels if hasattr(head.cv3[0][0], "conv")
                                else head.cv3[0][0][1].conv.out_channels),
        "detect_legacy_cls_branch": bool(head.legacy),
        "cls_bias": args.cls_bias if args.cls_bias is not None else "ultralytics bias_init()",
    }
    return model, info


def export_yolo_ultralytics(model, args, onnx_path):
    from ultralytics.engine.exporter import Exporter

    overrides = dict(format="onnx", imgsz=args.imgsz, opset=args.opset, simplify=False, dynamic=False,
                     batch=1, nms=False, device="cpu", verbose=False)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        m = copy.deepcopy(model)
        m.yaml_file = "model.yaml"  # Exporter names its output after this, relative to the cwd
        f = Exporter(overrides=overrides)(model=m)
        shutil.move(str(Path(tmp) / f), onnx_path)


def export_yolo_torch(model, args, onnx_path):
    from ultralytics.nn.modules import C2f, Detect

    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad = False
    m = m.fuse()
    for mod in m.modules():
        if isinstance(mod, Detect):
            mod.export, mod.format, mod.dynamic = True, "onnx", False
        elif isinstance(mod, C2f):
            mod.forward = mod.forward_split  # as ultralytics' Exporter does: Split instead of chunk
    im = torch.zeros(1, 3, args.imgsz, args.imgsz)
    m(im)  # builds anchors for this shape
    torch.onnx.export(m, im, onnx_path, opset_version=args.opset, input_names=["images"],
                      output_names=["output0"], dynamo=False)
    mo = onnx.load(onnx_path)
    meta = {
        "description": f"Ultralytics {Path(args.cfg).stem} model (random init)",
        "stride": str(int(max(model.stride.tolist()))),
        "task": "detect",
        "batch": "1",
        "imgsz": str([args.imgsz, args.imgsz]),
        "names": str(model.names),
        "channels": "3",
        "end2end": "False",
    }
    for k, v in meta.items():
        e = mo.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(mo, onnx_path)


def save_torchscript(model, args, path):
    """The model as exported (eval, BN fused for YOLO), traced for batch 1 at --imgsz."""
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad = False
    if not args.torchvision:
        m = m.fuse()
    im = torch.zeros(1, 3, args.imgsz, args.imgsz)

    class FirstOutput(torch.nn.Module):  # ultralytics eval returns (decoded, raw): keep the tensor
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            return y[0] if isinstance(y, (tuple, list)) else y

    with torch.no_grad():
        traced = torch.jit.trace(FirstOutput(m), im, check_trace=False)
    traced.half().save(str(path))


# -------------------------------------------------------------------------------------- torchvision


def build_torchvision(args):
    import torchvision

    fn = getattr(torchvision.models, args.torchvision)
    model = fn(weights=None, num_classes=args.nc)
    return model, {"torchvision_model": args.torchvision, "num_classes": args.nc}


def export_torchvision(model, args, onnx_path):
    im = torch.zeros(1, 3, args.imgsz, args.imgsz)
    torch.onnx.export(model.eval(), im, onnx_path, opset_version=args.opset, input_names=["input"],
                      output_names=["logits"], dynamo=False)
    mo = onnx.load(onnx_path)
    for k, v in {"task": "classify", "imgsz": str([args.imgsz, args.imgsz]), "batch": "1",
                 "names": str({i: f"class{i}" for i in range(args.nc)})}.items():
        e = mo.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(mo, onnx_path)


# ------------------------------------------------------------------------------------------- common


def strip_date(onnx_path):
    mo = onnx.load(onnx_path)
    keep = [(p.key, p.value) for p in mo.metadata_props if p.key != "date"]
    if len(keep) != len(mo.metadata_props):
        del mo.metadata_props[:]
        for k, v in keep:
            e = mo.metadata_props.add()
            e.key, e.value = k, v
        onnx.save(mo, onnx_path)


def dims(value_info):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def run_ort(onnx_path, feed, optimise):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(names, feed)


def torch_outputs(model, x):
    with torch.no_grad():
        y = model(x)
    if isinstance(y, (tuple, list)):
        y = y[0]  # ultralytics eval mode: (decoded predictions, raw dict)
    return [y.numpy()]


def file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seed_all(args.seed)

    if args.torchvision:
        model, info = build_torchvision(args)
    else:
        model, info = build_yolo(args)
    n_bn = calibrate_bn(model, args)
    n_params = sum(p.numel() for p in model.parameters())

    onnx_name = f"{args.name}.onnx"
    onnx_path = out / onnx_name
    exporter = args.exporter
    if args.torchvision:
        export_torchvision(model, args, onnx_path)
        exporter = "torch.onnx.export"
    elif exporter in ("auto", "ultralytics"):
        try:
            export_yolo_ultralytics(model, args, onnx_path)
            exporter = "ultralytics"
        except Exception as e:  # noqa: BLE001
            if exporter == "ultralytics":
                raise
            print(f"ultralytics export failed ({e!r}); falling back to torch.onnx.export", file=sys.stderr)
            exporter = "torch"
    if exporter == "torch":
        export_yolo_torch(model, args, onnx_path)
        exporter = "torch.onnx.export"
    strip_date(onnx_path)
    if args.torchscript:
        save_torchscript(model, args, out / f"{args.name}.ts")

    mo = onnx.load(onnx_path)
    onnx.checker.check_model(mo)
    g = mo.graph
    init_names = {i.name for i in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in init_names]
    assert len(graph_inputs) == 1, [i.name for i in graph_inputs]
    inp = graph_inputs[0]
    in_shape = dims(inp)
    assert all(isinstance(d, int) and d > 0 for d in in_shape), f"dynamic input shape {in_shape}"

    rng = np.random.default_rng(args.seed)
    x = rng.random(in_shape, dtype=np.float32)  # uniform [0, 1)
    np.save(out / "input.npy", x)

    names, ys = run_ort(onnx_path, {inp.name: x}, optimise=True)
    _, ys_noopt = run_ort(onnx_path, {inp.name: x}, optimise=False)
    with torch.no_grad():
        ys_torch = torch_outputs(model.eval(), torch.from_numpy(x))

    out_shapes = {o.name: dims(o) for o in g.output}
    outputs, used = [], set()
    for i, (name, y) in enumerate(zip(names, ys)):
        fname = sanitize(name)
        while fname in used or fname == "input":
            fname += "_"
        used.add(fname)
        fname += ".npy"
        y = np.ascontiguousarray(y)
        np.save(out / fname, y)
        entry = {
            "name": name,
            "file": fname,
            "dtype": str(y.dtype),
            "shape": list(y.shape),
            "declared_shape": out_shapes.get(name),
            "min": float(y.min()),
            "max": float(y.max()),
            "mean": float(y.mean()),
            "rel_l2_ort_no_optimisation_vs_saved": rel_l2(ys_noopt[i], y),
        }
        if i < len(ys_torch) and ys_torch[i].shape == y.shape:
            entry["rel_l2_torch_vs_saved"] = rel_l2(ys_torch[i], y)
        if not args.torchvision and y.ndim == 3:  # YOLO detect: rows 0..4 boxes (xywh, pixels), 4.. scores
            entry["rows"] = {"boxes_xywh": [0, 4], "class_scores": [4, int(y.shape[1])]}
            for part, sl in (("boxes", slice(0, 4)), ("scores", slice(4, None))):
                entry[f"{part}_min"] = float(y[:, sl].min())
                entry[f"{part}_max"] = float(y[:, sl].max())
                entry[f"rel_l2_ort_no_optimisation_vs_saved_{part}"] = rel_l2(ys_noopt[i][:, sl], y[:, sl])
                if "rel_l2_torch_vs_saved" in entry:
                    entry[f"rel_l2_torch_vs_saved_{part}"] = rel_l2(ys_torch[i][:, sl], y[:, sl])
        outputs.append(entry)

    op_counts = collections.Counter(n.op_type for n in g.node)
    versions = {"python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
                "onnxruntime": ort.__version__, "torch": torch.__version__}
    if args.torchvision:
        import torchvision

        versions["torchvision"] = torchvision.__version__
    else:
        import ultralytics

        versions["ultralytics"] = ultralytics.__version__

    manifest = {
        "onnx": onnx_name,
        "exporter": exporter,
        "opset": {o.domain or "ai.onnx": o.version for o in mo.opset_import},
        "ir_version": mo.ir_version,
        "producer": f"{mo.producer_name} {mo.producer_version}",
        "input": {"name": inp.name, "shape": in_shape, "dtype": "float32", "file": "input.npy",
                  "distribution": "uniform [0, 1), numpy default_rng(seed)"},
        "outputs": outputs,
        "op_types": dict(sorted(op_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "node_count": len(g.node),
        "initializer_count": len(g.initializer),
        "metadata_props": {p.key: p.value for p in mo.metadata_props},
        "model": {**info, "imgsz": args.imgsz, "parameters": n_params, "batchnorm_layers_calibrated": n_bn,
                  "calib_steps": args.calib_steps, "calib_batch": args.calib_batch},
        "seed": args.seed,
        "versions": versions,
        "command": "python tools/export_yolo.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "ort_session": "CPUExecutionProvider, ORT_ENABLE_ALL, intra_op_num_threads=1",
    }
    files = [onnx_name, "input.npy"] + [o["file"] for o in outputs]
    manifest["files"] = {f: {"bytes": (out / f).stat().st_size, "sha256": file_digest(out / f)} for f in files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum((out / f).stat().st_size for f in files + ["manifest.json"])
    print(json.dumps({"out": str(out), "exporter": exporter, "parameters": n_params, "total_bytes": total,
                      "op_types": manifest["op_types"],
                      "outputs": [(o["name"], o["shape"], o.get("rel_l2_torch_vs_saved")) for o in outputs]}))


if __name__ == "__main__":
    main()

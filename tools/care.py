"""CARE Transformer (PAPERS.md section 1) in PyTorch, with linear attention as one custom ONNX node.

Host tool only (tools/requirements.txt): the runtime and CI never run it. It builds the CARE
classifier and the CARE block that tools/train_rgbir.py puts at P5 of the `fused-care` detector,
and writes the committed fixtures of tests/fixtures/care/.

What kestrel imports, and so what the export contract is:
- Linear attention is ONE node, `kestrel::LinearAttention` (domain `kestrel`, opset 1), inputs
  q, k [B, H, N, D] and v [B, H, N, Dv], output [B, H, N, Dv], no attributes. With
  phi(x) = ELU(x) + 1, per batch and head:
      KV    = phi(K)^T V / N                              [D, Dv]
      z_i   = 1 / (phi(q_i) . mean_j phi(k_j) + 1e-6)
      out_i = z_i * phi(q_i) KV
  Non-causal; the /N and the eps are where the authors' code has them (fp16 range).
- Everything else exports to plain ONNX ops the kestrel importer has (ALLOWED_OPS): exact GELU as
  `Gelu` (opset 20), LayerNorm as `LayerNormalization`, global pooling as `GlobalAveragePool`,
  BatchNorm as `BatchNormalization` (or folded into a Conv by the exporter), batch 1, static shapes.

The model follows the authors' code (zhouyuan888888/CARETrans, models/CARETrans.py):
- stem Conv4x4 s4 -> BN; stages 2-4 start with BN -> Conv2x2 s2;
- token mixer: channel split [mem C-3g | att g | conv1 g | conv2 g]; conv1 dw3x3, conv2 dw7x7;
  att in attention stages: [q; k] = Conv1x1(g -> 2g)(att), v = att (no V or output projection),
  heads = g / head_dim, channel c = head * head_dim + d; otherwise dw(11x1)(att) + dw(1x11)(att);
- dual interaction: f = F + FC2(DW3x3(GELU(FC1(BN(F))))) with F = [att, conv1, conv2] and
  expansion r1; then c = [mem, f] and out = c + FC2'(DW3x3(GELU(FC1'(BN(c))))), expansion r2;
- block x + gamma * Inter(Mixer(x)); the last block of the last stage has no gamma, no residual and
  no FC2', so it outputs r2 * C channels (the head's cls_dim);
- head GAP -> GELU -> LayerNorm(eps 1e-6) -> Linear, ONE head. The released models train two
  (head, dist_head) and average them in eval; that average is one head with
  W = (W1 diag a1 + W2 diag a2) / 2, b = (W1 b1 + W2 b2 + c1 + c2) / 2 after a LayerNorm without
  affine (a_k, b_k the LayerNorm affines, c_k the Linear biases), so a single head loses nothing.

  python tools/care.py export --preset s0-tiny --seed 0 --out tests/fixtures/care/s0-tiny
  python tools/care.py export-attention --seed 0 --out tests/fixtures/care/attention
  python tools/care.py check --dir tests/fixtures/care/s0-tiny
  python tools/care.py export --preset s0 --seed 0 --out /tmp/care-s0     # 224x224, 1000 classes
"""

import argparse
import collections
import json
import shlex
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-6  # z's eps, as in the authors' code
OPSET = 20  # the first opset with an exact `Gelu`; LayerNormalization needs >= 17
CUSTOM_OPSETS = {"kestrel": 1}

# What the kestrel ONNX importer supports, besides kestrel::LinearAttention.
ALLOWED_OPS = frozenset("""
    Add AveragePool BatchNormalization Cast Ceil Concat Constant ConstantOfShape Conv Div Elu Equal
    Flatten Floor Gather Gelu Gemm GlobalAveragePool HardSigmoid HardSwish Identity
    LayerNormalization MatMul MaxPool Mul Range Relu Reshape Resize Shape Sigmoid Slice Softmax
    Split Sqrt Squeeze Sub Transpose Unsqueeze""".split())
CUSTOM_OP = ("kestrel", "LinearAttention")


# ------------------------------------------------------------------------------ linear attention


def linear_attention_math(q, k, v):
    """The op in plain torch (autograd-friendly); q, k [B,H,N,D], v [B,H,N,Dv] -> [B,H,N,Dv]."""
    n = q.shape[-2]
    q = F.elu(q) + 1.0
    k = F.elu(k) + 1.0
    z = 1.0 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + EPS)  # [B,H,N,1]
    kv = (k.transpose(-2, -1) @ v) / n  # [B,H,D,Dv]
    return (q @ kv) * z


def linear_attention_numpy(q, k, v):
    """The same math, float64 NumPy, written out per head as the simplest statement of the op."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    b, h, n, _ = q.shape
    out = np.empty((b, h, n, v.shape[-1]), np.float64)

    def phi(x):
        return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))  # ELU(x) + 1

    for bi in range(b):
        for hi in range(h):
            pq, pk, vv = phi(q[bi, hi]), phi(k[bi, hi]), v[bi, hi]
            kv = pk.T @ vv / n
            z = 1.0 / (pq @ pk.mean(axis=0) + EPS)
            out[bi, hi] = z[:, None] * (pq @ kv)
    return out


class LinearAttentionFn(torch.autograd.Function):
    """Forward is linear_attention_math; export emits one kestrel::LinearAttention node.

    Backward recomputes the forward under autograd (the op is cheap next to its convs), so
    training and export go through the same op.
    """

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.save_for_backward(q, k, v)
        return linear_attention_math(q, k, v)

    @staticmethod
    def backward(ctx, grad):
        q, k, v = (t.detach().requires_grad_() for t in ctx.saved_tensors)
        with torch.enable_grad():
            out = linear_attention_math(q, k, v)
        return torch.autograd.grad(out, (q, k, v), grad)

    @staticmethod
    def symbolic(g, q, k, v):
        out = g.op("kestrel::LinearAttention", q, k, v)
        qs, vs = q.type().sizes(), v.type().sizes()
        out.setType(q.type().with_sizes([qs[0], qs[1], qs[2], vs[3]]))
        return out


class LinearAttention(nn.Module):
    def forward(self, q, k, v):
        return LinearAttentionFn.apply(q, k, v)


# --------------------------------------------------------------------------------------- modules


def dwconv(c, kernel, padding):
    return nn.Conv2d(c, c, kernel, padding=padding, groups=c)


class CareMixer(nn.Module):
    """Asymmetric decoupling: [mem C-3g | att g | conv1 g | conv2 g] -> (mem, [att', conv1', conv2'])."""

    def __init__(self, dim, g, head_dim, attention):
        super().__init__()
        if dim < 3 * g or g % head_dim:
            raise ValueError(f"need C >= 3g and head_dim | g (C={dim}, g={g}, head_dim={head_dim})")
        self.g, self.head_dim, self.attention = g, head_dim, attention
        self.split = (dim - 3 * g, g, g, g)
        self.conv1 = dwconv(g, 3, 1)
        self.conv2 = dwconv(g, 7, 3)
        if attention:
            self.qk = nn.Conv2d(g, 2 * g, 1)
            self.attn = LinearAttention()
        else:
            self.att_v = dwconv(g, (11, 1), (5, 0))
            self.att_h = dwconv(g, (1, 11), (0, 5))

    def global_context(self, att):
        b, g, h, w = (int(s) for s in att.shape)  # static shapes: constants in the exported graph
        heads, n = g // self.head_dim, h * w

        def to_heads(t):  # [B, g, H, W] -> [B, heads, N, head_dim]
            return t.reshape(b, heads, self.head_dim, n).transpose(-2, -1)

        q, k = torch.split(self.qk(att), g, dim=1)
        out = self.attn(to_heads(q), to_heads(k), to_heads(att))
        return out.transpose(-2, -1).reshape(b, g, h, w)

    def forward(self, x):
        mem, att, c1, c2 = torch.split(x, self.split, dim=1)
        att = self.global_context(att) if self.attention else self.att_v(att) + self.att_h(att)
        return mem, torch.cat([att, self.conv1(c1), self.conv2(c2)], 1)


class Interaction(nn.Sequential):
    """BN -> FC1 (1x1, x ratio) -> GELU -> DW3x3 -> FC2 (1x1 back), FC2 optional."""

    def __init__(self, dim, ratio, fc2=True):
        hidden = ratio * dim
        layers = [nn.BatchNorm2d(dim), nn.Conv2d(dim, hidden, 1), nn.GELU(), dwconv(hidden, 3, 1)]
        if fc2:
            layers.append(nn.Conv2d(hidden, dim, 1))
        super().__init__(*layers)


class DualInteraction(nn.Module):
    def __init__(self, dim, g, ratios, last=False):
        super().__init__()
        r1, r2 = ratios
        self.local_global = Interaction(3 * g, r1)  # step 1: across the att, conv1, conv2 slices
        self.memory = Interaction(dim, r2, fc2=not last)  # step 2: with the memory channels
        self.last = last

    def forward(self, mem, f):
        f = f + self.local_global(f)
        c = torch.cat([mem, f], 1)
        return self.memory(c) if self.last else c + self.memory(c)


class CareBlock(nn.Module):
    """x + gamma * Inter(Mixer(x)); `last`: Inter(Mixer(x)) with r2 * C output channels."""

    def __init__(self, dim, g, head_dim, attention, ratios, last=False, layer_scale=1e-6):
        super().__init__()
        self.mixer = CareMixer(dim, g, head_dim, attention)
        self.inter = DualInteraction(dim, g, ratios, last)
        self.last = last
        self.gamma = None if last else nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x):
        y = self.inter(*self.mixer(x))
        return y if self.last else x + self.gamma.reshape(1, -1, 1, 1) * y


@dataclass(frozen=True)
class CareConfig:
    depths: tuple
    dims: tuple  # C_i (the paper's feat_i + mem_i)
    groups: tuple  # g_i (the code's mem_dims): width of each of the att, conv1, conv2 slices
    ratios: tuple  # (r1, r2) per stage
    head_dims: tuple  # per stage; used where attention is on
    attention: tuple  # per stage: linear attention (True) or dw 11x1 + 1x11 (False)
    imgsz: int
    num_classes: int


PRESETS = {
    # CARE-S0 as released (cls_dim = r2 * C_4 = 1024).
    "s0": CareConfig(depths=(2, 4, 8, 4), dims=(32, 64, 128, 256), groups=(8, 16, 32, 64),
                     ratios=((2, 2), (2, 4), (4, 4), (4, 4)), head_dims=(1, 1, 16, 32),
                     attention=(False, False, True, True), imgsz=224, num_classes=1000),
    # S0 at half width and depth (1, 1, 2, 1), for the committed fixture: every op kind, two heads
    # per attention stage, two gamma blocks in stage 3 and the `last` block in stage 4.
    "s0-tiny": CareConfig(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), groups=(4, 8, 16, 32),
                          ratios=((2, 2), (2, 4), (4, 4), (4, 4)), head_dims=(1, 1, 8, 16),
                          attention=(False, False, True, True), imgsz=64, num_classes=10),
}


class CareClassifier(nn.Module):
    def __init__(self, cfg: CareConfig, in_ch=3):
        super().__init__()
        self.cfg = cfg
        d = cfg.dims
        self.stem = nn.Sequential(nn.Conv2d(in_ch, d[0], 4, stride=4), nn.BatchNorm2d(d[0]))
        stages = []
        for i, depth in enumerate(cfg.depths):
            layers = [] if i == 0 else [nn.BatchNorm2d(d[i - 1]), nn.Conv2d(d[i - 1], d[i], 2, stride=2)]
            for j in range(depth):
                last = i == len(cfg.depths) - 1 and j == depth - 1
                layers.append(CareBlock(d[i], cfg.groups[i], cfg.head_dims[i], cfg.attention[i], cfg.ratios[i], last))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        cls_dim = cfg.ratios[-1][1] * d[-1]
        self.norm = nn.LayerNorm(cls_dim, eps=1e-6)
        self.fc = nn.Linear(cls_dim, cfg.num_classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # GlobalAveragePool + Flatten, not ReduceMean
        return self.fc(self.norm(F.gelu(x)))


# ---------------------------------------------------------------------------------------- export


def randomise(model, seed):
    """Weights, BN statistics and affines and layer scales such that every branch matters numerically.

    Fresh-init values would hide bugs: gamma 1e-6 makes every block an identity, BN with mean 0,
    var 1, weight 1, bias 0 is one too, and PyTorch's default conv init (variance 1/(3 fan_in))
    shrinks each residual branch ~5x, so a wrong branch would move the output by < 0.1%. With
    variance-preserving N(0, 1/fan_in) weights, 10% noise on any one conv of s0-tiny (the qk convs
    included) moves the logits by 0.5-19%.
    """
    gen = torch.Generator().manual_seed(seed + 1)

    def u(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=torch.float64) / fan_in ** 0.5)
                m.bias.copy_(u(m.bias.shape, -0.2, 0.2))
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(u(c, -0.5, 0.5))
                m.running_var.copy_(u(c, 0.5, 2.0))
                m.weight.copy_(u(c, 0.5, 1.5))
                m.bias.copy_(u(c, -0.2, 0.2))
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(u(m.weight.shape, 0.5, 1.5))
                m.bias.copy_(u(m.bias.shape, -0.2, 0.2))
            elif isinstance(m, CareBlock) and m.gamma is not None:
                m.gamma.copy_(u(m.gamma.shape, 0.5, 1.5))


def onnx_export(model, args, path, input_names, output_names):
    """TorchScript exporter (dynamo=False), opset 20, the kestrel domain, static shapes."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter is deprecated, and int(shape) makes the tracer warn: both on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, args, str(path), opset_version=OPSET, input_names=input_names,
                          output_names=output_names, custom_opsets=CUSTOM_OPSETS, dynamo=False)


def op_types(model_proto):
    """{op type (domain::type outside the default domain): count}, sorted by name."""
    c = collections.Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                            for n in model_proto.graph.node)
    return dict(sorted(c.items()))


def check_onnx(path):
    """onnx.checker, then every node must be an ALLOWED_OPS op or kestrel::LinearAttention."""
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    ops = op_types(m)
    bad = [o for o in ops if o not in ALLOWED_OPS and o != "::".join(CUSTOM_OP)]
    print(f"{path}: opset {[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}")
    print(f"  op types: {ops}")
    if bad:
        raise SystemExit(f"{path}: ops outside what kestrel imports: {bad}")
    return m, ops


def io_shapes(model_proto):
    def dims(vi):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]

    init = {i.name for i in model_proto.graph.initializer}
    return ({i.name: dims(i) for i in model_proto.graph.input if i.name not in init},
            {o.name: dims(o) for o in model_proto.graph.output})


def diff(a, b):
    """(max abs, max abs / max |b|, relative L2) of a against the reference b."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.abs(a - b)
    return {"max_abs": float(d.max()), "max_abs_over_max_ref": float(d.max() / max(np.abs(b).max(), 1e-300)),
            "max_rel": float((d / np.maximum(np.abs(b), 1e-300)).max()),
            "rel_l2": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))}


def write_manifest(out, **entries):
    entries.update(command="python tools/care.py " + shlex.join(sys.argv[1:]), torch=torch.__version__,
                   numpy=np.__version__, files={p.name: p.stat().st_size for p in sorted(out.iterdir())
                                                if p.name != "manifest.json"})
    (out / "manifest.json").write_text(json.dumps(entries, indent=1) + "\n")


def cmd_export(args):
    import onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = PRESETS[args.preset]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = CareClassifier(cfg)
    randomise(model, args.seed)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    x = np.random.default_rng(args.seed).standard_normal((1, 3, cfg.imgsz, cfg.imgsz)).astype(np.float32)
    with torch.no_grad():
        y32 = model(torch.from_numpy(x)).numpy()
        y64 = model.double()(torch.from_numpy(x).double()).numpy()
    model.float()
    onnx_export(model, (torch.from_numpy(x),), out / "model.onnx", ["input"], ["output"])
    m = onnx.load(str(out / "model.onnx"))
    for k, v in {"task": "classify", "arch": f"care-{args.preset}", "imgsz": str([cfg.imgsz, cfg.imgsz]),
                 "config": json.dumps(asdict(cfg)), "weights": f"random (seed {args.seed}), not trained"}.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, str(out / "model.onnx"))
    _, ops = check_onnx(out / "model.onnx")
    np.save(out / "input.npy", x)
    np.save(out / "output.npy", y64)
    np.save(out / "output_f32.npy", y32)
    d = diff(y32, y64)
    print(f"  {params} parameters; output {list(y64.shape)}, |y| <= {np.abs(y64).max():.3g}; "
          f"float32 vs float64: {d}")
    write_manifest(out, preset=args.preset, config=asdict(cfg), seed=args.seed, params=params,
                   inputs=io_shapes(m)[0], outputs=io_shapes(m)[1], op_types=ops, f32_vs_f64=d)


class AttentionOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = LinearAttention()

    def forward(self, q, k, v):
        return self.attn(q, k, v)


def cmd_export_attention(args):
    import onnx

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    b, h, n, d, dv = 1, 4, 64, 16, 16
    q, k = (rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((b, h, n, dv)).astype(np.float32)
    feed = [torch.from_numpy(t) for t in (q, k, v)]
    onnx_export(AttentionOnly(), tuple(feed), out / "model.onnx", ["q", "k", "v"], ["output"])
    m, ops = check_onnx(out / "model.onnx")
    with torch.no_grad():
        y32 = AttentionOnly()(*feed).numpy()
    y64 = linear_attention_numpy(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v), ("output", y64), ("output_f32", y32)):
        np.save(out / f"{name}.npy", t)
    dd = diff(y32, y64)
    print(f"  output {list(y64.shape)}; torch float32 vs numpy float64: {dd}")
    write_manifest(out, seed=args.seed, inputs=io_shapes(m)[0], outputs=io_shapes(m)[1], op_types=ops,
                   f32_vs_f64=dd)


# ----------------------------------------------------------------------------------------- check


def decompose_linear_attention(model_proto):
    """A copy of the model with each kestrel::LinearAttention node spelled out in standard ONNX ops.

    Only for checking the export wiring with ONNX Runtime (which has no kestrel kernel); it uses
    ReduceMean, so it is not for kestrel.
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model_proto)
    g = m.graph
    nodes = []
    for i, node in enumerate(g.node):
        if (node.domain, node.op_type) != CUSTOM_OP:
            nodes.append(node)
            continue
        q, k, v = node.input
        p = f"la{i}_"
        one = numpy_helper.from_array(np.array(1.0, np.float32), p + "one")
        eps = numpy_helper.from_array(np.array(EPS, np.float32), p + "eps")
        axes = numpy_helper.from_array(np.array([2], np.int64), p + "axes")
        g.initializer.extend([one, eps, axes])
        nodes += [
            helper.make_node("Elu", [q], [p + "eq"]), helper.make_node("Add", [p + "eq", p + "one"], [p + "q"]),
            helper.make_node("Elu", [k], [p + "ek"]), helper.make_node("Add", [p + "ek", p + "one"], [p + "k"]),
            helper.make_node("Transpose", [p + "k"], [p + "kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [p + "kt", v], [p + "kv_sum"]),
            helper.make_node("Shape", [q], [p + "shape"]),
            helper.make_node("Gather", [p + "shape", p + "axes"], [p + "n_i"], axis=0),
            helper.make_node("Cast", [p + "n_i"], [p + "n"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Div", [p + "kv_sum", p + "n"], [p + "kv"]),
            helper.make_node("ReduceMean", [p + "k", p + "axes"], [p + "km"], keepdims=1),
            helper.make_node("Transpose", [p + "km"], [p + "kmt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [p + "q", p + "kmt"], [p + "den0"]),
            helper.make_node("Add", [p + "den0", p + "eps"], [p + "den"]),
            helper.make_node("MatMul", [p + "q", p + "kv"], [p + "num"]),
            helper.make_node("Div", [p + "num", p + "den"], [node.output[0]]),
        ]
    del g.node[:]
    g.node.extend(nodes)
    del m.opset_import[:]
    m.opset_import.extend([helper.make_opsetid("", OPSET)])
    return m


def cmd_check(args):
    """Self-consistency: NumPy float64 reference against the torch op, then the fixture in --dir."""
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    worst = 0.0
    for shape, dv in (((1, 4, 64, 16), 16), ((2, 3, 37, 8), 5), ((1, 2, 9, 32), 32), ((1, 1, 1, 4), 7)):
        q, k = (rng.standard_normal(shape) * 2 for _ in range(2))
        v = rng.standard_normal(shape[:3] + (dv,))
        ref = linear_attention_numpy(q, k, v)
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            t = [torch.from_numpy(a).to(dtype).requires_grad_() for a in (q, k, v)]
            y = LinearAttentionFn.apply(*t)
            d = diff(y.detach().double().numpy(), ref)
            print(f"LinearAttention {list(shape)} Dv {dv} {str(dtype)[6:]}: rel L2 {d['rel_l2']:.2e}, "
                  f"max abs {d['max_abs']:.2e}")
            if d["rel_l2"] > tol:
                raise SystemExit(f"LinearAttention disagrees with the NumPy reference ({d['rel_l2']:.3e} > {tol})")
            if dtype == torch.float64:
                worst = max(worst, d["rel_l2"])
        # The recomputing backward must be the autograd of the math itself.
        t = [torch.from_numpy(a).requires_grad_() for a in (q, k, v)]
        if not torch.autograd.gradcheck(LinearAttentionFn.apply, t):
            raise SystemExit("LinearAttention backward fails gradcheck")
    print(f"NumPy float64 vs torch float64: worst rel L2 {worst:.2e}; gradcheck ok")
    if args.dir:
        check_fixture(Path(args.dir))


def check_fixture(d):
    """The ONNX op set, the stored outputs, and the graph run by ONNX Runtime with the op spelled out."""
    import onnxruntime as ort

    m, _ = check_onnx(d / "model.onnx")
    inputs, outputs = io_shapes(m)
    print(f"  inputs {inputs}, outputs {outputs}")
    feed = {name: np.load(d / f"{name}.npy") for name in inputs}
    ref = np.load(d / "output.npy")
    f32 = np.load(d / "output_f32.npy")
    if set(inputs) == {"q", "k", "v"}:
        d_ref = diff(linear_attention_numpy(feed["q"], feed["k"], feed["v"]), ref)
        print(f"  NumPy reference vs output.npy: {d_ref}")
        if d_ref["rel_l2"] > 1e-12:
            raise SystemExit("output.npy is not the NumPy reference of the inputs")
    print(f"  output_f32.npy vs output.npy: {diff(f32, ref)}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(decompose_linear_attention(m).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    y = sess.run(None, feed)[0]
    d_ort = diff(y, ref)
    print(f"  ONNX Runtime (LinearAttention decomposed) float32 vs output.npy: {d_ort}")
    if d_ort["rel_l2"] > 1e-4:
        raise SystemExit("the exported graph does not compute the stored output")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="CARE classifier: model.onnx, input.npy, output.npy (f64), output_f32.npy")
    e.add_argument("--preset", choices=sorted(PRESETS), default="s0-tiny")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--out", required=True)
    a = sub.add_parser("export-attention", help="one LinearAttention node: q, k, v [1,4,64,16] and outputs")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", required=True)
    c = sub.add_parser("check", help="NumPy float64 reference vs the torch op; then the fixture in --dir")
    c.add_argument("--dir", help="a directory written by export or export-attention")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    {"export": cmd_export, "export-attention": cmd_export_attention, "check": cmd_check}[args.cmd](args)


if __name__ == "__main__":
    main()

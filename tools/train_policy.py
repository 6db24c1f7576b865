"""Behaviour-clone the person-following policy from `kestrel loop --sim --record` demonstrations.

Host tool only (tools/requirements.txt): CI and the runtime never run it. The robot approaches and
tracks a target person and avoids other objects, seeing only through the camera + detector, so
the policy maps a 30-float feature vector (robot state, the target track, the 4 nearest other
detections; layout in kestrel's loop) to a 7-float action (dx, dy, dz, droll, dpitch, dyaw,
gripper). The scripted expert in the simulator provides the labels; DAgger rounds add more DIRs.

Pipeline:  kestrel loop --sim --record DIR  ->  this tool (policy.onnx)  ->  kestrel pack  ->
models/policy.kpak. Each DIR holds features.npy (float32 [N, 30]), actions.npy (float32 [N, 7])
and episodes.npy (int32 [N]); train/validation is split by episode, never by row.

The model is an MLP 30 -> hidden -> hidden -> 7 (ReLU). Its outputs are bounded inside the graph
so it can never command out of range: dx = 1.5*sigmoid(a0), dyaw = 1.5*(2*sigmoid(a5) - 1),
gripper = sigmoid(a6), dims 1..4 raw. That is written as one blend with constant vectors,
action = sigmoid(a)*S + a*L + B, so the ONNX holds only Gemm, Relu, Sigmoid, Mul and Add
(opset 17, TorchScript exporter, static [1, 30] -> [1, 7]).

  python tools/train_policy.py --data /tmp/rec0 /tmp/rec1 --out /tmp/policy.onnx --epochs 40
  python tools/train_policy.py --selftest
"""

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

N_FEATURES, N_ACTIONS = 30, 7
MAX_SPEED, MAX_YAW = 1.5, 1.5
NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
OPSET = 17
ALLOWED_OPS = {"Gemm", "MatMul", "Add", "Relu", "Sigmoid", "Mul", "Concat", "Slice"}


class Policy(nn.Module):
    """MLP with the action bounds applied in-graph: action = sigmoid(a)*S + a*L + B."""

    def __init__(self, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, N_ACTIONS))
        self.register_buffer("S", torch.tensor([[MAX_SPEED, 0, 0, 0, 0, 2 * MAX_YAW, 1.0]]))
        self.register_buffer("L", torch.tensor([[0.0, 1, 1, 1, 1, 0, 0]]))
        self.register_buffer("B", torch.tensor([[0.0, 0, 0, 0, 0, -MAX_YAW, 0]]))

    def forward(self, x):
        a = self.net(x)
        return torch.sigmoid(a) * self.S + a * self.L + self.B


def loss_fn(model, x, y, w):
    """Per-sample weighted: MSE on dx/1.5, dyaw/1.5 and the 4 zero dims; BCE (logits) on gripper."""
    a = model.net(x)
    act = torch.sigmoid(a) * model.S + a * model.L + model.B
    scale = torch.tensor([MAX_SPEED, 1, 1, 1, 1, MAX_YAW], dtype=x.dtype)
    mse = ((act[:, :6] - y[:, :6]) / scale).pow(2).sum(1)
    bce = F.binary_cross_entropy_with_logits(a[:, 6], (y[:, 6] > 0.5).to(x.dtype), reduction="none")
    return ((mse + bce) * w).sum() / w.sum()


def load(dirs):
    """Concatenate DIRs; episode ids are made unique across DIRs (each DIR numbers its own)."""
    xs, ys, es, offset = [], [], [], 0
    for d in map(Path, dirs):
        x, y = np.load(d / "features.npy"), np.load(d / "actions.npy")
        e = np.load(d / "episodes.npy").astype(np.int64)
        if x.ndim != 2 or x.shape[1] != N_FEATURES or y.shape != (len(x), N_ACTIONS) or e.shape != (len(x),):
            raise SystemExit(f"{d}: bad shapes features {x.shape} actions {y.shape} episodes {e.shape}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise SystemExit(f"{d}: non-finite values")
        _, e = np.unique(e, return_inverse=True)
        xs.append(x.astype(np.float32))
        ys.append(y.astype(np.float32))
        es.append(e + offset)
        offset += int(e.max()) + 1 if len(e) else 0
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(es)


def split(episodes, val_fraction, rng):
    """Boolean validation mask choosing whole episodes (at least one each side)."""
    ids = np.unique(episodes)
    if len(ids) < 2:
        raise SystemExit(f"need >= 2 episodes to split by episode, got {len(ids)}")
    n_val = min(max(1, round(val_fraction * len(ids))), len(ids) - 1)
    return np.isin(episodes, rng.permutation(ids)[:n_val])


def sample_weights(y, balance):
    """Optional inverse-frequency weights over (stopped?, turn left/straight/right) bins."""
    if not balance:
        return np.ones(len(y), np.float32)
    bins = (y[:, 0] < 0.1).astype(int) * 3 + np.digitize(y[:, 5], [-0.2, 0.2])
    counts = np.bincount(bins, minlength=6).astype(np.float64)
    w = 1.0 / counts[bins]
    return (w / w.mean()).astype(np.float32)


@torch.no_grad()
def evaluate(model, x, y):
    model.eval()
    loss = loss_fn(model, x, y, torch.ones(len(x))).item()
    pred = model(x)
    mse = ((pred - y) ** 2).mean(0).tolist()
    acc = ((pred[:, 6] > 0.5) == (y[:, 6] > 0.5)).float().mean().item()
    return loss, mse, acc


def train(model, xt, yt, wt, xv, yv, epochs, lr, batch, gen):
    """Adam (cosine-decayed lr) on shuffled minibatches; returns initial and per-epoch val losses."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    history = [evaluate(model, xv, yv)[0]]
    print(f"epoch   0  train -         val {history[0]:.5f}")
    for epoch in range(1, epochs + 1):
        model.train()
        total, perm = 0.0, torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            loss = loss_fn(model, xt[idx], yt[idx], wt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        history.append(evaluate(model, xv, yv)[0])
        print(f"epoch {epoch:3d}  train {total / len(xt):.5f}  val {history[-1]:.5f}", flush=True)
    return history


def export(model, path, xv):
    """opset 17, static [1, 30] -> [1, 7]; check ops, names, shapes and ORT vs torch on <= 256 rows."""
    import onnx
    import onnxruntime as ort

    model.eval()
    with warnings.catch_warnings():  # dynamo=False is deliberate (as in care.py, export_yolo.py)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (xv[:1],), str(path), opset_version=OPSET, input_names=["features"],
                          output_names=["action"], dynamo=False)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    ops = sorted({n.op_type for n in m.graph.node})
    if not set(ops) <= ALLOWED_OPS:
        raise SystemExit(f"{path}: unsupported ops {sorted(set(ops) - ALLOWED_OPS)}")
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]
    io = [(v.name, dims(v)) for v in (m.graph.input[0], m.graph.output[0])]
    assert io == [("features", [1, N_FEATURES]), ("action", [1, N_ACTIONS])], io
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rows = xv[:256].numpy()
    with torch.no_grad():
        ref = model(xv[:256]).numpy()
    got = np.concatenate([sess.run(["action"], {"features": r[None]})[0] for r in rows])
    diff = float(np.abs(got - ref).max())
    ok = diff < 1e-5
    print(f"onnx check: {path} ops {ops} io {io}; ORT vs torch on {len(rows)} val rows: "
          f"max abs diff {diff:.3g} {'OK' if ok else 'FAIL'}")
    if not ok:
        raise SystemExit("ORT output differs from torch")
    return diff


def run(args):
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    x, y, e = load(args.data)
    val = split(e, args.val_fraction, rng)
    w = sample_weights(y[~val], args.balance)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    xt, yt, xv, yv = t(x[~val]), t(y[~val]), t(x[val]), t(y[val])
    print(f"{len(x)} rows, {len(np.unique(e))} episodes: train {len(xt)} rows / val {len(xv)} rows "
          f"({len(np.unique(e[val]))} episodes)")
    model = Policy(args.hidden)
    gen = torch.Generator().manual_seed(args.seed)
    history = train(model, xt, yt, t(w), xv, yv, args.epochs, args.lr, args.batch, gen)
    loss, mse, acc = evaluate(model, xv, yv)
    diff = export(model, args.out, xv) if args.out else None
    summary = dict(rows=len(x), episodes=int(len(np.unique(e))), val_rows=len(xv),
                   val_episodes=int(len(np.unique(e[val]))), val_loss=round(loss, 6),
                   val_mse={n: round(v, 6) for n, v in zip(NAMES, mse)}, gripper_accuracy=round(acc, 4),
                   onnx=str(args.out) if args.out else None, ort_max_abs_diff=diff)
    print(json.dumps(summary))
    return history


def synth(out, episodes=60, steps=100, seed=0):
    """Synthetic demonstrations in the recorder's layout: actions are smooth functions of features."""
    rng = np.random.default_rng(seed)
    n = episodes * steps
    x = rng.uniform(-1, 1, (n, N_FEATURES)).astype(np.float32)
    x[:, [2, 4, 10, 15, 20, 25]] = rng.random((n, 6)) < 0.7  # gripper, present flags
    x[:, [3, 6, 7, 8, 9]] = rng.random((n, 5))  # lost time, bottom, height, width, score
    x[:, 4:10] *= x[:, 4:5]  # absent target: all zeros
    sig = lambda v: 1 / (1 + np.exp(-v))
    y = np.zeros((n, N_ACTIONS), np.float32)
    y[:, 0] = MAX_SPEED * sig(3 * x[:, 7] - 3 * x[:, 11] * x[:, 10])
    y[:, 5] = MAX_YAW * (2 * sig(-3 * x[:, 5] + 0.5 * x[:, 3]) - 1)
    y[:, 6] = (x[:, 4] > 0.5) & (x[:, 6] > 0.8)
    Path(out).mkdir(parents=True, exist_ok=True)
    np.save(Path(out) / "features.npy", x)
    np.save(Path(out) / "actions.npy", y)
    np.save(Path(out) / "episodes.npy", np.repeat(np.arange(episodes, dtype=np.int32), steps))
    print(f"synthetic data: {n} rows, {episodes} episodes -> {out}")


def selftest(args):
    with tempfile.TemporaryDirectory() as tmp:
        synth(tmp, episodes=30, steps=100, seed=args.seed)
        args.data, args.out = [tmp], Path(tmp) / "policy.onnx"
        args.epochs = min(args.epochs, 25)
        history = run(args)
    assert history[-1] < 0.2 * history[0], f"val loss {history[0]:.4f} -> {history[-1]:.4f}: did not fall"
    print(f"selftest OK: val loss {history[0]:.4f} -> {history[-1]:.4f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", help="recorded DIRs (features.npy, actions.npy, episodes.npy)")
    p.add_argument("--out", type=Path, help="ONNX to write (policy.onnx)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--balance", action="store_true", help="inverse-frequency weights over stop/turn bins")
    p.add_argument("--selftest", action="store_true", help="train briefly on synthetic data and assert it learns")
    p.add_argument("--synth", type=Path, metavar="DIR", help="only write a synthetic dataset to DIR")
    args = p.parse_args()
    if args.synth:
        synth(args.synth, seed=args.seed)
    elif args.selftest:
        selftest(args)
    elif not (args.data and args.out):
        p.error("--data and --out are required (or --selftest / --synth DIR)")
    else:
        run(args)


if __name__ == "__main__":
    main()

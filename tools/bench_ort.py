"""ONNX Runtime's CPU latency for a model, as the peer figure for `kestrel bench MODEL`.

Run both in the same session on the same machine, with the same thread count:

    python tools/bench_ort.py MODEL.onnx --threads 2 --runs 30
    kestrel bench MODEL.onnx --backend cpu --runs 30 --json

Prints one JSON object: median_ms, p99_ms, min_ms, threads, onnxruntime version.
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {i.name: rng.random(i.shape, dtype=np.float32) for i in sess.get_inputs()}
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    p99 = times[min(len(times), int(np.ceil(len(times) * 0.99))) - 1]
    print(json.dumps({"model": args.model, "backend": "onnxruntime-cpu", "threads": args.threads, "runs": args.runs,
                      "median_ms": times[len(times) // 2], "p99_ms": p99, "min_ms": times[0],
                      "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()

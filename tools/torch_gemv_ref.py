"""Peer figures for kestrel's GPU GEMV: PyTorch's copy bandwidth and bf16 matrix-vector product
on the same GPU, in the same run. Prints one JSON object. Host tool only (tools/requirements.txt).
"""
import json

import torch


def timed(fn, iters=50):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1e-3  # seconds


def main():
    out = {"device": torch.cuda.get_device_name()}
    for n in (8192, 16384):
        w = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        t = timed(lambda: torch.mv(w, x))
        src = torch.empty(n * n * 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        tc = timed(lambda: dst.copy_(src))
        out[f"bf16_gemv_{n}_gbps"] = (w.numel() * 2 + n * 4) / t / 1e9
        out[f"copy_{n}_gbps"] = 2 * src.numel() / tc / 1e9
    print(json.dumps(out))


if __name__ == "__main__":
    main()

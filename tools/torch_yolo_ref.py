"""PyTorch's GPU latency for a traced model, the peer figures for `kestrel bench MODEL --backend gpu`.

Host tool (tools/requirements.txt); on the lent GPU machine only torch is needed. The model is the
TorchScript file tools/export_yolo.py writes with --torchscript (no ultralytics at run time).
Three ways, batch 1, median of --runs after warm-up, each timed with CUDA events around the call:

- eager fp32 and eager fp16 (weights cast from the fp16 the file stores): the traced graph run op
  by op with the JIT's optimisations and fusers off (torch.jit.optimized_execution(False)), so
  every op is its own kernel launch as in eager mode;
- fp16 CUDA graph: one warm call captured with torch.cuda.graph, then replayed.

    python tools/torch_yolo_ref.py model.ts --imgsz 320 --runs 50

Prints one JSON object: {"model", "device", "torch", "imgsz", "eager_fp32_ms", "eager_fp16_ms",
"cuda_graph_fp16_ms"} (medians; null where a mode failed, with the error under "errors").
"""
import argparse
import json
import statistics

import torch


def median_ms(fn, runs):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(runs):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    result = {"model": args.model, "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "imgsz": args.imgsz, "errors": {}}
    x32 = torch.rand(1, 3, args.imgsz, args.imgsz, device=args.device)
    for name, dtype in (("eager_fp32_ms", torch.float32), ("eager_fp16_ms", torch.float16)):
        try:
            m = torch.jit.load(args.model, map_location=args.device).to(dtype).eval()
            x = x32.to(dtype)
            with torch.no_grad(), torch.jit.optimized_execution(False):
                for _ in range(10):
                    m(x)
                result[name] = median_ms(lambda: m(x), args.runs)
        except Exception as e:  # noqa: BLE001
            result[name], result["errors"][name] = None, repr(e)
    try:
        m = torch.jit.load(args.model, map_location=args.device).half().eval()
        static_x = x32.half().clone()
        with torch.no_grad(), torch.jit.optimized_execution(False):
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(5):
                    m(static_x)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                m(static_x)
            for _ in range(10):
                graph.replay()
            result["cuda_graph_fp16_ms"] = median_ms(graph.replay, args.runs)
    except Exception as e:  # noqa: BLE001
        result["cuda_graph_fp16_ms"], result["errors"]["cuda_graph_fp16_ms"] = None, repr(e)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

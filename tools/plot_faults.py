"""Plots `kestrel faults` JSON lines: mAP@0.5 against bit-error rate, one panel per weight
precision, one line per clip mode (mean over trials, shaded down to the worst trial).

    python3 tools/plot_faults.py /tmp/kestrel-faults/faults.jsonl docs/img/faults.png
"""

import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    rows = [json.loads(line) for line in open(src) if line.strip()]
    by = defaultdict(list)
    for r in rows:
        by[(r["precision"], r["clip"])].append(r)
    precisions = sorted({r["precision"] for r in rows})
    fig, axes = plt.subplots(1, len(precisions), figsize=(5.5 * len(precisions), 4), sharey=True)
    if len(precisions) == 1:
        axes = [axes]
    styles = {
        "none": ("tab:red", "o-", "no clipping"),
        "layer": ("tab:blue", "s--", "layer-wise"),
        "hybrid": ("tab:green", "o-", "hybrid (ProAct)"),
    }
    for ax, p in zip(axes, precisions):
        for clip, (color, marker, label) in styles.items():
            rs = sorted(by.get((p, clip), []), key=lambda r: r["ber"])
            if not rs:
                continue
            x = [r["ber"] for r in rs]
            ax.plot(x, [r["map50_mean"] for r in rs], marker, color=color, label=label, zorder=3 if clip == "layer" else 2)
            ax.fill_between(x, [r["map50_min"] for r in rs], [r["map50_mean"] for r in rs], color=color, alpha=0.15)
        clean = by.get((p, "none"), [{}])[0].get("map50_clean")
        if clean is not None:
            ax.axhline(clean, color="gray", ls=":", lw=1, label="fault-free")
        ax.set_xscale("log")
        ax.set_xlabel("bit-error rate")
        ax.set_title(f"{p} weights, {rs[0]['trials'] if rs else '?'} trials, {rs[0]['pairs'] if rs else '?'} pairs")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mAP@0.5 (mean; shade: worst trial)")
    axes[0].legend(loc="lower left")
    fig.suptitle("kestrel faults: the fused RGB+IR detector under weight bit flips")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""The figure of `peftlab compare`: what each method buys and what it costs.

    fig = compare_figure(report.rows)      # rows as in report.json / pl.compare.Report.rows

Three panels: test accuracy against trainable parameters (log scale: the methods span five
orders of magnitude), training step time, and peak memory split into what it is made of
(weights, gradients, optimizer state, saved activations; on CUDA the allocator's peak). Only
reads the rows; never trains.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

PARTS = [("weights_bytes", "weights", "#9aa5b1"), ("gradients_bytes", "gradients", "#e07a5f"),
         ("optimizer_bytes", "optimizer state", "#3d405b"),
         ("activations_bytes", "saved activations", "#81b29a")]


def compare_figure(rows: list[dict], title: str = "peftlab compare"):
    """Return a Figure with the three panels for the rows whose status is "ok"."""
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    if not ok:
        raise ValueError("compare_figure: no method finished (every row is missing or "
                         "failed); nothing to draw.")
    names = [r["method"] for r in ok]
    colors = plt.get_cmap("tab10").colors
    fig, (ax_acc, ax_time, ax_mem) = plt.subplots(1, 3, figsize=(15, 4.2))

    for i, r in enumerate(ok):
        ax_acc.scatter(r["trainable"], r["test_accuracy"], s=60, color=colors[i % 10], zorder=3)
        ax_acc.annotate(r["method"], (r["trainable"], r["test_accuracy"]),
                        textcoords="offset points", xytext=(5, 6 if i % 2 == 0 else -13),
                        fontsize=9)
    ax_acc.set_xscale("log")
    ax_acc.set_xlabel("trainable parameters (log scale)")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_title("accuracy vs trainable parameters")
    ax_acc.grid(alpha=0.3)

    times = [1000 * r["step_time_s"] for r in ok]
    ax_time.bar(names, times, color=[colors[i % 10] for i in range(len(ok))])
    for i, r in enumerate(ok):
        if r.get("step_time_ratio") is not None:
            ax_time.text(i, times[i], f"x{r['step_time_ratio']:.2f}", ha="center",
                         va="bottom", fontsize=8)
    ax_time.set_ylabel("ms per training step (median)")
    ax_time.set_title("training step time (ratio to full)")

    cuda = any("CUDA" in str(r.get("peak_kind", "")) for r in ok)
    mb = 1024 ** 2
    if cuda:
        ax_mem.bar(names, [r["peak_memory_bytes"] / mb for r in ok], color="#3d405b",
                   label="CUDA allocator peak")
    else:
        bottom = [0.0] * len(ok)
        for key, label, color in PARTS:
            vals = [(r.get(key) or 0) / mb for r in ok]
            ax_mem.bar(names, vals, bottom=bottom, label=label, color=color)
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax_mem.set_ylabel("MB")
    ax_mem.set_title("peak training memory")
    ax_mem.legend(fontsize=8)
    for ax in (ax_time, ax_mem):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

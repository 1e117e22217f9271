"""The figure of `peftlab compare`: what each method buys and what it costs.

    fig = compare_figure(report.rows)      # rows as in report.json / pl.compare.Report.rows

    fig = category_figure(report.rows)     # test accuracy per kind of sentence, a heat map

Three panels: test accuracy against trainable parameters (log scale: the methods span five
orders of magnitude; error bars: the standard deviation over seeds), training step time, and
memory: the exact training-state count split into what it is made of (weights, gradients,
optimizer state, saved activations) with the measured peak above the model-loaded baseline
drawn next to it. Only reads the rows; never trains.
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
        ax_acc.errorbar(r["trainable"], r["test_accuracy"], yerr=r.get("test_accuracy_std"),
                        fmt="o", ms=7, capsize=3, color=colors[i % 10], zorder=3)
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

    mb = 1024 ** 2
    x = list(range(len(ok)))
    bottom = [0.0] * len(ok)
    for key, label, color in PARTS:
        vals = [(r.get(key) or 0) / mb for r in ok]
        ax_mem.bar([i - 0.2 for i in x], vals, width=0.4, bottom=bottom, label=label,
                   color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    peaks = [(r.get("measured_peak_bytes") or 0) / mb for r in ok]
    if any(peaks):
        ax_mem.bar([i + 0.2 for i in x], peaks, width=0.4, color="white", edgecolor="black",
                   hatch="//", label="measured peak above base")
    ax_mem.set_xticks(x, names)
    ax_mem.set_ylabel("MB")
    ax_mem.set_title("memory: exact state count | measured peak")
    ax_mem.legend(fontsize=8)
    for ax in (ax_time, ax_mem):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def category_figure(rows: list[dict], categories: list[str], labels: list[str] | None = None,
                    title: str = "test accuracy by kind of sentence"):
    """A heat map: one row per method, one column per category of test sentence (in the order
    given; labels: the column labels), the cell the method's test accuracy there."""
    import numpy as np

    ok = [r for r in rows if r.get("status", "ok") == "ok" and r.get("category_accuracy")]
    cats = list(categories)
    labels = list(labels or cats)
    if not ok or not cats:
        raise ValueError("category_figure: no finished method has per-category accuracies "
                         "(the task's test set has no category column).")
    acc = np.array([[r["category_accuracy"].get(c, np.nan) for c in cats] for r in ok])
    n = next(r.get("category_n", {}) for r in ok)
    fig, ax = plt.subplots(figsize=(1.1 * len(cats) + 2.5, 0.45 * len(ok) + 1.6))
    im = ax.imshow(acc, cmap="RdYlGn", vmin=0.3, vmax=1.0, aspect="auto")
    for i in range(len(ok)):
        for j in range(len(cats)):
            ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(cats)), [f"{lab}\n(n={n.get(c, 0)})" for c, lab in zip(cats, labels)],
                  fontsize=8)
    ax.set_yticks(range(len(ok)), [r["method"] for r in ok])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="test accuracy")
    fig.tight_layout()
    return fig

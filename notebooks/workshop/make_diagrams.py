"""Concept diagrams for the workshop slides and the whiteboard: LoRA, prefix tuning, AdaLoRA triplets.

    python notebooks/workshop/make_diagrams.py            # writes diagrams/*.png next to this file
    python notebooks/workshop/make_diagrams.py OUT_DIR

Pure matplotlib (Agg backend, no display needed); deterministic, so the committed PNGs are what
this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

FROZEN, TRAIN, TEXT = "#cfd8dc", "#ffb74d", "#263238"


def box(ax, x, y, w, h, label, color, fontsize=11, **kw):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor=TEXT, lw=1.2, **kw))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize, color=TEXT)


def arrow(ax, a, b, **kw):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=14, lw=1.3, color=TEXT, **kw))


def lora(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.set(xlim=(0, 10), ylim=(0, 6), aspect="equal")
    ax.axis("off")
    box(ax, 0.2, 2.5, 1.2, 1.0, "x\n(d_in)", "white")
    box(ax, 3.0, 3.6, 2.6, 2.0, "W  (frozen)\nd_out x d_in", FROZEN)
    box(ax, 2.3, 0.6, 1.3, 2.2, "A\nr x d_in", TRAIN, fontsize=10)
    box(ax, 4.6, 0.9, 1.6, 1.6, "B\nd_out x r\n(starts at 0)", TRAIN, fontsize=9)
    ax.text(4.1, 1.95, "r", ha="center", va="center", fontsize=12, color=TEXT)
    box(ax, 8.4, 2.5, 1.3, 1.0, "y\n(d_out)", "white")
    ax.text(7.35, 3.0, "+", ha="center", va="center", fontsize=22, color=TEXT)
    arrow(ax, (1.4, 3.2), (3.0, 4.4))
    arrow(ax, (1.4, 2.8), (2.6, 1.9))
    arrow(ax, (3.6, 1.7), (4.6, 1.7))
    arrow(ax, (5.6, 4.6), (7.1, 3.3))
    arrow(ax, (6.2, 1.7), (7.1, 2.7))
    ax.text(6.9, 1.2, "x alpha / r", fontsize=10, color=TEXT)
    arrow(ax, (7.6, 3.0), (8.4, 3.0))
    ax.set_title("LoRA: y = W x + (alpha / r) B A x     trainable: r (d_in + d_out)", fontsize=12)
    ax.text(5.0, 0.05, "grey: frozen    orange: trained    merge: W <- W + (alpha / r) B A",
            ha="center", fontsize=9, color="#555")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def prefix(path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax in axes:
        ax.set(xlim=(0, 10), ylim=(0, 7.2))
        ax.axis("off")
    ax = axes[0]
    ax.set_title("prefix tuning: trainable keys/values in every layer", fontsize=11)
    for layer in range(3):
        y = 0.6 + 2.2 * layer
        box(ax, 0.3, y, 2.4, 1.2, f"K, V prefix\nlayer {layer}", TRAIN, fontsize=9)
        box(ax, 3.0, y, 6.5, 1.2, f"attention layer {layer} (frozen): real tokens attend to\n"
                                  f"[prefix ; real tokens]", FROZEN, fontsize=9)
        arrow(ax, (2.7, y + 0.6), (3.0, y + 0.6))
        if layer < 2:
            arrow(ax, (6.2, y + 1.2), (6.2, y + 2.2))
    ax = axes[1]
    ax.set_title("prompt tuning: trainable vectors at the input only", fontsize=11)
    for layer in range(3):
        y = 2.2 + 1.6 * layer
        box(ax, 0.3, y, 9.2, 1.0, f"layer {layer} (frozen): prompt positions pass through every layer,\n"
                                  f"their keys/values computed by the frozen weights", FROZEN, fontsize=8.5)
        if layer < 2:
            arrow(ax, (5.0, y + 1.0), (5.0, y + 1.6))
    ax.text(0.3, 1.45, "input:", fontsize=10, color=TEXT)
    box(ax, 1.5, 1.0, 1.0, 0.9, "[CLS]", "white", fontsize=9)
    for i in range(3):
        box(ax, 2.6 + 0.9 * i, 1.0, 0.8, 0.9, f"p{i}", TRAIN, fontsize=9)
    for i, w in enumerate(["the", "food", "was", "..."]):
        box(ax, 5.5 + 1.0 * i, 1.0, 0.9, 0.9, w, "white", fontsize=9)
    arrow(ax, (5.0, 1.9), (5.0, 2.2))
    ax.text(5.0, 0.4, "only the input vectors p_i are free", ha="center", fontsize=9, color="#555")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def adalora(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 4.4))
    ax.set(xlim=(0, 12), ylim=(0, 6.4))
    ax.axis("off")
    ax.set_title("AdaLoRA: dW = P diag(lambda) Q, one triplet (P[:, i], lambda_i, Q[i, :]) per rank",
                 fontsize=11)
    box(ax, 0.4, 0.8, 1.2, 4.2, "dW", FROZEN)
    ax.text(2.0, 2.9, "=", fontsize=20, va="center")
    kept = [True, False, True, True]
    colors = ["#ef6c00", "#bdbdbd", "#fb8c00", "#ffa726"]
    for i, (k, c) in enumerate(zip(kept, colors)):
        box(ax, 2.6 + 0.55 * i, 0.8, 0.5, 4.2, f"P{i}", c if k else "#eeeeee", fontsize=9,
            hatch=None if k else "//")
        box(ax, 5.2 + 0.55 * i, 2.6 + 0.0, 0.5, 0.5, f"l{i}", c if k else "#eeeeee", fontsize=8,
            hatch=None if k else "//")
        box(ax, 7.6, 4.1 - 0.55 * i, 3.6, 0.5, f"Q{i}", c if k else "#eeeeee", fontsize=9,
            hatch=None if k else "//")
    ax.text(6.3, 1.0, "lambda_1 = 0:\ntriplet 1 dropped\n(P1, Q1 stay: it can\ncome back)",
            ha="center", fontsize=9, color="#555")
    ax.text(6.0, 0.15, "score S_i = s(lambda_i) + mean_j s(P[j, i]) + mean_j s(Q[i, j]),   "
                       "s = smoothed |w g| x uncertainty;  keep the best b(t) triplets of the whole model",
            ha="center", fontsize=8.5, color=TEXT)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in (("lora.png", lora), ("prefix_prompt.png", prefix),
                       ("adalora_triplets.png", adalora)):
        draw(out / name)
        paths.append(out / name)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "diagrams"
    for p in main(target):
        print("wrote", p)

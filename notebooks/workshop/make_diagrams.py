"""Concept diagrams for the notebooks, the workshop slides and the whiteboard: LoRA, prefix and
prompt tuning, AdaLoRA triplets, QLoRA's 4-bit base with LoRA on top.

    python notebooks/workshop/make_diagrams.py            # writes diagrams/*.png next to this file
    python notebooks/workshop/make_diagrams.py OUT_DIR

Notebooks 02, 03, 05 and 11 show them (`![...](workshop/diagrams/lora.png)`), and the course
site embeds them in its pages. Pure matplotlib (Agg backend, no display needed); deterministic,
so the committed PNGs are what this script writes. Every label sits inside its box or in free
space: no text crosses a box edge, an arrow or another label.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

FROZEN, TRAIN, TEXT, NOTE = "#cfd8dc", "#ffb74d", "#263238", "#555555"
SAVE = {"dpi": 110, "bbox_inches": "tight", "metadata": {"Software": None}}


def box(ax, x, y, w, h, label, color, fontsize=11, hatch=None):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor=TEXT, lw=1.2, hatch=hatch))
    if label:
        # on a hatched box the label gets a plain background, so the hatch does not cross it
        bg = {"bbox": {"facecolor": "white", "edgecolor": "none", "pad": 1.5}} if hatch else {}
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize,
                color=TEXT, **bg)


def arrow(ax, a, b):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=14, lw=1.3, color=TEXT,
                                 shrinkA=0, shrinkB=0))


def canvas(width, height, xmax, ymax):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set(xlim=(0, xmax), ylim=(0, ymax), aspect="equal")
    ax.axis("off")
    return fig, ax


def lora(path: Path) -> None:
    fig, ax = canvas(8.6, 4.6, 11, 6.2)
    ax.set_title(r"LoRA: $y = Wx + \frac{\alpha}{r}\,BAx$     trainable: $r\,(d_{in} + d_{out})$"
                 " numbers", fontsize=12)
    box(ax, 0.2, 2.6, 1.3, 1.0, "$x$\n($d_{in}$)", "white")
    box(ax, 3.3, 3.9, 3.0, 1.7, "$W$  (frozen)\n$d_{out} \\times d_{in}$", FROZEN)
    box(ax, 2.6, 0.7, 1.5, 2.0, "$A$\n$r \\times d_{in}$", TRAIN)
    box(ax, 5.1, 1.1, 1.9, 1.2, "$B$   $d_{out} \\times r$\nstarts at 0", TRAIN, fontsize=10)
    ax.text(4.6, 2.0, "$r$", ha="center", fontsize=12, color=TEXT)
    ax.text(8.25, 3.1, "+", ha="center", va="center", fontsize=22, color=TEXT)
    box(ax, 9.4, 2.6, 1.4, 1.0, "$y$\n($d_{out}$)", "white")
    arrow(ax, (1.5, 3.3), (3.3, 4.6))
    arrow(ax, (1.5, 2.9), (2.6, 1.9))
    arrow(ax, (4.1, 1.7), (5.1, 1.7))
    arrow(ax, (6.3, 4.7), (8.0, 3.4))
    arrow(ax, (7.0, 1.7), (8.0, 2.8))
    ax.text(7.75, 1.75, r"$\times\,\alpha / r$", fontsize=11, color=TEXT, ha="left")
    arrow(ax, (8.5, 3.1), (9.4, 3.1))
    ax.text(5.5, 0.05, r"grey: frozen    orange: trained    merge: $W \leftarrow W + \frac{\alpha}{r}BA$",
            ha="center", fontsize=9.5, color=NOTE)
    fig.savefig(path, **SAVE)
    plt.close(fig)


def prefix(path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8))
    for ax in axes:
        ax.set(xlim=(0, 10), ylim=(0, 7.4))
        ax.axis("off")
    ax = axes[0]
    ax.set_title("prefix tuning: trainable keys and values in every layer", fontsize=11)
    for layer in range(3):
        y = 0.5 + 2.3 * layer
        box(ax, 0.1, y, 2.2, 1.3, f"$K^p_{layer}, V^p_{layer}$\n(P virtual\ntokens)", TRAIN,
            fontsize=9)
        box(ax, 3.0, y, 6.9, 1.3, f"attention layer {layer} (frozen)\nreal tokens attend to "
                                  "[prefix ; real tokens]", FROZEN, fontsize=9)
        arrow(ax, (2.3, y + 0.65), (3.0, y + 0.65))
        if layer < 2:
            arrow(ax, (6.45, y + 1.3), (6.45, y + 2.3))
    ax = axes[1]
    ax.set_title("prompt tuning: trainable vectors at the input only", fontsize=11)
    for layer in range(3):
        y = 2.3 + 1.7 * layer
        box(ax, 0.3, y, 9.4, 1.1, f"layer {layer} (frozen): the prompt positions pass through it "
                                  "like words;\ntheir keys and values come from the frozen weights",
            FROZEN, fontsize=8.5)
        if layer < 2:
            arrow(ax, (5.0, y + 1.1), (5.0, y + 1.7))
    ax.text(0.3, 1.3, "input:", fontsize=10, color=TEXT, va="center")
    box(ax, 1.5, 0.85, 1.0, 0.9, "[CLS]", "white", fontsize=9)
    for i in range(3):
        box(ax, 2.6 + 0.9 * i, 0.85, 0.8, 0.9, f"$p_{i}$", TRAIN, fontsize=10)
    for i, w in enumerate(["the", "food", "was", "..."]):
        box(ax, 5.5 + 1.05 * i, 0.85, 0.95, 0.9, w, "white", fontsize=9)
    arrow(ax, (5.0, 1.75), (5.0, 2.3))
    ax.text(5.0, 0.25, "only the input vectors $p_i$ train", ha="center", fontsize=9, color=NOTE)
    fig.tight_layout(w_pad=2.0)
    fig.savefig(path, **SAVE)
    plt.close(fig)


def adalora(path: Path) -> None:
    fig, ax = canvas(11, 5.0, 13, 6.8)
    ax.set_title(r"AdaLoRA: $\Delta W = P\,\mathrm{diag}(\lambda)\,Q$, one triplet "
                 r"$(P_{:,i},\ \lambda_i,\ Q_{i,:})$ per rank", fontsize=12)
    box(ax, 0.3, 1.6, 1.3, 4.2, r"$\Delta W$", FROZEN, fontsize=12)
    ax.text(2.1, 3.7, "=", fontsize=20, ha="center", va="center")
    kept = [True, False, True, True]
    colors = ["#ef6c00", "#eeeeee", "#fb8c00", "#ffa726"]
    for i, (k, c) in enumerate(zip(kept, colors)):
        hatch = None if k else "//"
        box(ax, 2.7 + 0.6 * i, 1.6, 0.5, 4.2, f"$P_{i}$", c, fontsize=10, hatch=hatch)
        box(ax, 5.6 + 0.6 * i, 3.45, 0.5, 0.5, rf"$\lambda_{i}$", c, fontsize=10, hatch=hatch)
        box(ax, 8.6, 5.1 - 0.6 * i, 4.0, 0.5, f"$Q_{i}$", c, fontsize=10, hatch=hatch)
    ax.text(6.8, 2.9, r"$\lambda_1 = 0$: triplet 1 dropped;" "\n"
                      r"$P_1$ and $Q_1$ stay, so it" "\n" "can come back later",
            ha="center", va="top", fontsize=9.5, color=NOTE)
    ax.text(6.5, 0.85, r"score $S_i = s(\lambda_i) + \frac{1}{d_{out}}\sum_j s(P_{j,i}) + "
                       r"\frac{1}{d_{in}}\sum_j s(Q_{i,j})$,   $s$ = smoothed $|w\,g|$ "
                       r"$\times$ its uncertainty",
            ha="center", fontsize=10, color=TEXT)
    ax.text(6.5, 0.2, "keep the best b(t) triplets of the whole model; b(t) shrinks on a cubic "
                      "schedule", ha="center", fontsize=10, color=TEXT)
    fig.savefig(path, **SAVE)
    plt.close(fig)


def qlora(path: Path) -> None:
    fig, ax = canvas(11, 5.6, 14, 7.0)
    ax.set_title(r"QLoRA: $y = \mathrm{dequant}(W_{NF4})\,x + \frac{\alpha}{r}\,BAx$   "
                 "(a frozen 4-bit base, LoRA in fp32 on top)", fontsize=12)
    box(ax, 0.2, 3.0, 1.3, 1.0, "$x$\n($d_{in}$)", "white")
    # the stored base: codes, first-level scales, second-level scales
    ax.add_patch(Rectangle((2.0, 4.6), 4.6, 2.0, facecolor="none", edgecolor=TEXT, lw=1.0,
                           linestyle="--"))
    ax.text(4.3, 6.35, "stored (frozen, no gradient)", ha="center", va="center", fontsize=9,
            color=NOTE)
    box(ax, 2.2, 5.45, 4.2, 0.65, "4-bit NF4 codes, 2 per byte", FROZEN, fontsize=9.5)
    box(ax, 2.2, 4.75, 2.0, 0.6, "absmax: 8 bits\nper 64 weights", FROZEN, fontsize=8.5)
    box(ax, 4.4, 4.75, 2.0, 0.6, "fp32 scale\nper 256 absmax", FROZEN, fontsize=8.5)
    box(ax, 7.8, 4.6, 3.0, 1.6, r"$\hat W = q[\mathrm{code}] \cdot c$" "\nfp32, rebuilt in\n"
                                "forward and backward", "white", fontsize=9)
    arrow(ax, (6.6, 5.4), (7.8, 5.4))
    ax.text(7.2, 5.55, "dequant", ha="center", va="bottom", fontsize=8.5, color=NOTE)
    box(ax, 8.6, 3.15, 1.4, 0.7, r"$\hat W x$", "white", fontsize=11)
    arrow(ax, (9.3, 4.6), (9.3, 3.85))
    arrow(ax, (1.5, 3.5), (8.6, 3.5))
    box(ax, 3.0, 0.7, 1.5, 1.8, "$A$\n$r \\times d_{in}$\nfp32", TRAIN, fontsize=10)
    box(ax, 5.4, 1.0, 2.4, 1.2, "$B$   $d_{out} \\times r$\nfp32, starts at 0", TRAIN,
        fontsize=9.5)
    arrow(ax, (1.5, 3.1), (3.0, 2.0))
    arrow(ax, (4.5, 1.6), (5.4, 1.6))
    arrow(ax, (10.0, 3.5), (11.1, 3.25))
    arrow(ax, (7.8, 1.6), (11.1, 2.85))
    ax.text(9.4, 1.8, r"$\times\,\alpha / r$", fontsize=11, color=TEXT)
    ax.text(11.35, 3.05, "+", ha="center", va="center", fontsize=22, color=TEXT)
    box(ax, 12.4, 2.55, 1.4, 1.0, "$y$\n($d_{out}$)", "white")
    arrow(ax, (11.6, 3.05), (12.4, 3.05))
    ax.text(7.0, 0.1, r"bits per base weight: $4 + \frac{32}{64} = 4.5$ with fp32 absmax;  "
                      r"$4 + \frac{8}{64} + \frac{32}{64 \cdot 256} \approx 4.127$ with double "
                      "quantization (fp32: 32)", ha="center", fontsize=10, color=TEXT)
    fig.savefig(path, **SAVE)
    plt.close(fig)


DIAGRAMS = {"lora.png": lora, "prefix_prompt.png": prefix, "adalora_triplets.png": adalora,
            "qlora.png": qlora}


def main(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in DIAGRAMS.items():
        draw(out / name)
        paths.append(out / name)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "diagrams"
    for p in main(target):
        print("wrote", p)

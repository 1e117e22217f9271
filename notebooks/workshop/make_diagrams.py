"""Concept diagrams for the notebooks, the workshop slides and the whiteboard: LoRA, prefix and
prompt tuning, AdaLoRA triplets, QLoRA's 4-bit base with LoRA on top, and where a serial
adapter, a parallel adapter and IA3's vectors sit in a transformer block.

    python notebooks/workshop/make_diagrams.py            # writes diagrams/*.png next to this file
    python notebooks/workshop/make_diagrams.py OUT_DIR

Notebooks 02, 03, 05, 11 and 12 show them (`![...](workshop/diagrams/lora.png)`), and the course
site embeds them in its pages. Pure matplotlib (Agg backend, no display needed); deterministic,
so the committed PNGs are what this script writes. Every label sits inside its box or in free
space: no text crosses a box edge, an arrow, a line or another label (tests/test_diagrams.py
measures it on the drawn figures).
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


def _block(ax, serial=False, ia3=False):
    """One post-LN transformer block (BERT, as the embedded MiniLM), bottom to top, the frozen
    parts grey; serial: a trained adapter after each sublayer's output projection; ia3: the
    trained vectors. Returns (x of the right edge, y of the FFN's input)."""
    L, W = 1.4, 4.8                                     # the skeleton's left edge and width
    C, R = L + W / 2, L + W
    box(ax, L, 0.3, W, 0.8, r"input $x$:  $T \times d$", "white", fontsize=9.5)
    for name, cx in (("q", C - 1.6), ("k", C), ("v", C + 1.6)):
        box(ax, cx - 0.6, 1.7, 1.2, 0.8, f"$W_{name}$", FROZEN, fontsize=10)
        arrow(ax, (cx, 1.1), (cx, 1.7))
        if ia3 and name != "q":
            box(ax, cx - 0.6, 2.9, 1.2, 0.7, rf"$\odot\, l_{name}$", TRAIN, fontsize=10)
            arrow(ax, (cx, 2.5), (cx, 2.9))
            arrow(ax, (cx, 3.6), (cx, 4.0))
        else:
            arrow(ax, (cx, 2.5), (cx, 4.0))
    box(ax, L, 4.0, W, 0.8, r"softmax$(QK^\top/\sqrt{d_h})\,V$", FROZEN, fontsize=9.5)
    box(ax, L, 5.2, W, 0.7, r"$W_o$:  $d \times d$", FROZEN, fontsize=9.5)
    arrow(ax, (C, 4.8), (C, 5.2))
    top = 5.9
    if serial:
        box(ax, L, 6.3, W, 0.8, r"adapter:  $h + f(h)$", TRAIN, fontsize=9.5)
        arrow(ax, (C, 5.9), (C, 6.3))
        top = 7.1
    box(ax, L, 7.5, W, 0.7, "add $x$, LayerNorm", FROZEN, fontsize=9.5)
    arrow(ax, (C, top), (C, 7.5))
    ax.plot([L, 0.7, 0.7], [0.7, 0.7, 7.85], color=TEXT, lw=1.1)    # the attention's skip
    arrow(ax, (0.7, 7.85), (L, 7.85))
    ffn_in = 8.5
    box(ax, L, 8.8, W, 0.8, r"$W_1$:  $d_{ff} \times d$,  then GELU", FROZEN, fontsize=9.5)
    arrow(ax, (C, 8.2), (C, 8.8))
    if ia3:
        box(ax, C - 0.9, 10.0, 1.8, 0.7, r"$\odot\, l_{ff}$", TRAIN, fontsize=10)
        arrow(ax, (C, 9.6), (C, 10.0))
        arrow(ax, (C, 10.7), (C, 11.1))
    else:
        arrow(ax, (C, 9.6), (C, 11.1))
    box(ax, L, 11.1, W, 0.7, r"$W_2$:  $d \times d_{ff}$", FROZEN, fontsize=9.5)
    top = 11.8
    if serial:
        box(ax, L, 12.2, W, 0.8, r"adapter:  $h + f(h)$", TRAIN, fontsize=9.5)
        arrow(ax, (C, 11.8), (C, 12.2))
        top = 13.0
    box(ax, L, 13.4, W, 0.7, "add, LayerNorm", FROZEN, fontsize=9.5)
    arrow(ax, (C, top), (C, 13.4))
    ax.plot([C, 0.7, 0.7], [ffn_in, ffn_in, 13.75], color=TEXT, lw=1.1)   # the FFN's skip
    arrow(ax, (0.7, 13.75), (L, 13.75))
    arrow(ax, (C, 14.1), (C, 14.6))
    ax.text(C, 14.7, "to the next block", ha="center", va="bottom", fontsize=9, color=NOTE)
    return R, ffn_in


def _note(ax, x, y, w, h, text):
    """A white callout box with left-aligned lines."""
    box(ax, x, y, w, h, "", "white")
    ax.text(x + 0.25, y + h / 2, text, ha="left", va="center", fontsize=9.5, color=TEXT,
            linespacing=1.45)


def _link(ax, a, b):
    """A dashed pointer from a trained part to its callout."""
    ax.plot(*zip(a, b), color=NOTE, lw=0.9, ls="--")


def adapters_ia3(path: Path) -> None:
    """Three copies of one block: serial adapters (Houlsby), a parallel adapter on the FFN
    (He et al.), IA3's vectors (Liu et al.), each with its shapes and count per block."""
    fig, axes = plt.subplots(1, 3, figsize=(18.5, 8.4))
    for ax in axes:
        ax.set(xlim=(0, 12.2), ylim=(-0.9, 15.4), aspect="equal")
        ax.axis("off")
    ax = axes[0]
    ax.set_title("serial adapter (Houlsby et al. 2019):\nafter each sublayer, before its skip",
                 fontsize=11)
    right, _ = _block(ax, serial=True)
    _note(ax, 6.8, 8.0, 5.3, 4.2, r"$f(h) = W_{up}\,\mathrm{act}(W_{down}\,h)$" "\n"
                                  r"$W_{down}$: $m \times d$" "\n" r"$W_{up}$: $d \times m$" "\n"
                                  r"biases: $m$ and $d$" "\n" "2 per block:" "\n"
                                  r"$2\,(2dm + m + d)$")
    _link(ax, (right, 6.7), (6.8, 8.0))
    _link(ax, (right, 12.6), (6.8, 12.2))
    ax = axes[1]
    ax.set_title("parallel adapter (He et al. 2022):\nbeside the FFN, reading its input",
                 fontsize=11)
    right, ffn_in = _block(ax)
    ax.plot([right - 2.4, 9.45], [ffn_in, ffn_in], color=TEXT, lw=1.1)
    arrow(ax, (9.45, ffn_in), (9.45, 9.0))
    box(ax, 6.8, 9.0, 5.3, 3.7, "", TRAIN)
    ax.text(7.05, 10.85, r"$s\;W_{up}\,\mathrm{ReLU}(W_{down}\,x)$" "\n"
                         r"$W_{down}$: $m \times d$" "\n" r"$W_{up}$: $d \times m$" "\n"
                         r"biases: $m$ and $d$;  $s = 4$" "\n" r"per block: $2dm + m + d$",
            ha="left", va="center", fontsize=9.5, color=TEXT, linespacing=1.45)
    ax.plot([9.45, 9.45], [12.7, 13.75], color=TEXT, lw=1.1)
    arrow(ax, (9.45, 13.75), (right, 13.75))
    ax = axes[2]
    ax.set_title("IA3 (Liu et al. 2022): learned vectors\nrescale keys, values, FFN activation",
                 fontsize=11)
    right, _ = _block(ax, ia3=True)
    _note(ax, 6.8, 1.75, 5.3, 3.0, r"$k = l_k \odot (W_k\,x + b_k)$" "\n"
                                   r"$v = l_v \odot (W_v\,x + b_v)$"
                                   "\n" r"$l_k, l_v$: $d$ numbers each")
    _link(ax, (right - 0.2, 3.25), (6.8, 3.25))
    _note(ax, 6.8, 9.1, 5.3, 2.5, r"$W_2\,(l_{ff} \odot \mathrm{GELU}(W_1\,x))$" "\n"
                                  r"$l_{ff}$: $d_{ff}$ numbers" "\n"
                                  r"per block: $2d + d_{ff}$")
    _link(ax, (right - 1.5, 10.35), (6.8, 10.35))
    axes[1].text(6.1, -0.5, r"grey: frozen    orange: trained (every $W_{up}$ starts at 0, every "
                         r"$l$ at 1: training starts at the base model)    embedded MiniLM: "
                         r"$d = 384$, $d_{ff} = 1536$, $m = 24$ (serial) or $192$ (parallel)",
             ha="center", fontsize=9.5, color=NOTE)
    fig.savefig(path, **SAVE)
    plt.close(fig)

DIAGRAMS = {"lora.png": lora, "prefix_prompt.png": prefix, "adalora_triplets.png": adalora,
            "qlora.png": qlora, "adapters_ia3.png": adapters_ia3}


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

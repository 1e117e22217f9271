"""Figures for prefix and prompt tuning.

    d = pl.prefix.attention_to_prefix(model, tokenizer, "a fine film")
    attention_figure(d)                  # token -> virtual token (mean over layers and heads)
    attention_figure(d, layer=0, head=3) # one layer and head
    mass_figure(d)                       # share of attention on the prefix, layer x head
    length_figure(rows)                  # accuracy and trainable parameters vs prefix length

`d` is the dict attention_to_prefix returns: "attention" (L, H, T, P) softmax probabilities
from the T real tokens to the P virtual tokens, "prefix_mass" (L, H, T) = their sum over P,
"tokens". Each function draws on the `ax` it is given (or a new figure) and returns the
Figure; none trains or changes a model.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def _axes(ax, size):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


def select(attention, layer: int | None = None, head: int | None = None) -> np.ndarray:
    """(T, P) from (L, H, T, P): one layer/head, or the mean where None."""
    a = np.asarray(attention)
    a = a.mean(0) if layer is None else a[layer]                  # (H, T, P)
    return a.mean(0) if head is None else a[head]                 # (T, P)


def attention_figure(data: dict, layer: int | None = None, head: int | None = None, ax=None):
    """Heatmap: how much each real token (rows) attends to each virtual token (columns)."""
    a = select(data["attention"], layer, head)
    T, P = a.shape
    fig, ax = _axes(ax, (max(4, 0.45 * P + 2.5), max(2.5, 0.3 * T + 1)))
    im = ax.imshow(a, aspect="auto", cmap="Blues", vmin=0, interpolation="nearest")
    ax.set_yticks(range(T), data["tokens"], fontsize=8)
    ax.set_xticks(range(P), [f"v{p}" for p in range(P)], fontsize=8)
    where = f"layer {'mean' if layer is None else layer}, head {'mean' if head is None else head}"
    ax.set(xlabel="virtual token", title=f"attention to the prefix ({where})")
    fig.colorbar(im, ax=ax, label="probability")
    return fig


def mass_figure(data: dict, ax=None):
    """Heatmap (layer x head): % of the real tokens' attention that lands on the prefix."""
    m = 100 * np.asarray(data["prefix_mass"]).mean(-1)             # (L, H)
    L, H = m.shape
    fig, ax = _axes(ax, (max(4, 0.35 * H + 2), max(2.5, 0.4 * L + 1)))
    im = ax.imshow(m, aspect="auto", cmap="Oranges", vmin=0, interpolation="nearest")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set(xlabel="head", ylabel="layer", title="% of attention on the prefix")
    fig.colorbar(im, ax=ax)
    return fig


def length_figure(rows: list[dict], ax=None):
    """Accuracy (left axis) and trainable parameters (right axis) against the prefix length.

    rows: [{"num_virtual_tokens": P, "accuracy": a, "trainable": n}, ...] (one per run)."""
    rows = sorted(rows, key=lambda r: r["num_virtual_tokens"])
    p = [r["num_virtual_tokens"] for r in rows]
    fig, ax = _axes(ax, (6, 3.2))
    ax.plot(p, [r["accuracy"] for r in rows], "o-", color="C0", label="accuracy")
    ax.set(xlabel="virtual tokens P", ylabel="validation accuracy", xticks=p)
    ax2 = ax.twinx()
    ax2.plot(p, [r["trainable"] for r in rows], "s--", color="C1", label="trainable params")
    ax2.set_ylabel("trainable parameters", color="C1")
    ax.set_title("prefix length: capacity vs accuracy")
    return fig

"""Figures for gradient-based selection: where the salient parameters live.

    rows = pl.selection.layer_summary(masks)
    plots.selection.layer_heatmap(rows)                       # module type x block, % selected
    plots.selection.score_histogram(scores, masks)            # score spread, the cut-off
    plots.selection.granularity_bars({"global": rows_g, "row": rows_r, "tensor": rows_t})

Each takes data (scores / masks / LayerRow lists), draws on `ax` if given, returns the Figure.
"""

from __future__ import annotations

import numpy as np
import torch


def _axes(ax, size=(7, 4)):
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    return fig, ax


def grid(rows) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    """(module names, block indices, selected, total) as (modules x blocks) arrays; rows
    outside numbered blocks (embeddings, pooler, head) are left out."""
    blocks = sorted({r.layer for r in rows if r.layer is not None})
    mods = list(dict.fromkeys(r.module for r in rows if r.layer is not None))
    sel = np.zeros((len(mods), len(blocks)))
    tot = np.zeros((len(mods), len(blocks)))
    for r in rows:
        if r.layer is not None:
            i, j = mods.index(r.module), blocks.index(r.layer)
            sel[i, j] += r.selected
            tot[i, j] += r.total
    return mods, blocks, sel, tot


def layer_heatmap(rows, ax=None, title: str | None = None):
    """Share of each module's entries selected (%), module type (rows) x block (columns),
    plus a text line for the modules outside the blocks."""
    from matplotlib.colors import LogNorm
    fig, ax = _axes(ax, (7, 4))
    mods, blocks, sel, tot = grid(rows)
    if not blocks:
        raise ValueError("layer_heatmap needs numbered blocks (names like 'encoder.layer.3.'); "
                         "use granularity_bars for a model without them.")
    pct = np.where(sel > 0, 100 * sel / np.maximum(tot, 1), np.nan)
    pos = pct[np.isfinite(pct)]
    norm = LogNorm(vmin=pos.min(), vmax=max(pos.max(), pos.min() * 1.01)) if pos.size else None
    im = ax.imshow(pct, aspect="auto", cmap="magma", norm=norm, interpolation="nearest")
    ax.set_xticks(range(len(blocks)), [str(b) for b in blocks])
    ax.set_yticks(range(len(mods)), mods, fontsize=8)
    ax.set_facecolor("#e8e8e8")                     # grey: nothing selected there
    fig.colorbar(im, ax=ax, label="% of entries selected")
    other = [r for r in rows if r.layer is None and r.selected]
    note = ", ".join(f"{r.module.rsplit('.', 1)[-1]} {100 * r.fraction:.3g}%" for r in other)
    ax.set(xlabel="block" + (f"\noutside blocks: {note}" if note else ""),
           title=title or "where the selected entries live")
    return fig


def score_histogram(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None,
                    ax=None, bins: int = 80, title: str | None = None):
    """Histogram of log10(score) over all entries; selected entries (if masks) in colour."""
    fig, ax = _axes(ax, (7, 3.2))
    flat = torch.cat([s.detach().float().flatten().cpu() for s in scores.values()])
    pos = flat > 0
    logs = flat[pos].log10().numpy()
    edges = np.linspace(logs.min(), logs.max(), bins + 1) if logs.size else bins
    ax.hist(logs, bins=edges, color="#bbbbbb", label=f"all entries (score > 0: {pos.sum():,})")
    if masks is not None:
        chosen = torch.cat([masks[n].flatten().cpu() for n in scores])[pos]
        ax.hist(logs[chosen.numpy()], bins=edges, color="C3",
                label=f"selected ({int(chosen.sum()):,})")
    ax.set_yscale("log")
    ax.set(xlabel="log10 score", ylabel="entries", title=title or "score distribution")
    ax.legend(fontsize=8)
    return fig


def granularity_bars(rows_by_name: dict[str, list], ax=None, title: str | None = None):
    """Selected entries per block (and 'other' outside blocks), one bar group per block,
    one bar per selection (e.g. global / row / tensor at the same budget)."""
    fig, ax = _axes(ax, (8, 3.5))
    keys: list = []
    for rows in rows_by_name.values():
        for r in rows:
            k = "other" if r.layer is None else r.layer
            if k not in keys:
                keys.append(k)
    keys = sorted(k for k in keys if k != "other") + (["other"] if "other" in keys else [])
    width = 0.8 / max(len(rows_by_name), 1)
    for i, (name, rows) in enumerate(rows_by_name.items()):
        counts = {k: 0 for k in keys}
        for r in rows:
            counts["other" if r.layer is None else r.layer] += r.selected
        ax.bar(np.arange(len(keys)) + (i - (len(rows_by_name) - 1) / 2) * width,
               [counts[k] for k in keys], width, label=name)
    ax.set_xticks(range(len(keys)), [str(k) for k in keys])
    ax.set(xlabel="block", ylabel="selected entries", title=title or "same budget, three granularities")
    ax.legend(fontsize=8)
    return fig

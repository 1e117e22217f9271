"""Figures for AdaLoRA: the budget schedule and where the rank went.

    budget_figure(config, n_matrices)              # b(t) before training (a pure function)
    budget_figure(config, n, history=h)            # ... with the triplets actually kept
    rank_heatmap(pl.adalora.rank_pattern(model))   # final rank, transformer block x module

Each function draws on the `ax` it is given (or a new figure) and returns the Figure; none
trains or changes a model.
"""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np

from peftlab.adalora.adalora import budget_schedule

_BLOCK = re.compile(r"^(.*?)\.(\d+)\.(.+)$")     # "...layer.3.attention.self.query"


def _axes(ax, size):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


def budget_figure(config, n_matrices: int, history: dict | None = None, ax=None):
    """The budget b(t) (triplets kept over all matrices) over the run, with its three phases.

    Dots mark the steps where the allocator re-masks; `history` (pl.adalora.history) adds
    the triplets actually kept."""
    fig, ax = _axes(ax, (7, 3.2))
    steps = np.arange(config.total_steps)
    sched = [budget_schedule(config, int(s), n_matrices) for s in steps]
    ax.plot(steps, [b.budget for b in sched], color="C1", label="budget b(t)")
    masks = [s for s, b in zip(steps, sched) if b.mask and s <= config.total_steps - config.tfinal]
    ax.plot(masks, [sched[s].budget for s in masks], ".", color="C1", ms=3,
            label="re-mask steps")
    if history is not None and history.get("steps"):
        ax.plot(history["steps"], history["kept"], "--", color="C0", label="kept triplets")
    t1, t2 = config.tinit, config.total_steps - config.tfinal
    ax.axvspan(0, t1, color="0.9", zorder=0)
    ax.axvspan(t2, config.total_steps, color="0.9", zorder=0)
    top = config.init_r * n_matrices
    ax.text(t1 / 2, top, "warm-up", ha="center", va="top", fontsize=8)
    ax.text((t2 + config.total_steps) / 2, top, "final", ha="center", va="top", fontsize=8)
    ax.axhline(config.target_r * n_matrices, color="0.5", lw=0.8, ls=":")
    ax.set(xlabel="step", ylabel="triplets kept", ylim=(0, top * 1.08),
           title=f"budget: {top} -> {config.target_r * n_matrices} triplets "
                 f"(init_r={config.init_r}, target_r={config.target_r}, x{n_matrices} matrices)")
    ax.legend(fontsize=8, loc="center right")
    return fig


def rank_grid(ranks: dict[str, int]) -> tuple[list[str], list[int], np.ndarray]:
    """(modules, blocks, array modules x blocks of ranks; NaN where not adapted)."""
    parsed = {n: _BLOCK.match(n) for n in ranks}
    if not parsed or any(m is None for m in parsed.values()):
        raise ValueError("rank_grid needs names with a block number like "
                         "'encoder.layer.3.attention.self.query'; plot other models with a bar "
                         "chart of pl.adalora.rank_pattern(model) instead.")
    blocks = sorted({int(m.group(2)) for m in parsed.values()})
    mods = list(dict.fromkeys(m.group(3) for m in parsed.values()))
    arr = np.full((len(mods), len(blocks)), np.nan)
    for n, r in ranks.items():
        m = parsed[n]
        arr[mods.index(m.group(3)), blocks.index(int(m.group(2)))] = r
    return mods, blocks, arr


def rank_heatmap(ranks: dict[str, int], init_r: int | None = None, ax=None, title=None):
    """Final rank of every adapted matrix as a grid: module (rows) x transformer block (columns)."""
    mods, blocks, arr = rank_grid(ranks)
    fig, ax = _axes(ax, (1.2 + 0.8 * len(blocks), 0.9 + 0.45 * len(mods)))
    vmax = init_r or max(1, int(np.nanmax(arr)))
    im = ax.imshow(arr, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
    for (i, j), v in np.ndenumerate(arr):
        if np.isfinite(v):
            ax.text(j, i, int(v), ha="center", va="center", fontsize=9,
                    color="white" if v < 0.6 * vmax else "black")
    ax.set_xticks(range(len(blocks)), [str(b) for b in blocks])
    ax.set_yticks(range(len(mods)), mods, fontsize=8)
    ax.set(xlabel="transformer block", title=title or "final rank by block and module")
    fig.colorbar(im, ax=ax, label="rank", shrink=0.8)
    return fig


def rank_lines(history: dict, ax=None):
    """Rank of every matrix over the recorded steps, one thin line each, plus the mean."""
    fig, ax = _axes(ax, (7, 3.2))
    ranks = np.array(list(history["ranks"].values()), dtype=float)     # (matrices, steps)
    ax.plot(history["steps"], ranks.T, lw=0.6, alpha=0.5)
    ax.plot(history["steps"], ranks.mean(axis=0), color="k", lw=2, label="mean rank")
    ax.set(xlabel="step", ylabel="rank", title="rank of each matrix over training")
    ax.legend(fontsize=8)
    return fig

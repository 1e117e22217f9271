"""RankAllocationViewer: AdaLoRA's rank of every adapted matrix over training, and its budget.

    viewer = pl.widgets.RankAllocationViewer(model)          # a model with AdaLoRA applied
    viewer = pl.widgets.RankAllocationViewer(history)        # or pl.adalora.history(model)
    viewer.step.value = 120                                   # move through training
    viewer.ranks_at(120), viewer.figure()

The data is pl.adalora.history(model): the steps the allocator recorded, the budget b(t) of
the cubic schedule, the triplets actually kept, and each matrix's rank per step. Three views:
  left:   heat map, matrices (rows) x recorded steps (columns), color = rank; a line marks
          the chosen step,
  middle: ranks at the chosen step as a grid, transformer block x module (where the matrix
          names have a block number), else one bar per matrix,
  right:  the budget curve b(t) and the kept total, with the chosen step marked.
Pass the viewer to fit (callbacks=[viewer]) to refresh it when training ends.
"""

from __future__ import annotations

import re

import ipywidgets as W
import numpy as np
from torch import nn

from peftlab.widgets._base import (
    WidgetBase,
    esc,
    image_widget,
    label_margin,
    new_figure,
    set_ticks,
    short_names,
    show_figure,
)

_BLOCK = re.compile(r"^(.*?)\.(\d+)\.(.+)$")
NEEDED = ("steps", "budget", "ranks")


def _check_history(h) -> dict:
    if not isinstance(h, dict) or any(k not in h for k in NEEDED):
        raise ValueError(f"RankAllocationViewer needs a model with AdaLoRA applied or a history "
                         f"dict with keys {NEEDED} (pl.adalora.history(model)); got "
                         f"{type(h).__name__}{' with keys ' + str(sorted(h)) if isinstance(h, dict) else ''}.")
    n = len(h["steps"])
    bad = [k for k, v in h["ranks"].items() if len(v) != n]
    if len(h["budget"]) != n or bad:
        raise ValueError(f"history lists differ in length: {n} steps, {len(h['budget'])} budget "
                         f"values{', matrix ' + bad[0] + ' has ' + str(len(h['ranks'][bad[0]])) if bad else ''}.")
    return h


class RankAllocationViewer(WidgetBase):
    """Heat map of AdaLoRA ranks over steps, with a step slider and the budget curve."""

    def __init__(self, source):
        self.model = source if isinstance(source, nn.Module) else None
        if self.model is not None:
            from peftlab.core.state import get_method
            if get_method(self.model) != "adalora":
                raise ValueError(f"RankAllocationViewer needs a model with AdaLoRA applied "
                                 f"(pl.adalora.apply), but this model carries "
                                 f"{get_method(self.model) or 'no method'}; or pass a history dict.")
        self.step = W.SelectionSlider(options=[0], description="step", continuous_update=False,
                                      layout=W.Layout(width="60%"))
        self.info = W.HTML()
        self.image = image_widget()
        self.step.observe(lambda _: self._draw(), names="value")
        self.refresh_button = W.Button(description="refresh", icon="refresh",
                                       disabled=self.model is None)
        self.refresh_button.on_click(lambda _: self.refresh())
        self.widget = W.VBox([W.HBox([self.step, self.refresh_button]), self.info, self.image])
        self.refresh(source if self.model is None else None)

    # --- data -----------------------------------------------------------------------------
    def refresh(self, history: dict | None = None) -> None:
        """Re-read the history (from the model, or the dict given) and redraw at its last step."""
        if history is None:
            from peftlab import adalora
            history = adalora.history(self.model)
        self.history = _check_history(history)
        self.names = list(self.history["ranks"])
        self.steps = list(self.history["steps"])
        self.budget = list(self.history["budget"])
        self.kept = list(self.history.get("kept") or
                         [sum(v[i] for v in self.history["ranks"].values())
                          for i in range(len(self.steps))])
        self.matrix = np.array([self.history["ranks"][n] for n in self.names], dtype=float) \
            .reshape(len(self.names), len(self.steps))                  # (matrices, steps)
        self._quiet = True            # changing options moves the value: draw once, below
        self.step.options = self.steps or [0]
        self.step.value = self.steps[-1] if self.steps else 0
        self._quiet = False
        self._draw()

    def ranks_at(self, step: int) -> dict[str, int]:
        """{matrix: rank} at a recorded step (the last recorded one at or before `step`)."""
        if not self.steps:
            return {}
        i = max(0, int(np.searchsorted(self.steps, step, side="right")) - 1)
        return {n: int(self.matrix[k, i]) for k, n in enumerate(self.names)}

    def summary(self) -> str:
        if not self.steps:
            return "no steps recorded yet (train with pl.train.fit or call pl.after_step)"
        r = self.ranks_at(self.step.value)
        vals = list(r.values())
        i = self.steps.index(self.step.value)
        return (f"step {self.step.value}: budget {self.budget[i]}, kept {sum(vals)} triplets in "
                f"{len(vals)} matrices; rank min {min(vals)}, mean {np.mean(vals):.1f}, "
                f"max {max(vals)}")

    def on_train_end(self, state) -> None:
        if self.model is not None:
            self.refresh()

    # --- drawing --------------------------------------------------------------------------
    def grid(self, step: int) -> tuple[list[str], list[int], np.ndarray] | None:
        """(modules, blocks, ranks (modules x blocks)) at `step`, or None without block numbers."""
        parsed = {n: _BLOCK.match(n) for n in self.names}
        if not parsed or any(m is None for m in parsed.values()):
            return None
        blocks = sorted({int(m.group(2)) for m in parsed.values()})
        mods = list(dict.fromkeys(m.group(3) for m in parsed.values()))
        arr = np.full((len(mods), len(blocks)), np.nan)
        for n, rank in self.ranks_at(step).items():
            m = parsed[n]
            arr[mods.index(m.group(3)), blocks.index(int(m.group(2)))] = rank
        return mods, blocks, arr

    def _draw(self) -> None:
        if getattr(self, "_quiet", False):
            return
        self.info.value = f"<b>RankAllocationViewer</b> · {esc(self.summary())}"
        show_figure(self.image, self.figure())

    def figure(self):
        labels = short_names(self.names)
        fig = new_figure(12, max(4.2, 0.2 * len(self.names) + 1.2), layout=None)
        ax_h, ax_g, ax_b = fig.subplots(1, 3, gridspec_kw={"width_ratios": [4, 3, 3]})
        fig.subplots_adjust(left=label_margin(labels, 12), right=0.98, bottom=0.14, top=0.9,
                            wspace=0.45)
        if not self.steps:
            for ax in (ax_h, ax_g, ax_b):
                ax.text(0.5, 0.5, "no steps recorded yet", ha="center", va="center",
                        transform=ax.transAxes, color="#777")
            return fig
        s = self.step.value
        vmax = max(1.0, float(np.nanmax(self.matrix)))
        im = ax_h.imshow(self.matrix, aspect="auto", cmap="viridis", vmin=0, vmax=vmax,
                         interpolation="nearest",
                         extent=(self.steps[0] - 0.5, self.steps[-1] + 0.5,
                                 len(self.names) - 0.5, -0.5))
        ax_h.axvline(s, color="red", lw=1)
        ax_h.set(title="rank of each matrix over training", xlabel="step")
        fig.colorbar(im, ax=ax_h, label="rank")
        set_ticks(ax_h, "y", labels)
        g = self.grid(s)
        if g is not None:
            mods, blocks, arr = g
            ax_g.imshow(arr, aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
            set_ticks(ax_g, "x", blocks)
            set_ticks(ax_g, "y", [m.rsplit(".", 1)[-1] for m in mods])
            for (i, j), v in np.ndenumerate(arr):
                if np.isfinite(v):
                    ax_g.text(j, i, int(v), ha="center", va="center", fontsize=8,
                              color="white" if v < 0.6 * vmax else "black")
            ax_g.set(title=f"ranks at step {s}", xlabel="block")
        else:
            ax_g.barh(range(len(self.names)), list(self.ranks_at(s).values()), color="C0")
            set_ticks(ax_g, "y", [n.rsplit(".", 1)[-1] for n in self.names])
            ax_g.invert_yaxis()
            ax_g.set(title=f"ranks at step {s}", xlabel="rank")
        ax_b.plot(self.steps, self.budget, color="C1", label="budget b(t)")
        ax_b.plot(self.steps, self.kept, "--", color="C0", label="kept triplets")
        ax_b.axvline(s, color="red", lw=1)
        ax_b.set(title="budget schedule", xlabel="step", ylabel="triplets")
        ax_b.legend(fontsize=8)
        return fig

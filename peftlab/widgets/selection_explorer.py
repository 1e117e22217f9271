"""SelectionExplorer: move the budget, see where gradient-selected parameters land.

    ex = pl.widgets.SelectionExplorer(model, batches=batches)        # scores computed once
    ex = pl.widgets.SelectionExplorer(model, scores)                 # or scores you have
    ex.budget.value = 0.01; ex.granularity.value = "row"             # what the sliders do
    ex.selected, ex.per_layer, ex.rows, ex.figure()

Scores come from pl.selection.compute_scores (Fisher, |grad| or |w * grad| over a few
batches); each budget / granularity change re-runs pl.selection.make_masks on them (no
gradients) and pl.selection.layer_summary on the masks. The heat map shows, per transformer
block (columns) and module inside the block (rows), the share of that module's entries that
would train; the bar chart counts selected entries per block ("other": embeddings, pooler,
head). Nothing here changes the model: apply the choice with pl.selection.apply.
"""

from __future__ import annotations

import ipywidgets as W
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from torch import nn

from peftlab.widgets._base import (
    WidgetBase,
    esc,
    fmt_int,
    html_table,
    image_widget,
    label_margin,
    new_figure,
    set_ticks,
    show_figure,
)

OTHER = "other"


class SelectionExplorer(WidgetBase):
    """Budget slider + granularity choice -> where the selected parameters fall."""

    def __init__(self, model: nn.Module, scores: dict | None = None, batches=None, loss_fn=None,
                 kind: str = "fisher", fraction: float = 0.005, granularity: str = "global",
                 targets=None):
        from peftlab import selection
        self._sel = selection
        if kind not in selection.KINDS:
            raise ValueError(f"Unknown score kind {kind!r}: use one of {selection.KINDS}.")
        if granularity not in selection.GRANULARITIES:
            raise ValueError(f"Unknown granularity {granularity!r}: use one of "
                             f"{selection.GRANULARITIES}.")
        if scores is None and batches is None:
            raise ValueError("SelectionExplorer needs scores (from pl.selection.compute_scores) "
                             "or batches= (and optionally loss_fn=) to compute them.")
        if scores is not None and not scores:
            raise ValueError("SelectionExplorer got empty scores: nothing to select from.")
        self.model, self._batches, self._loss_fn, self._targets = model, batches, loss_fn, targets
        self.scores = dict(scores) if scores is not None else self._compute(kind)
        self.total = sum(s.numel() for s in self.scores.values())
        self.budget = W.FloatLogSlider(value=fraction, base=10, min=-5, max=0, step=0.1,
                                       description="budget", readout_format=".2%",
                                       continuous_update=False)
        self.granularity = W.ToggleButtons(options=list(selection.GRANULARITIES),
                                           value=granularity, description="granularity")
        self.kind = W.Dropdown(options=list(selection.KINDS), value=kind, description="score",
                               disabled=batches is None)
        self.info = W.HTML()
        self.table = W.HTML()
        self.image = image_widget()
        self.budget.observe(lambda _: self.update(), names="value")
        self.granularity.observe(lambda _: self.update(), names="value")
        self.kind.observe(self._on_kind, names="value")
        self.widget = W.VBox([W.HBox([self.budget, self.kind]), self.granularity, self.info,
                              self.image, W.Accordion(children=[self.table],
                                                      titles=("per-module table",))])
        self.update()

    def _compute(self, kind: str) -> dict:
        return self._sel.compute_scores(self.model, self._batches, self._loss_fn, kind=kind,
                                        targets=self._targets)

    def _on_kind(self, change) -> None:
        self.scores = self._compute(change["new"])
        self.update()

    # --- browser-free API -----------------------------------------------------------------
    def update(self) -> None:
        """Recompute the masks for the current budget and granularity, then redraw."""
        self.masks = self._sel.make_masks(self.scores, fraction=self.budget.value,
                                          granularity=self.granularity.value)
        self.rows = self._sel.layer_summary(self.masks)
        self.selected = sum(r.selected for r in self.rows)
        self.per_layer: dict = {}
        for r in self.rows:
            key = OTHER if r.layer is None else r.layer
            self.per_layer[key] = self.per_layer.get(key, 0) + r.selected
        self.info.value = f"<b>SelectionExplorer</b> · {esc(self.summary())}"
        self.table.value = html_table(
            ["block", "module", "selected", "of", "share"],
            [[esc(OTHER if r.layer is None else r.layer), esc(r.module), fmt_int(r.selected),
              fmt_int(r.total), f"{100 * r.fraction:.3f}%"] for r in self.rows],
            align_right={2, 3, 4})
        show_figure(self.image, self.figure())

    def summary(self) -> str:
        used = sum(1 for r in self.rows if r.selected)
        return (f"{self.granularity.value} selection, {self.kind.value} scores: "
                f"{self.selected:,} of {self.total:,} entries ({100 * self.selected / self.total:.3f}%) "
                f"in {used} of {len(self.rows)} modules")

    def grid(self) -> tuple[list[str], list[int], np.ndarray]:
        """(module names, block indices, share selected (modules x blocks), NaN where absent)."""
        blocks = sorted({r.layer for r in self.rows if r.layer is not None})
        mods = list(dict.fromkeys(r.module for r in self.rows if r.layer is not None))
        arr = np.full((len(mods), len(blocks)), np.nan)
        for r in self.rows:
            if r.layer is not None:
                arr[mods.index(r.module), blocks.index(r.layer)] = r.fraction
        return mods, blocks, arr

    def figure(self):
        """Heat map (module x block, % selected) and selected entries per block."""
        mods, blocks, arr = self.grid()
        fig = new_figure(11, max(4.2, 0.22 * len(mods) + 1.4), layout=None)
        ax_h, ax_b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        fig.subplots_adjust(left=label_margin(mods, 11), right=0.98, bottom=0.14, top=0.9,
                            wspace=0.35)
        if blocks:
            pct = np.where(arr > 0, 100 * arr, np.nan)      # grey: nothing selected there
            pos = pct[np.isfinite(pct)]
            norm = LogNorm(vmin=max(pos.min(), 1e-4), vmax=max(pos.max(), 1e-3)) \
                if pos.size else None
            cmap = colormaps["magma"].with_extremes(bad="#e8e8e8")
            im = ax_h.imshow(pct, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
            fig.colorbar(im, ax=ax_h, label="% of entries selected")
            set_ticks(ax_h, "x", blocks)
            set_ticks(ax_h, "y", mods)
        else:
            ax_h.text(0.5, 0.5, "no numbered blocks in this model\n(see the bar chart)",
                      ha="center", va="center", transform=ax_h.transAxes, color="#777")
        ax_h.set(title="% of each module selected (grey: none)", xlabel="block")
        keys = [k for k in self.per_layer if k != OTHER] + ([OTHER] if OTHER in self.per_layer
                                                            else [])
        ax_b.bar([str(k) for k in keys], [self.per_layer[k] for k in keys], color="C4")
        ax_b.set(title=f"entries per block ({self.selected:,} in all)", xlabel="block",
                 ylabel="entries")
        return fig

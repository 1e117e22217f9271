"""LoraExplorer: what a LoRA config would cost, and what a trained adapter actually uses.

    ex = pl.widgets.LoraExplorer(model)        # a plain model: rank / alpha / target sliders
    ex.r.value = 16; ex.targets.value = ("query", "key", "value")
    ex.trainable, ex.fraction, ex.added        # counts, the model untouched

    ex = pl.widgets.LoraExplorer(lora_model)   # after pl.lora.apply + training: spectra
    ex.keep.value = 2; ex.energy_kept()        # {layer: share of ||dW||_F^2 kept at rank 2}

Plain model ("plan" mode): pl.lora.count_parameters(model, config) counts r * (d_in + d_out)
per target without changing the model; trainable = that + modules_to_save (the head), and
fraction = trainable / (base parameters + adapter parameters), as trainable_report would
show after apply. The update scale alpha / r (alpha / sqrt(r) with rsLoRA) is shown too.

LoRA model ("spectrum" mode): for each layer, the singular values s_1 >= ... >= s_r of its
update dW = scale * B @ A (pl.lora.spectrum). Truncating dW to rank k (the best rank-k
approximation, Eckart-Young) keeps the energy share
    E(k) = (s_1^2 + ... + s_k^2) / (s_1^2 + ... + s_r^2)
so a layer whose E(2) is 0.99 hardly needed its rank 8.
"""

from __future__ import annotations

from collections import defaultdict

import ipywidgets as W
import numpy as np
from torch import nn

from peftlab.core.heads import is_head
from peftlab.core.state import get_method
from peftlab.report import trainable_report
from peftlab.widgets._base import (
    WidgetBase,
    esc,
    fmt_int,
    image_widget,
    new_figure,
    short_names,
    show_figure,
)


def target_options(model: nn.Module) -> list[str]:
    """'all-linear' plus the name suffixes of the modules LoRA can wrap (heads left out)."""
    from peftlab.lora.lora import SUPPORTED
    names = [n.rsplit(".", 1)[-1] for n, m in model.named_modules()
             if n and isinstance(m, SUPPORTED) and not is_head(n, model)]
    return ["all-linear"] + list(dict.fromkeys(names))


def energy(s: np.ndarray) -> np.ndarray:
    """E(k) for k = 1..len(s): cumulative share of the squared singular values (NaN if s == 0)."""
    sq = np.asarray(s, dtype=float) ** 2
    total = sq.sum()
    return np.cumsum(sq) / total if total > 0 else np.full(len(sq), np.nan)


class LoraExplorer(WidgetBase):
    """Plan a LoRA config (plain model) or inspect a trained adapter's spectra (LoRA model)."""

    def __init__(self, model: nn.Module, r: int = 8, alpha: float = 16.0, targets=None,
                 max_r: int = 64):
        from peftlab import lora
        self._lora, self.model = lora, model
        method = get_method(model)
        if method not in (None, "lora"):
            raise ValueError(f"LoraExplorer needs a plain model (to plan a config) or one with "
                             f"pl.lora.apply (to inspect it); this one carries {method!r}.")
        self.mode = "spectrum" if method == "lora" else "plan"
        self.info, self.image = W.HTML(), image_widget()
        if self.mode == "plan":
            opts = target_options(model)
            default = [t for t in ("query", "value") if t in opts] or opts[:1]
            self.r = W.IntSlider(value=r, min=1, max=max_r, description="rank r")
            self.alpha = W.FloatSlider(value=alpha, min=1, max=128, step=1, description="alpha")
            self.rslora = W.Checkbox(value=False, description="rsLoRA", indent=False)
            self.targets = W.SelectMultiple(options=opts, value=tuple(targets or default),
                                            description="targets", rows=min(8, len(opts)))
            for w in (self.r, self.alpha, self.rslora, self.targets):
                w.observe(lambda _: self.update(), names="value")
            self.base_total = trainable_report(model).total
            controls = W.HBox([W.VBox([self.r, self.alpha, self.rslora]), self.targets])
        else:
            self.spectra = {n: s.float().cpu().numpy() for n, s in lora.spectrum(model).items()}
            r_max = max(len(s) for s in self.spectra.values())
            self.keep = W.IntSlider(value=max(1, r_max // 2), min=1, max=r_max,
                                    description="keep rank")
            self.keep.observe(lambda _: self.update(), names="value")
            controls = self.keep
        self.widget = W.VBox([controls, self.info, self.image])
        self.update()

    # --- plan mode ------------------------------------------------------------------------
    def config(self):
        """The LoraConfig the controls describe (plan mode)."""
        return self._lora.LoraConfig(r=self.r.value, alpha=self.alpha.value,
                                     targets=list(self.targets.value), rslora=self.rslora.value)

    def _plan(self) -> None:
        self.error = None
        try:
            cfg = self.config()
            rows, heads = self._lora.plan(self.model, cfg)
        except ValueError as e:   # TargetError is a ValueError: an empty or impossible choice
            self.error, self.added, self.trainable, self.per_target = str(e), 0, 0, {}
            self.fraction, self.scale = 0.0, float("nan")
            return
        self.scale = cfg.scale
        self.added = sum(k for _, _, k in rows)
        self.head_params = sum(p.numel() for h in heads
                               for p in self.model.get_submodule(h).parameters())
        self.trainable = self.added + self.head_params
        self.fraction = self.trainable / (self.base_total + self.added)
        self.per_target = defaultdict(int)     # adapter parameters per name suffix
        for name, _, k in rows:
            self.per_target[name.rsplit(".", 1)[-1]] += k
        self.n_layers = len(rows)

    # --- spectrum mode --------------------------------------------------------------------
    def energy_kept(self, k: int | None = None) -> dict[str, float]:
        """{layer: E(k)} for the trained adapter (spectrum mode); NaN where dW is still 0."""
        k = self.keep.value if k is None else k
        return {n: float(energy(s)[min(k, len(s)) - 1]) for n, s in self.spectra.items()}

    def effective_rank(self, threshold: float = 0.9) -> dict[str, int]:
        """{layer: smallest k with E(k) >= threshold} (0 where dW is still zero)."""
        out = {}
        for n, s in self.spectra.items():
            e = energy(s)
            out[n] = int(np.argmax(e >= threshold - 1e-12)) + 1 if np.isfinite(e).all() else 0
        return out

    # --- both -----------------------------------------------------------------------------
    def update(self) -> None:
        if self.mode == "plan":
            self._plan()
        self.info.value = f"<b>LoraExplorer</b> · {esc(self.summary())}"
        show_figure(self.image, self.figure())

    def summary(self) -> str:
        if self.mode == "plan":
            if self.error:
                return f"no valid config: {self.error}"
            return (f"r={self.r.value}, alpha={self.alpha.value:g} (scale {self.scale:.3g}): "
                    f"{self.n_layers} layers, adapters {self.added:,} + head "
                    f"{self.head_params:,} = {self.trainable:,} trainable of "
                    f"{self.base_total + self.added:,} ({100 * self.fraction:.3f}%)")
        kept = [v for v in self.energy_kept().values() if np.isfinite(v)]
        if not kept:
            return "every update dW is still zero (B starts at 0): train the adapter first"
        return (f"{len(self.spectra)} LoRA layers; keeping rank {self.keep.value} keeps "
                f"{100 * min(kept):.1f}% to {100 * max(kept):.1f}% of each update's energy "
                f"(mean {100 * np.mean(kept):.1f}%)")

    def figure(self):
        return self._plan_figure() if self.mode == "plan" else self._spectrum_figure()

    def _plan_figure(self):
        fig = new_figure(11, 3.8, layout=None)
        ax_r, ax_t = fig.subplots(1, 2)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.88, wspace=0.3)
        if self.error:
            ax_r.text(0.5, 0.5, "pick at least one valid target", ha="center", va="center",
                      transform=ax_r.transAxes, color="#b00")
            return fig
        rs = np.arange(1, self.r.max + 1)        # count is linear in r: added(r) = r * added(1)
        per_r = self.added / self.r.value
        frac = 100 * (self.head_params + rs * per_r) / (self.base_total + rs * per_r)
        ax_r.plot(rs, frac, color="C0")
        ax_r.plot([self.r.value], [100 * self.fraction], "o", color="C3")
        ax_r.annotate(f"{fmt_int(self.trainable)} ({100 * self.fraction:.3f}%)",
                      (self.r.value, 100 * self.fraction), textcoords="offset points",
                      xytext=(8, -12), fontsize=9)
        ax_r.set(title="trainable share vs rank", xlabel="rank r", ylabel="% of parameters")
        names = list(self.per_target)
        ax_t.barh(names, [self.per_target[n] for n in names], color="C2")
        ax_t.invert_yaxis()
        ax_t.set(title=f"adapter parameters per target (r={self.r.value})", xlabel="parameters")
        return fig

    def _spectrum_figure(self):
        fig = new_figure(12, 4, layout=None)
        ax_s, ax_e, ax_k = fig.subplots(1, 3)
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.88, wspace=0.6)
        names, labels = list(self.spectra), short_names(list(self.spectra))
        colors = [f"C{i % 10}" for i in range(len(names))]
        for n, c in zip(names, colors):
            s = self.spectra[n]
            x = np.arange(1, len(s) + 1)
            if s[0] > 0:
                pos = s > 0
                ax_s.plot(x[pos], s[pos], ".-", color=c, lw=0.8)
                ax_e.plot(x, energy(s), color=c, lw=0.8)
        for ax in (ax_s, ax_e):
            ax.axvline(self.keep.value, color="red", lw=1)
        ax_s.set(title="singular values of scale * B @ A", xlabel="index", yscale="log")
        ax_e.set(title="energy kept at rank k", xlabel="k", ylim=(0, 1.02))
        kept = self.energy_kept()
        ax_k.barh(labels, [kept[n] for n in names], color=colors)
        ax_k.invert_yaxis()
        ax_k.tick_params(axis="y", labelsize=7)
        ax_k.set(title=f"energy kept at rank {self.keep.value}", xlim=(0, 1))
        return fig

"""TradeoffExplorer: accuracy against memory, time or size, over a comparison report.

    tx = pl.widgets.TradeoffExplorer("results/compare_default")   # folder, report.json, Report
    tx.cost.value = "training time (s)"                           # what the dropdown does
    tx.limit.value = 0.5                                          # keep methods under 50% of the max cost
    tx.feasible(), tx.pareto(), tx.best(), tx.summary(), tx.figure()

Each method of the report is a point: x = the cost you pick (training-state memory, measured
peak memory, step time, training time with one-off setup, trainable parameters, adapter
size), y = test accuracy (with the standard deviation over seeds as an error bar when the
report has several). The *Pareto front* joins the methods that no other method beats on both
axes (as accurate or better for less cost); every other method is dominated. The limit slider
draws a budget line: the table lists the methods under it, best accuracy first, and the
summary names the best one. Nothing is trained here: it only reads the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import ipywidgets as W

from peftlab.widgets._base import WidgetBase, esc, html_table, image_widget, new_figure, show_figure

# label -> (row keys tried in order (reports of older editions use other names), kind)
COSTS = {
    "training state (bytes)": (("training_state_bytes", "peak_memory_bytes"), "bytes"),
    "measured peak memory (bytes)": (("measured_peak_bytes", "rss_peak_bytes"), "bytes"),
    "step time (s)": (("step_time_s",), "seconds"),
    "training time (s)": (("train_time_s",), "seconds"),
    "training time + setup (s)": (("train_time_s", "+setup_s"), "seconds"),
    "trainable parameters": (("trainable",), "count"),
    "adapter size (bytes)": (("adapter_bytes",), "bytes"),
}


def _number(v) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def cost_of(row: dict, label: str) -> float | None:
    """The value of cost `label` for one report row, or None where the report lacks it."""
    keys, _ = COSTS[label]
    if keys[-1].startswith("+"):                      # a sum: train time + one-off setup
        base, extra = _number(row.get(keys[0])), _number(row.get(keys[-1][1:]))
        return None if base is None else base + (extra or 0.0)
    for key in keys:
        v = _number(row.get(key))
        if v is not None:
            return v
    return None


def _fmt(v: float, kind: str) -> str:
    if kind == "bytes":
        from peftlab.measure import human_bytes
        return human_bytes(int(v))
    if kind == "seconds":
        return f"{v:.3g} s"
    return f"{int(v):,}"


def _load_rows(report) -> tuple[list[dict], str]:
    if isinstance(report, (str, Path)):
        path = Path(report)
        path = path / "report.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"TradeoffExplorer: no report at {path}; pass the folder "
                                    f"that `peftlab compare --out` wrote (it holds report.json).")
        d = json.loads(path.read_text(encoding="utf-8"))
        return list(d.get("rows", [])), str(d.get("task", ""))
    if hasattr(report, "rows"):
        return list(report.rows), str(getattr(report, "task", ""))
    if isinstance(report, list) and all(isinstance(r, dict) for r in report):
        return list(report), ""
    raise TypeError(f"TradeoffExplorer takes a report folder, a report.json path, a "
                    f"pl.compare Report or a list of row dicts; got {type(report).__name__}.")


class TradeoffExplorer(WidgetBase):
    """Cost dropdown + budget slider -> accuracy vs cost, the Pareto front, the best pick."""

    def __init__(self, report, cost: str = "training state (bytes)", limit: float = 1.0,
                 log_x: bool = True):
        rows, self.task = _load_rows(report)
        self.rows = [r for r in rows if r.get("status", "ok") == "ok"
                     and _number(r.get("test_accuracy")) is not None]
        if not self.rows:
            raise ValueError("TradeoffExplorer: the report has no method with status 'ok' and "
                             "a test accuracy; run `peftlab compare` first.")
        self.costs = [c for c in COSTS if all(cost_of(r, c) is not None for r in self.rows)]
        if cost not in self.costs:
            raise ValueError(f"TradeoffExplorer: cost {cost!r} is not in this report; choose "
                             f"one of {self.costs}.")
        if not 0 < limit <= 1:
            raise ValueError(f"limit is a share of the largest cost, in (0, 1]; got {limit!r}.")
        self.cost = W.Dropdown(options=self.costs, value=cost, description="cost")
        self.limit = W.FloatLogSlider(value=limit, base=10, min=-3, max=0, step=0.05,
                                      description="budget", readout_format=".1%",
                                      continuous_update=False)
        self.log_x = W.Checkbox(value=log_x, description="log scale")
        self.info, self.table, self.image = W.HTML(), W.HTML(), image_widget()
        for control in (self.cost, self.limit, self.log_x):
            control.observe(lambda _: self.update(), names="value")
        self.widget = W.VBox([W.HBox([self.cost, self.log_x]), self.limit, self.info,
                              self.image, self.table])
        self.update()

    # --- browser-free API -------------------------------------------------------------------
    def points(self, cost: str | None = None) -> list[tuple[str, float, float, float]]:
        """[(method, cost, test accuracy, accuracy std or 0)] for every method."""
        cost = cost or self.cost.value
        return [(r["method"], cost_of(r, cost), float(r["test_accuracy"]),
                 _number(r.get("test_accuracy_std")) or 0.0) for r in self.rows]

    def threshold(self) -> float:
        """The budget line: `limit` times the largest cost of any method."""
        return self.limit.value * max(c for _, c, _, _ in self.points())

    def pareto(self, cost: str | None = None) -> list[str]:
        """Methods no other method beats on both axes, cheapest first."""
        from peftlab.compare.report import pareto_front
        return pareto_front(self.points(cost))

    def feasible(self) -> list[tuple[str, float, float]]:
        """[(method, cost, accuracy)] under the budget line, most accurate first."""
        t = self.threshold() * (1 + 1e-9)
        keep = [(m, c, a) for m, c, a, _ in self.points() if c <= t]
        return sorted(keep, key=lambda p: (-p[2], p[1]))

    def best(self) -> str | None:
        """The most accurate method under the budget (the cheaper one on a tie), or None."""
        f = self.feasible()
        return f[0][0] if f else None

    def summary(self) -> str:
        kind = COSTS[self.cost.value][1]
        best = self.best()
        pick = (f"best under it: {best} ({dict((m, a) for m, _, a in self.feasible())[best]:.3f})"
                if best else "no method fits")
        return (f"{len(self.rows)} methods; budget {_fmt(self.threshold(), kind)} of "
                f"{self.cost.value.split(' (')[0]}: {len(self.feasible())} fit, {pick}; "
                f"Pareto front: {', '.join(self.pareto())}")

    def update(self) -> None:
        kind = COSTS[self.cost.value][1]
        front = set(self.pareto())
        self.info.value = f"<b>TradeoffExplorer</b> · {esc(self.summary())}"
        under = {m for m, _, _ in self.feasible()}
        rows = sorted(self.points(), key=lambda p: -p[2])
        self.table.value = html_table(
            ["method", self.cost.value.split(" (")[0], "test acc", "± std", "Pareto", "fits"],
            [[esc(m), _fmt(c, kind), f"{a:.3f}", f"{s:.3f}" if s else "-",
              "yes" if m in front else "", "yes" if m in under else "no"]
             for m, c, a, s in rows],
            align_right={1, 2, 3},
            row_styles=["" if m in under else "color:#999" for m, _, _, _ in rows])
        show_figure(self.image, self.figure())

    def figure(self):
        """Accuracy against the chosen cost: every method, its error bar, the Pareto front,
        the budget line."""
        label, kind = self.cost.value, COSTS[self.cost.value][1]
        pts = self.points()
        front = self.pareto()
        fig = new_figure(7.5, 4.2)
        ax = fig.subplots()
        t = self.threshold()
        for i, (m, c, a, s) in enumerate(pts):
            color = f"C{i % 10}"
            ax.errorbar([c], [a], yerr=[s] if s else None, fmt="o", color=color, capsize=3,
                        alpha=1.0 if c <= t * (1 + 1e-9) else 0.35, markersize=7)
            ax.annotate(m, (c, a), textcoords="offset points", xytext=(6, 4), fontsize=9)
        fx = [c for m in front for mm, c, _, _ in pts if mm == m]
        fy = [a for m in front for mm, _, a, _ in pts if mm == m]
        ax.plot(fx, fy, "--", color="#555", lw=1, label="Pareto front")
        ax.axvline(t, color="C3", lw=1, label=f"budget: {_fmt(t, kind)}")
        if self.log_x.value and min(c for _, c, _, _ in pts) > 0:
            ax.set_xscale("log")
        ax.set(xlabel=label, ylabel="test accuracy",
               title=f"accuracy vs {label.split(' (')[0]}" + (f" ({self.task})" if self.task else ""))
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
        return fig

"""SweepExplorer: a committed `peftlab sweep`, one knob at a time, on validation only.

    sx = pl.widgets.SweepExplorer("results/sweep_text")     # a sweep folder (sweep.json, trials)
    sx.method.value = "lora"; sx.x.value = "r"              # what the dropdowns do
    sx.fixed["targets"].value = "qv"                        # hold a knob at one value ...
    sx.fixed["alpha"].value = BEST                          # ... or take the best over it
    sx.group.value = "rslora"                               # one line per value of a knob
    sx.lines(), sx.spread(), sx.best(), sx.summary(), sx.figure()

A sweep varies several knobs at once (LoRA: rank, alpha, rsLoRA, targets, learning rate).
The explorer draws validation accuracy (or loss) against one knob, `x`; every other knob is
either held at a value you pick or, with BEST, set to its best value for each x (ranked as the
sweep ranks: higher validation accuracy, then lower validation loss), so a line shows what
that knob can reach. `group` splits the points into one line per value of another knob. Seeds:
the screening seed (the whole grid ran on it) or the mean over every seed a point ran. Test
accuracy is never drawn: the info line gives it for the setting the sweep chose, the only one
it reports. Nothing is trained here: it only reads the sweep's files.
"""

from __future__ import annotations

import json
from pathlib import Path

import ipywidgets as W

from peftlab.compare import sweep_grid as sg
from peftlab.compare.sweep_report import by_point
from peftlab.compare.sweep_store import SWEEP_FILE, read_trials
from peftlab.widgets._base import WidgetBase, esc, html_table, image_widget, new_figure, show_figure

BEST = "(best)"                   # a fixed-knob setting: the best value for each x
NONE = "(none)"                   # group: one line
MEAN = "mean of seeds"            # seeds: every seed a point ran, averaged
METRICS = {"validation accuracy": "val_accuracy", "validation loss": "val_loss"}


def load_sweep(sweep) -> tuple[list[dict], dict]:
    """(trials, identity) of a sweep: a folder (sweep.json + trials.jsonl), or the pair."""
    if isinstance(sweep, tuple) and len(sweep) == 2:
        return list(sweep[0]), dict(sweep[1])
    path = Path(sweep)
    if not (path / SWEEP_FILE).is_file():
        raise FileNotFoundError(f"SweepExplorer: no {SWEEP_FILE} in {path}; pass the folder "
                                f"that `peftlab sweep --out` wrote (or (trials, identity)).")
    identity = json.loads((path / SWEEP_FILE).read_text(encoding="utf-8"))["identity"]
    return read_trials(path), identity


def _key(p: dict) -> tuple:
    """The sweep's ranking of a point, best first (sweep_grid.rank_key: validation only)."""
    return sg.rank_key(p["val_accuracy"], p["val_loss"])


class SweepExplorer(WidgetBase):
    """Method, x knob, the other knobs held or best, a grouping, seeds, metric -> validation
    against the knob, the spread along it, the best point, the sweep's chosen setting."""

    def __init__(self, sweep, method: str | None = None, x: str | None = None,
                 metric: str = "validation accuracy"):
        self.trials, self.identity = load_sweep(sweep)
        self.grid = self.identity["grid"]
        self.screen_seed = self.identity.get("seed", 0)
        done = {t["method"] for t in self.trials if t["status"] == "ok"}
        methods = [m for m in self.grid if m in done]
        if not methods:
            raise ValueError("SweepExplorer: the sweep has no finished trial yet; run "
                             "`peftlab sweep` (or wait for its first trial).")
        method = method or methods[0]
        if method not in methods:
            raise ValueError(f"SweepExplorer: no finished trials of {method!r}; choose one of "
                             f"{methods}.")
        if metric not in METRICS:
            raise ValueError(f"SweepExplorer: metric {metric!r}; choose one of {list(METRICS)}.")
        seeds = sorted({t["seed"] for t in self.trials if t["status"] == "ok"})
        self.method = W.Dropdown(options=methods, value=method, description="method")
        self.x = W.Dropdown(description="x axis")
        self.group = W.Dropdown(description="lines")
        self.seeds = W.Dropdown(options=[(f"seed {self.screen_seed} (screening)",
                                          self.screen_seed), (MEAN, MEAN)]
                                + [(f"seed {s}", s) for s in seeds if s != self.screen_seed],
                                value=self.screen_seed, description="seeds")
        self.metric = W.ToggleButtons(options=list(METRICS), value=metric)
        self.fixed: dict[str, W.Dropdown] = {}
        self.knob_box = W.HBox()
        self.info, self.table, self.image = W.HTML(), W.HTML(), image_widget()
        self._quiet = False
        self._build_method(x)
        self.method.observe(lambda _: self._build_method(None), names="value")
        for control in (self.x, self.group, self.seeds, self.metric):
            control.observe(lambda _: self._changed(), names="value")
        self.widget = W.VBox([W.HBox([self.method, self.x, self.group, self.seeds]),
                              self.knob_box, self.metric, self.info, self.image, self.table])
        self.update()

    # --- controls ---------------------------------------------------------------------------
    def _varied(self, method: str | None = None) -> list[str]:
        """The knobs the grid varies for `method` (more than one value), in canonical order."""
        knobs = self.grid[method or self.method.value]
        return [k for k in sg.knobs_of(method or self.method.value) if len(knobs.get(k, [])) > 1]

    def _build_method(self, x: str | None) -> None:
        """Rebuild the x, lines and fixed-knob controls for the chosen method."""
        self._quiet = True
        varied = self._varied() or ["lr"]
        main = sg.MAIN.get(self.method.value)
        x = x or (main if main in varied else varied[0])
        if x not in varied:
            raise ValueError(f"SweepExplorer: {self.method.value} varies {varied}, not {x!r}.")
        self.x.options, self.x.value = varied, x
        self.fixed = {}
        for k in self._varied():
            values = self.grid[self.method.value][k]
            self.fixed[k] = W.Dropdown(options=[(BEST, BEST)] + [(sg.fmt(v), v) for v in values],
                                       value=BEST, description=k,
                                       layout=W.Layout(width="160px"))
            self.fixed[k].observe(lambda _: self._changed(), names="value")
        self.knob_box.children = tuple(self.fixed.values())
        self._quiet = False
        self._sync_group()
        if hasattr(self, "_widget"):
            self.update()

    def _sync_group(self) -> None:
        """The lines dropdown offers every varied knob but x; the x knob's own control is off."""
        self._quiet = True
        options = [NONE] + [k for k in self._varied() if k != self.x.value]
        keep = self.group.value if self.group.value in options else (
            "targets" if "targets" in options else NONE)
        self.group.options, self.group.value = options, keep
        for k, d in self.fixed.items():
            d.disabled = k in (self.x.value, self.group.value)
        self._quiet = False

    def _changed(self) -> None:
        if not self._quiet:
            self._sync_group()
            self.update()

    # --- browser-free API -------------------------------------------------------------------
    def points(self) -> list[dict]:
        """The chosen method's points (sweep_report.by_point: means over the selected seeds)
        that match every knob held at a value, best first."""
        seeds = None if self.seeds.value == MEAN else {self.seeds.value}
        held = {k: d.value for k, d in self.fixed.items()
                if d.value != BEST and k not in (self.x.value, self.group.value)}
        pts = [p for p in by_point(self.trials, seeds).values()
               if p["method"] == self.method.value
               and all(p["knobs"].get(k) == v for k, v in held.items())]
        return sorted(pts, key=_key)

    def lines(self) -> dict:
        """{group value (None: one line): [(x value, metric, point id)] sorted by x}: for each
        x the best matching point (the best over every knob left at BEST)."""
        xk, gk = self.x.value, None if self.group.value == NONE else self.group.value
        metric = METRICS[self.metric.value]
        best: dict[tuple, dict] = {}
        for p in self.points():                      # best first: the first seen wins
            best.setdefault((p["knobs"].get(gk) if gk else None, p["knobs"][xk]), p)
        out: dict = {}
        for (g, xv), p in sorted(best.items(), key=lambda kv: (self._order(gk, kv[0][0]),
                                                                self._order(xk, kv[0][1]))):
            out.setdefault(g, []).append((xv, p[metric], p["point"]))
        return out

    def _order(self, knob: str | None, value) -> float:
        """Where `value` sorts among `knob`'s values: by size for numbers, else grid order."""
        if knob is None:
            return 0.0
        if sg.KNOBS[knob].kind in ("int", "float"):
            return float(value)
        values = [sg.fmt(v) for v in self.grid[self.method.value].get(knob, [])]
        return float(values.index(sg.fmt(value))) if sg.fmt(value) in values else len(values)

    def spread(self) -> dict:
        """{group value: max - min of the metric along x}: how much x moves it, per line."""
        return {g: max(v for _, v, _ in pts) - min(v for _, v, _ in pts)
                for g, pts in self.lines().items() if pts}

    def best(self) -> dict | None:
        """The best matching point (its knobs, validation accuracy and loss, seeds), or None."""
        pts = self.points()
        return pts[0] if pts else None

    def chosen(self) -> dict | None:
        """The setting the sweep chose for this method (sweep_report.choose: its finalists
        ranked over all their seeds), with its test accuracy; None if not chosen yet."""
        from peftlab.compare.sweep_report import choose
        return choose(self.trials, self.grid, self.screen_seed,
                      self.identity.get("top_k", 3)).get(self.method.value)

    def summary(self) -> str:
        """One line: what is shown, the spread along x, the best point, the chosen setting."""
        held = ", ".join(f"{k}={'best' if d.value == BEST else sg.fmt(d.value)}"
                         for k, d in self.fixed.items()
                         if k not in (self.x.value, self.group.value)) or "-"
        seeds = "mean of seeds" if self.seeds.value == MEAN else f"seed {self.seeds.value}"
        spread = "; ".join(f"{'' if g is None else f'{self.group.value}={sg.fmt(g)}: '}"
                           f"{s:.3f}" for g, s in self.spread().items())
        b, c = self.best(), self.chosen()
        best = (f"best {b['val_accuracy']:.3f} (loss {b['val_loss']:.3f}) at "
                f"{_settings(b['knobs'], self.method.value)}") if b else "no point matches"
        chose = (f"chosen: {_settings(c['knobs'], self.method.value)}, val {c['val_accuracy']:.3f},"
                 f" test {c['test_accuracy']:.3f} ({len(c['seeds'])} seeds)") if c else "not chosen"
        return (f"{self.method.value}: {self.metric.value} against {self.x.value} ({held}; "
                f"{seeds}); spread along {self.x.value}: {spread or '-'}; {best}; {chose}")

    def update(self) -> None:
        """Redraw the info line, the figure and the table from the current controls."""
        self.info.value = f"<b>SweepExplorer</b> · {esc(self.summary())}"
        pts = self.points()
        knobs = self._varied()
        self.table.value = html_table(
            [*knobs, "val acc", "val loss", "seeds"],
            [[esc(sg.fmt(p["knobs"].get(k))) for k in knobs]
             + [f"{p['val_accuracy']:.3f}", f"{p['val_loss']:.4f}", str(len(p["seeds"]))]
             for p in pts[:12]], align_right={len(knobs), len(knobs) + 1, len(knobs) + 2})
        show_figure(self.image, self.figure())

    def figure(self):
        """The metric against the x knob, one line per group value; the chosen setting
        starred where it lies on a line."""
        xk, metric = self.x.value, METRICS[self.metric.value]
        fig = new_figure(7.0, 3.6)
        ax = fig.subplots()
        chosen = (self.chosen() or {}).get("point")
        numeric = sg.KNOBS[xk].kind in ("int", "float")
        labels = [sg.fmt(v) for v in self.grid[self.method.value][xk]]
        for i, (g, pts) in enumerate(self.lines().items()):
            xs = [v if numeric else labels.index(sg.fmt(v)) for v, _, _ in pts]
            label = "best over the other knobs" if g is None else f"{self.group.value}={sg.fmt(g)}"
            ax.plot(xs, [m for _, m, _ in pts], "-o", ms=4, color=f"C{i % 10}", label=label)
            for xv, (_, m, pid) in zip(xs, pts):
                if pid == chosen:
                    ax.plot([xv], [m], "*", ms=14, color="gold", mec="black", zorder=5)
        if numeric:
            ax.set_xscale("log", base=2 if sg.KNOBS[xk].kind == "int" else 10)
            ax.set_xticks(self.grid[self.method.value][xk], labels)
            ax.minorticks_off()
        else:
            ax.set_xticks(range(len(labels)), labels)
        if metric == "val_loss":
            ax.set_yscale("log")
        ax.set(xlabel=f"{xk} ({sg.KNOBS[xk].help})", ylabel=self.metric.value,
               title=f"sweep: {self.method.value} (star: the setting the sweep chose)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        return fig


def _settings(knobs: dict, method: str) -> str:
    """'r=8, alpha=2r, ...': a point's knobs in the method's canonical order."""
    return ", ".join(f"{k}={sg.fmt(knobs[k])}" for k in sg.knobs_of(method) if k in knobs)

"""ServeMonitor: watch a running `peftlab serve` (or an in-process app) from a notebook.

    mon = pl.widgets.ServeMonitor("http://127.0.0.1:8000")   # or ServeMonitor(app)
    mon                      # table per adapter + confidence and predicted-class plots
    mon.mark()               # start a window: "since mark" shows only what came after
    mon.refresh()            # read /metrics again (the button does the same; "auto" every
                             # `interval` seconds on a background thread)
    mon.rows(), mon.summary(), mon.figure(), mon.snapshot, mon.window

Per adapter: predict requests answered, mean and p99 latency (from the histogram), mean
confidence (top-class probability), the share of predictions at or under 0.9 confidence and
the predicted-class distribution: a falling confidence or a moving class mix on unlabelled
traffic is the first sign that the data has drifted (notebook 09).

A chat server (the OpenAI-compatible one) gets its own view (serve_monitor_chat.py): per
model, requests, tokens, time to first token and tokens/s per request; tokens/s over time
from the readings of every refresh (mon.history), and rows per decoding step (notebook 14).
"""

from __future__ import annotations

import math
import threading

import ipywidgets as W

from peftlab.serve.metrics import MetricsSnapshot, read_metrics
from peftlab.widgets._base import WidgetBase, esc, html_table, image_widget, new_figure, show_figure
from peftlab.widgets.serve_monitor_chat import (
    ThroughputHistory,
    chat_figure,
    chat_head,
    chat_rows,
    chat_summary,
    chat_table,
    is_chat,
)

LOW = 0.9     # a confidence bucket bound of the server's histogram


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{1000 * x:.0f} ms"


def _errors(snap: MetricsSnapshot) -> str:
    """'none', or '404: 2, 422: 1' (statuses with answers in this view)."""
    shown = [f"{k}: {int(v)}" for k, v in sorted(snap.errors.items()) if v]
    return ", ".join(shown) if shown else "none"


def _bucket_names(bounds: list[float]) -> list[str]:
    """'<=0.5', '0.5-0.6', ... for the finite upper bounds of a histogram."""
    return [f"<={b:g}" if i == 0 else f"{bounds[i - 1]:g}-{b:g}" for i, b in enumerate(bounds)]


class ServeMonitor(WidgetBase):
    """A live view of a server's metrics (see the module docstring)."""

    def __init__(self, source, interval: float = 2.0, refresh: bool = True):
        if not (isinstance(interval, (int, float)) and interval > 0):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}.")
        self.source, self.interval = source, float(interval)
        self.snapshot = MetricsSnapshot()
        self.baseline = MetricsSnapshot()           # mark() moves it; window = snapshot - it
        self.history = ThroughputHistory()          # the token counters at every refresh
        self._timer: threading.Timer | None = None
        self._head = W.HTML()
        self._table = W.HTML()
        self._image = image_widget()
        self._button = W.Button(description="refresh", icon="refresh",
                                layout=W.Layout(width="110px"))
        self._mark = W.Button(description="mark", tooltip="start a window here",
                              layout=W.Layout(width="80px"))
        self._scope = W.ToggleButtons(options=["all time", "since mark"], value="all time",
                                      style={"button_width": "90px"})
        self._auto = W.Checkbox(value=False, description=f"auto ({self.interval:g} s)",
                                indent=False)
        self._button.on_click(lambda _: self.refresh())
        self._mark.on_click(lambda _: self.mark())
        self._scope.observe(lambda _: self._draw(), "value")
        self._auto.observe(self._on_auto, "value")
        controls = W.HBox([self._button, self._mark, self._scope, self._auto])
        self.widget = W.VBox([self._head, controls, self._table, self._image])
        if refresh:
            self.refresh()

    # --- reading ----------------------------------------------------------------------------
    def refresh(self) -> MetricsSnapshot:
        """Read the metrics again and redraw; returns the new snapshot."""
        try:
            self.snapshot = read_metrics(self.source)
        except OSError as e:                       # server gone or not up yet: say so, keep old
            self._head.value = f"<b style='color:#c62828'>cannot read metrics: {esc(e)}</b>"
            return self.snapshot
        self.history.record(self.snapshot)
        self._draw()
        return self.snapshot

    def mark(self) -> None:
        """Start a window now: 'since mark' shows what arrives from here on."""
        self.baseline = self.refresh()
        self._scope.value = "since mark"
        self._draw()

    @property
    def window(self) -> MetricsSnapshot:
        """What arrived since the last mark() (everything if never marked)."""
        return self.snapshot - self.baseline

    def _shown(self) -> MetricsSnapshot:
        return self.window if self._scope.value == "since mark" else self.snapshot

    def _on_auto(self, change) -> None:
        if change["new"]:
            self._tick()
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        if not self._auto.value:
            return
        self.refresh()
        self._timer = threading.Timer(self.interval, self._tick)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        """Stop auto-refresh."""
        self._auto.value = False

    # --- numbers ----------------------------------------------------------------------------
    def rows(self, snap: MetricsSnapshot | None = None) -> list[dict]:
        """One dict per adapter: requests, mean/p99 latency (s), mean confidence, the share at
        or under 0.9, and {label: share} of the predicted classes."""
        snap = self._shown() if snap is None else snap
        out = []
        for a in snap.adapters:
            conf = snap.confidence.get(a)
            out.append({
                "adapter": a,
                "requests": int(snap.requests.get(a, 0)),
                "mean_latency": snap.mean_latency(a),
                "p99_latency": snap.latency_quantile(0.99, a),
                "mean_confidence": snap.mean_confidence(a),
                "low_confidence": conf.share_below(LOW) if conf and conf.count else math.nan,
                "classes": snap.class_shares(a),
            })
        return out

    def chat_rows(self, snap: MetricsSnapshot | None = None) -> list[dict]:
        """A chat server's numbers, one dict per model (serve_monitor_chat.chat_rows)."""
        return chat_rows(self._shown() if snap is None else snap)

    def summary(self) -> str:
        snap = self._shown()
        if is_chat(snap):
            return chat_summary(self._scope.value, snap)
        head = (f"{self._scope.value}: {int(sum(snap.requests.values()))} requests, "
                f"{int(snap.batches)} forward passes, errors: {_errors(snap)}")
        lines = [head]
        for r in self.rows(snap):
            classes = ", ".join(f"{k} {_pct(v)}" for k, v in r["classes"].items())
            lines.append(f"{r['adapter']:<10} {r['requests']:>5} req  latency mean "
                         f"{_ms(r['mean_latency'])}, p99 {_ms(r['p99_latency'])}  confidence "
                         f"{_pct(r['mean_confidence'])} (<= {LOW}: {_pct(r['low_confidence'])})"
                         f"  classes: {classes}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ServeMonitor({self.source!r})\n{self.summary()}"

    # --- drawing ----------------------------------------------------------------------------
    def figure(self, snap: MetricsSnapshot | None = None):
        """Left: confidence histogram per adapter; right: predicted-class shares per adapter."""
        snap = self._shown() if snap is None else snap
        if is_chat(snap):               # a chat server: tokens/s over time, rows per step
            return chat_figure(snap, self.history)
        fig = new_figure(8.5, 2.8)
        ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.4, 1])
        adapters = snap.adapters
        width, drawn = 0.8 / max(1, len(adapters)), False
        for k, a in enumerate(adapters):
            h = snap.confidence.get(a)
            if h is None or not h.count:
                continue
            finite = [b for b in h.bounds if not math.isinf(b)]
            counts = h.counts()[:len(finite)]
            xs = [i + (k - (len(adapters) - 1) / 2) * width for i in range(len(finite))]
            ax1.bar(xs, [c / h.count for c in counts], width=width, label=a)
            drawn = True
            ax1.set_xticks(range(len(finite)), _bucket_names(finite), fontsize=7)
        ax1.set_ylabel("share of predictions")
        ax1.set_title("confidence (top-class probability)", fontsize=10)
        if drawn:
            ax1.legend(fontsize=8)
        labels = sorted({lab for a in adapters for lab in snap.predictions.get(a, {})})
        bottoms = [0.0] * len(adapters)
        for lab in labels:
            shares = [snap.class_shares(a).get(lab, 0.0) for a in adapters]
            shares = [0.0 if math.isnan(s) else s for s in shares]
            ax2.barh(adapters, shares, left=bottoms, label=lab)
            bottoms = [b + s for b, s in zip(bottoms, shares)]
        ax2.set_xlim(0, 1)
        ax2.set_xlabel("share of predictions")
        ax2.set_title("predicted classes", fontsize=10)
        if labels and any(snap.predictions.get(a) for a in adapters):
            ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig

    def _draw(self) -> None:
        snap = self._shown()
        where = self.source if isinstance(self.source, str) else "in-process server"
        if is_chat(snap):
            self._head.value = chat_head(where, self._scope.value, snap)
            self._table.value = chat_table(snap)
            show_figure(self._image, self.figure(snap))
            return
        self._head.value = (f"<b>peftlab serve</b> · {esc(where)} · {esc(self._scope.value)}: "
                            f"<b>{int(sum(snap.requests.values()))}</b> requests in "
                            f"<b>{int(snap.batches)}</b> forward passes (mean batch "
                            f"{'-' if math.isnan(snap.mean_batch()) else f'{snap.mean_batch():.1f}'}"
                            f" texts) · errors: {esc(_errors(snap))}")
        rows = [[esc(r["adapter"]), f"{r['requests']:,}", _ms(r["mean_latency"]),
                 _ms(r["p99_latency"]), _pct(r["mean_confidence"]), _pct(r["low_confidence"]),
                 esc(", ".join(f"{k} {_pct(v)}" for k, v in r["classes"].items()))]
                for r in self.rows(snap)]
        self._table.value = html_table(
            ["adapter", "requests", "latency mean", "p99", "confidence", f"<= {LOW}",
             "predicted classes"], rows, align_right={1, 2, 3, 4, 5})
        show_figure(self._image, self.figure(snap))

"""ServeMonitor's view of the chat server: per model, requests, tokens and tokens/s over time.

    mon = pl.widgets.ServeMonitor(url)      # a chat server (peftlab/serve/chat_app.py): this
                                            # view replaces the classifier's table and plots
    mon.chat_rows()    [{"model", "requests", "tokens", "prompt_tokens", "mean_ttft",
                         "mean_tokens_per_second", "finished"}, ...]   one per served model
    mon.history        every refresh's reading of the token counters (ThroughputHistory)
    mon.history.rates()   {model: [(seconds since the first reading, tokens/s), ...]}

A "model" is what a request named: the base's served name or an adapter's (as vLLM names
LoRA adapters). Tokens/s over time is the difference of two readings of the counter
peftlab_chat_tokens_generated divided by the seconds between them, per model, so the plot
shows the server's throughput for each adapter as the traffic comes and goes. The server adds
a request's tokens to the counter when the request ends, so the rate is taken over a trailing
window (`window`, 5 s: longer than one answer) rather than between two refreshes only. The
other plot is the histogram of rows per forward pass (peftlab_chat_batch_rows): mass above 1
means requests shared decoding steps (iteration-level batching, serve/chat_engine.py).
"""

from __future__ import annotations

import math
import time

from peftlab.serve.metrics import MetricsSnapshot
from peftlab.widgets._base import esc, html_table, new_figure

KEEP = 600          # readings kept: 20 minutes at the default 2 s refresh
WINDOW = 5.0        # seconds a rate is averaged over (the counter grows as requests end)


def is_chat(snap: MetricsSnapshot) -> bool:
    """Whether a snapshot comes from the chat server: its rows-per-step histogram exists from
    start-up (unlabelled, so it is exported before any traffic); the classifier has none."""
    return bool(snap.batch_rows.bounds or snap.chat_requests or snap.tokens_generated)


def chat_models(snap: MetricsSnapshot) -> list[str]:
    """The models (base or adapter names) that requests named, sorted."""
    return sorted(set(snap.chat_requests) | set(snap.tokens_generated) | set(snap.chat_finished))


def chat_rows(snap: MetricsSnapshot) -> list[dict]:
    """One dict per model: chat requests answered (200), tokens generated and read, mean time
    to first token (s), mean tokens/s per request after its first token, and how requests
    ended ({"stop": n, "length": n, ...})."""
    return [{"model": m,
             "requests": int(snap.chat_requests.get(m, 0)),
             "tokens": int(snap.tokens_generated.get(m, 0)),
             "prompt_tokens": int(snap.prompt_tokens.get(m, 0)),
             "mean_ttft": snap.mean_ttft(m),
             "mean_tokens_per_second": snap.mean_tokens_per_second(m),
             "finished": {k: int(v) for k, v in sorted(snap.chat_finished.get(m, {}).items())
                          if v}}
            for m in chat_models(snap)]


class ThroughputHistory:
    """(time, tokens generated per model, forward passes) at each refresh of the monitor.
    keep: readings kept; window: seconds each rate is averaged over (0: between two readings)."""

    def __init__(self, keep: int = KEEP, window: float = WINDOW):
        self.keep, self.window = keep, float(window)
        self.readings: list[tuple[float, dict[str, float], float]] = []

    def record(self, snap: MetricsSnapshot, t: float | None = None) -> None:
        """Add one reading (t: time.monotonic() unless given)."""
        t = time.monotonic() if t is None else float(t)
        self.readings.append((t, dict(snap.tokens_generated), snap.batch_rows.count))
        del self.readings[:-self.keep]

    def rates(self, window: float | None = None) -> dict[str, list[tuple[float, float]]]:
        """{model: [(s since the first reading, tokens/s)]}: at each reading after the first,
        the tokens since the earliest reading at most `window` seconds before it (at least the
        previous reading) divided by the seconds between the two. window: default self.window."""
        window = self.window if window is None else float(window)
        out: dict[str, list[tuple[float, float]]] = {}
        if len(self.readings) < 2:
            return out
        t0 = self.readings[0][0]
        models = sorted({m for _, tokens, _ in self.readings for m in tokens})
        start = 0
        for j in range(1, len(self.readings)):
            tb, b, _ = self.readings[j]
            while start < j - 1 and tb - self.readings[start][0] > window:
                start += 1
            ta, a, _ = self.readings[min(start, j - 1)]
            if tb <= ta:
                continue
            for m in models:
                out.setdefault(m, []).append((tb - t0, (b.get(m, 0) - a.get(m, 0)) / (tb - ta)))
        return out

    def total_rate(self) -> list[tuple[float, float]]:
        """[(s since the first reading, tokens/s of all models together)]."""
        per = list(self.rates().values())
        return [(t, sum(p[i][1] for p in per)) for i, (t, _) in enumerate(per[0])] if per else []


def _s(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f} s"


def _rate(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}"


def chat_summary(scope: str, snap: MetricsSnapshot) -> str:
    """The monitor's text summary for a chat server."""
    rows = chat_rows(snap)
    mean = snap.mean_rows()
    errors = ", ".join(f"{k}: {int(v)}" for k, v in sorted(snap.errors.items()) if v) or "none"
    head = (f"{scope}: {sum(r['requests'] for r in rows)} chat requests, "
            f"{sum(r['tokens'] for r in rows)} tokens generated in {int(snap.batch_rows.count)} "
            f"forward passes (mean rows {'-' if math.isnan(mean) else f'{mean:.2f}'}), "
            f"errors: {errors}")
    lines = [head]
    for r in rows:
        ended = ", ".join(f"{k} {v}" for k, v in r["finished"].items())
        lines.append(f"{r['model']:<22} {r['requests']:>4} req {r['tokens']:>6} tokens  "
                     f"first token {_s(r['mean_ttft'])}  "
                     f"{_rate(r['mean_tokens_per_second'])} tokens/s per request  ended: {ended}")
    return "\n".join(lines)


def chat_head(where: str, scope: str, snap: MetricsSnapshot) -> str:
    """The HTML line above the table."""
    mean = snap.mean_rows()
    errors = ", ".join(f"{k}: {int(v)}" for k, v in sorted(snap.errors.items()) if v) or "none"
    return (f"<b>peftlab serve (chat)</b> · {esc(where)} · {esc(scope)}: "
            f"<b>{int(sum(snap.chat_requests.values()))}</b> requests, "
            f"<b>{int(sum(snap.tokens_generated.values()))}</b> tokens in "
            f"<b>{int(snap.batch_rows.count)}</b> forward passes (mean "
            f"{'-' if math.isnan(mean) else f'{mean:.2f}'} rows) · errors: {esc(errors)}")


def chat_table(snap: MetricsSnapshot) -> str:
    """The per-model table (HTML)."""
    rows = [[esc(r["model"]), f"{r['requests']:,}", f"{r['tokens']:,}", _s(r["mean_ttft"]),
             _rate(r["mean_tokens_per_second"]),
             esc(", ".join(f"{k} {v}" for k, v in r["finished"].items()))]
            for r in chat_rows(snap)]
    return html_table(["model", "requests", "tokens", "first token", "tokens/s per request",
                       "ended"], rows, align_right={1, 2, 3, 4})


def chat_figure(snap: MetricsSnapshot, history: ThroughputHistory):
    """Left: tokens/s per model over time (between refreshes); right: rows per forward pass."""
    fig = new_figure(8.5, 2.8)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.6, 1])
    rates = history.rates()
    for m, points in rates.items():
        ax1.plot([t for t, _ in points], [r for _, r in points], marker="o", ms=2.5, label=m)
    ax1.set_xlabel("seconds since the monitor's first reading")
    ax1.set_ylabel("tokens / s")
    ax1.set_title(f"tokens per second, per model (last {history.window:g} s)", fontsize=10)
    if rates:
        ax1.legend(fontsize=8)
    else:
        ax1.text(0.5, 0.5, "refresh twice to see a rate", ha="center", va="center",
                 transform=ax1.transAxes, fontsize=9, color="0.4")
    h = snap.batch_rows
    finite = [b for b in h.bounds if not math.isinf(b)]
    counts = h.counts()[:len(finite)]
    while len(finite) > 4 and not counts[-1]:       # no empty buckets beyond the largest batch
        finite, counts = finite[:-1], counts[:-1]
    if h.count and finite:
        names = [f"{b:g}" if i == 0 or b == finite[i - 1] + 1 else f"{finite[i - 1] + 1:g}-{b:g}"
                 for i, b in enumerate(finite)]
        ax2.bar(range(len(finite)), [c / h.count for c in counts], color="C2")
        ax2.set_xticks(range(len(finite)), names, fontsize=8)
    ax2.set_xlabel("rows in the forward pass")
    ax2.set_ylabel("share of forward passes")
    ax2.set_title("rows per decoding step", fontsize=10)
    return fig

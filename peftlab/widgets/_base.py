"""Shared pieces of the peftlab widgets: the display protocol and Agg-safe figure rendering.

Every widget is a plain Python object with
    .widget        an ipywidgets container (what a notebook shows)
and a browser-free API (rows(), summary(), figure(), counts as attributes) that tests and
scripts use. Figures are drawn on a bare matplotlib `Figure` (no pyplot, no global state,
works with any backend, even headless) and shown as PNG bytes in an `ipywidgets.Image`.
"""

from __future__ import annotations

import html
import io
import re

import ipywidgets as W
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


class WidgetBase:
    """Mixin: show `self.widget` when the object is the last value of a notebook cell."""

    widget: W.Widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


def new_figure(width: float = 8.0, height: float = 4.0, layout: str | None = "constrained",
               dpi: int = 80) -> Figure:
    """A pyplot-free Figure with an Agg canvas (safe in threads, tests and headless runs).

    layout=None (with fig.subplots_adjust) draws about twice as fast as "constrained".
    """
    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def image_widget() -> W.Image:
    return W.Image(format="png", layout=W.Layout(max_width="100%"))


def show_figure(image: W.Image, fig: Figure) -> None:
    """Render `fig` into the Image widget (the one place a widget's picture changes)."""
    image.value = png_bytes(fig)


def esc(text) -> str:
    return html.escape(str(text))


def fmt_int(n: int) -> str:
    return f"{n:,}"


def html_table(header: list[str], rows: list[list[str]], align_right: set[int] = frozenset(),
               row_styles: list[str] | None = None) -> str:
    """A compact HTML table; cells are already-escaped HTML strings."""
    th = "".join(f"<th style='text-align:{'right' if i in align_right else 'left'};"
                 f"padding:2px 8px'>{h}</th>" for i, h in enumerate(header))
    body = []
    for k, r in enumerate(rows):
        style = row_styles[k] if row_styles else ""
        tds = "".join(f"<td style='text-align:{'right' if i in align_right else 'left'};"
                      f"padding:1px 8px'>{c}</td>" for i, c in enumerate(r))
        body.append(f"<tr style='{style}'>{tds}</tr>")
    return (f"<table style='border-collapse:collapse;font-size:12px;font-family:monospace'>"
            f"<thead><tr style='border-bottom:1px solid #999'>{th}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def short_names(names: list[str]) -> list[str]:
    """Labels for plots: 'bert.encoder.layer.3.attention.self.query' -> 'L3.attention.self.query'
    (blocks numbered as layer.N / layers.N / h.N / blocks.N), then drop a shared prefix."""
    out = [re.sub(r"^(?:.*\.)?(?:layers?|h|blocks?)\.(\d+)\.", r"L\1.", n) for n in names]
    split = [n.split(".") for n in out]
    k = 0
    while len(split) > 1 and all(len(s) > k + 1 and s[k] == split[0][k] for s in split):
        k += 1
    return [".".join(s[k:]) for s in split]

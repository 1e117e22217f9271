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
import math
import re

import ipywidgets as W
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


class WidgetBase:
    """Mixin: show `self.widget` when the object is the last value of a notebook cell.

    The container gets the CSS class `peftlab-<class name in lower case>` (for example
    `peftlab-loraexplorer`), a stable hook for styles and browser tests."""

    @property
    def widget(self) -> W.Widget:
        return self._widget

    @widget.setter
    def widget(self, w: W.Widget) -> None:
        w.add_class(f"peftlab-{type(self).__name__.lower()}")
        self._widget = w

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
    """An Image shown at the figure's natural size: a flex column (VBox) stretches children
    to its width by default, so the image opts out (align_self) and only shrinks, keeping its
    aspect ratio (max_width + height auto), when the output is narrower than the figure."""
    return W.Image(format="png", layout=W.Layout(max_width="100%", height="auto",
                                                 align_self="flex-start"))


def show_figure(image: W.Image, fig: Figure) -> None:
    """Render `fig` into the Image widget (the one place a widget's picture changes)."""
    image.value = png_bytes(fig)


LABEL_PT = 9     # tick labels of heat maps: readable on a laptop screen at dpi 80


def set_ticks(ax, axis: str, labels: list, fontsize: float = LABEL_PT,
              positions: list | None = None) -> int:
    """Label the rows (axis="y") or columns ("x") of a heat map at a readable size, thinning
    the labels (every k-th) when the axes are too small to show them all without touching.

    Call after the figure's layout is final (subplots_adjust, colorbar). Returns k."""
    labels = [str(x) for x in labels]
    n = len(labels)
    positions = list(range(n)) if positions is None else list(positions)
    if not n:
        return 1
    box = ax.get_position()                                 # figure fraction
    w_in, h_in = ax.figure.get_size_inches()
    if axis == "y":
        room = box.height * h_in * 72 / n                   # points per row
        need = 1.3 * fontsize                               # one line of text plus a gap
    else:
        room = box.width * w_in * 72 / n                    # points per column
        need = 0.62 * fontsize * max(len(x) for x in labels) + 0.6 * fontsize
    k = max(1, math.ceil(need / room))
    keep = list(range(0, n, k))
    setter = ax.set_yticks if axis == "y" else ax.set_xticks
    setter([positions[i] for i in keep], [labels[i] for i in keep], fontsize=fontsize)
    return k


def label_margin(labels: list, fig_width: float, fontsize: float = LABEL_PT,
                 least: float = 0.06, most: float = 0.4) -> float:
    """Left margin (figure fraction) that fits the longest row label of a heat map."""
    longest = max((len(str(x)) for x in labels), default=0)
    inches = (0.6 * fontsize * longest + 14) / 72          # text + ticks + padding
    return min(most, max(least, inches / fig_width))


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

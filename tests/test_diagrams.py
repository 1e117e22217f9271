"""The course diagrams (notebooks/workshop/make_diagrams.py) keep their own rule: every label
sits inside its box or in free space, and no label crosses a box edge, an arrow, a line or
another label. Measured on the drawn figures, in display coordinates."""

from __future__ import annotations

import importlib.util
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from matplotlib.patches import FancyArrowPatch, Rectangle

SCRIPT = Path(__file__).resolve().parents[1] / "notebooks" / "workshop" / "make_diagrams.py"
CLOSEPOLY = 79


def _module():
    spec = importlib.util.spec_from_file_location("make_diagrams", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MOD = _module()


def _hits(points: np.ndarray, bb) -> bool:
    """Whether the polyline through `points` passes inside the box bb (sampled densely)."""
    for p, q in pairwise(points):
        t = np.linspace(0, 1, 200)[:, None]
        s = p + t * (q - p)
        if np.any((s[:, 0] > bb.x0) & (s[:, 0] < bb.x1) & (s[:, 1] > bb.y0) & (s[:, 1] < bb.y1)):
            return True
    return False


def crossings(fig, pad: float = 1.0) -> list[str]:
    """Every label that crosses a box edge, an arrow, a line or another label in `fig`."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.texts if t.get_text().strip()]
    for ax in fig.axes:
        texts += [t for t in ax.texts if t.get_text().strip()]
    boxes = [(t.get_text(), t.get_window_extent(renderer).padded(-pad)) for t in texts]
    out = []
    for ax in fig.axes:
        for patch in ax.patches:
            if isinstance(patch, Rectangle):
                e = patch.get_window_extent(renderer)
                for label, b in boxes:
                    inside = e.x0 <= b.x0 and b.x1 <= e.x1 and e.y0 <= b.y0 and b.y1 <= e.y1
                    apart = b.x1 <= e.x0 or b.x0 >= e.x1 or b.y1 <= e.y0 or b.y0 >= e.y1
                    if not (inside or apart):
                        out.append(f"{label!r} crosses the edge of the box at {patch.get_xy()}")
            elif isinstance(patch, FancyArrowPatch):
                for path in patch._get_path_in_displaycoord()[0]:
                    codes = path.codes if path.codes is not None else np.ones(len(path.vertices))
                    pts = path.vertices[codes != CLOSEPOLY]
                    out += [f"{label!r} crosses an arrow" for label, b in boxes if _hits(pts, b)]
        for line in ax.lines:
            pts = ax.transData.transform(np.column_stack(line.get_data()))
            out += [f"{label!r} crosses a line" for label, b in boxes if _hits(pts, b)]
    for i, (a, ba) in enumerate(boxes):
        out += [f"{a!r} overlaps {b!r}" for b, bb in boxes[i + 1:] if ba.overlaps(bb)]
    return out


@pytest.mark.parametrize("name", sorted(MOD.DIAGRAMS))
def test_no_label_crosses_a_box_an_arrow_or_another_label(name, tmp_path, monkeypatch):
    figs = []
    close = MOD.plt.close
    monkeypatch.setattr(MOD.plt, "close", figs.append)     # keep the figure to measure it
    MOD.DIAGRAMS[name](tmp_path / name)
    try:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
        assert crossings(figs[0]) == []
    finally:
        close(figs[0])


def test_the_checker_sees_a_crossing():
    import matplotlib.pyplot as plt
    fig, ax = MOD.canvas(4, 2, 4, 2)
    MOD.box(ax, 0.5, 0.5, 1.0, 1.0, "a label far too long for its box", MOD.FROZEN)
    MOD.arrow(ax, (2.0, 0.2), (2.0, 1.8))
    try:
        found = crossings(fig)
        assert any("crosses the edge" in f for f in found)
        assert any("crosses an arrow" in f for f in found)
    finally:
        plt.close(fig)

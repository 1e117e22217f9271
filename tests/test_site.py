"""The static course site (peftlab.site): one command, offline pages, figures, widgets, math as
MathML and the diagrams that markdown cells link."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from peftlab import site
from peftlab.site_math import formulas
from peftlab.widgets.snapshot import WIDGET_VIEW, widget_state

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
MD_IMAGE = re.compile(r"!\[([^\]]+)\]\(([^)\s]+\.png)\)")     # ![alt text](path.png)


def _images_under(mid: str, state: dict) -> int:
    """Image widgets with a stored picture in the widget tree below model `mid`."""
    model = state[mid]
    own = model["model_name"] == "ImageModel" and bool(model.get("buffers"))
    kids = [c[len("IPY_MODEL_"):] for c in model["state"].get("children", [])]
    return own + sum(_images_under(k, state) for k in kids if k in state)


def _expected(nb_path: Path) -> tuple[int, int, int]:
    """(image/png outputs and images markdown links, widget outputs with stored state, figures
    inside those widgets)."""
    nb = json.loads(nb_path.read_text())
    state = widget_state(nb)
    pngs = widgets = figures = 0
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            pngs += len(MD_IMAGE.findall("".join(cell["source"])))
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            pngs += "image/png" in data and WIDGET_VIEW not in data
            mid = data.get(WIDGET_VIEW, {}).get("model_id")
            if mid in state:
                widgets += 1
                figures += _images_under(mid, state)
    return pngs, widgets, figures


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    assert site.main(["build", str(out)]) == 0        # the one command, as the README gives it
    return out


def test_every_notebook_has_a_page_with_its_figures_and_widgets(built):
    paths = site.notebook_paths(NOTEBOOKS)
    assert len(paths) >= 9
    for nb in paths:
        page = built / (nb.stem + ".html")
        assert page.exists(), f"no page for {nb.name}"
        html = page.read_text(encoding="utf-8")
        pngs, widgets, figures = _expected(nb)
        images = len(re.findall(r"<img[^>]+src=['\"]data:image/png;base64,", html))
        snaps = len(re.findall(r"class=[\"']peftlab-widget-snapshot[\"']", html))
        assert snaps == widgets, f"{nb.name}: {snaps} widget snapshots, {widgets} widgets"
        assert images == pngs + figures, \
            f"{nb.name}: {images} images; {pngs} figures + {figures} in widgets expected"
        assert "VBox(children=" not in html and WIDGET_VIEW not in html
        assert re.search(r"<nav class=[\"']peftlab-nav", html)


def test_math_is_mathml_and_diagrams_are_embedded(built):
    """Every formula of a notebook is a <math> element on its page (none kept as TeX), and
    every image its markdown links is embedded with its alt text (no broken image)."""
    shown = set()
    for path in site.notebook_paths(NOTEBOOKS):
        nb = nbformat.read(path, as_version=4)
        md = [c.source for c in nb.cells if c.cell_type == "markdown"]
        html = (built / (path.stem + ".html")).read_text(encoding="utf-8")
        n = sum(len(formulas(s)) for s in md)
        assert len(re.findall(r"<math display=", html)) == n, f"{path.name}: {n} formulas"
        assert 'class="peftlab-tex"' not in html, f"{path.name}: a formula kept as TeX"
        assert not re.findall(r"<img[^>]+src=[\"'](?!data:)", html), f"{path.name}: broken image"
        for alt, src in (m for s in md for m in MD_IMAGE.findall(s)):
            assert (path.parent / src).is_file(), f"{path.name} links {src}, which is missing"
            assert re.search(rf'<img[^>]+alt="{re.escape(alt)}"[^>]+src="data:image/png;base64,'
                             rf'|<img[^>]+src="data:image/png;base64,[^"]+"[^>]+alt="'
                             rf'{re.escape(alt)}"', html), f"{path.name}: {src} not embedded"
            shown.add(Path(src).name)
    diagrams = {p.name for p in (NOTEBOOKS / "workshop" / "diagrams").glob("*.png")}
    assert shown == diagrams, f"diagrams in no notebook: {sorted(diagrams - shown)}"


def test_pages_are_offline_and_linked(built):
    pages = sorted(built.glob("*.html"))
    for page in pages:
        html = page.read_text(encoding="utf-8")
        external = re.findall(r"<(?:script|link|img|iframe)[^>]+(?:src|href)=['\"](?:https?:)?//",
                              html)
        assert not external, f"{page.name} fetches from the network: {external[:2]}"
        assert not re.search(r"<script[^>]+src=", html), f"{page.name} loads a script"
    index = (built / "index.html").read_text(encoding="utf-8")
    for nb in site.notebook_paths(NOTEBOOKS):
        assert f'href="{nb.stem}.html"' in index, f"the course map does not link {nb.stem}"
        assert f'href="{nb.name}"' not in index


def test_snapshot_command_stores_snapshots_in_place(tmp_path):
    src = next(p for p in site.notebook_paths(NOTEBOOKS) if _expected(p)[2])
    copy = tmp_path / src.name
    copy.write_text(src.read_text())
    n = _expected(copy)[1]
    assert site.main(["snapshot", str(copy)]) == 0
    nb = nbformat.read(copy, as_version=4)
    outs = [o for c in nb.cells for o in c.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]
    with_snap = [o for o in outs if "peftlab-widget-snapshot" in o["data"].get("text/html", "")]
    assert len(with_snap) == n > 0
    assert all(WIDGET_VIEW in o["data"] for o in with_snap)     # the live view stays first
    nbformat.validate(nb)
    site.snapshot([copy])                                           # twice: same file
    assert nbformat.read(copy, as_version=4) == nb


def test_build_names_a_folder_without_notebooks(tmp_path):
    with pytest.raises(FileNotFoundError, match="--notebooks"):
        site.build(tmp_path / "out", notebooks=tmp_path)

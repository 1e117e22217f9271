"""The course as a static web site: read it without a kernel, offline, as a hand-out.

    python -m peftlab.site build OUT                  # OUT/index.html + one page per notebook
    python -m peftlab.site build OUT --notebooks DIR  # another folder of notebooks
    python -m peftlab.site snapshot notebooks/0*.ipynb   # store widget snapshots in place

`build` renders each committed notebook with nbconvert's HTML exporter (the JupyterLab look)
as it was last executed: code, printed output, figures, and every widget as a snapshot of
the widget state the notebook stores (peftlab.widgets.snapshot: boxes, controls with their
values, figures). Nothing is re-run, so a build takes seconds. The pages are self-contained
files: styles and images are inline, no script and no stylesheet is fetched from a CDN (the
exporter's require.js, MathJax, mermaid and widget-manager tags are left out), so the folder
reads the same from a USB stick. Math is converted to MathML at build time, which browsers
draw natively (peftlab.site_math); a formula that does not convert stays as TeX in a `<code>`
and the build warns, naming the notebook and the cell. Images that markdown cells link
(`![...](workshop/diagrams/lora.png)`) are embedded in the page; one that is not found is a
warning too. Links between notebooks point to the pages; index.html is notebooks/README.md,
the course map.

`snapshot` adds the same snapshots to the notebooks themselves, next to each widget view,
so an untrusted JupyterLab (a notebook you did not run yourself) and GitHub show the widgets'
stored pictures instead of `VBox(children=...` text; a trusted notebook still shows the live
widget (see notebooks/README.md, "Widgets in saved notebooks").
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import warnings
from pathlib import Path

from peftlab.io.files import atomic_write
from peftlab.widgets.snapshot import (
    WIDGET_VIEW,
    add_snapshots,
    snapshot_html,
    widget_state,
)

ROOT = Path(__file__).resolve().parent.parent
PATTERN = "[0-9][0-9]_*.ipynb"

# nbconvert's JupyterLab template without the tags that fetch from a CDN
TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<style>
.peftlab-nav{font-family:sans-serif;font-size:14px;padding:8px 16px;border-bottom:1px solid #ddd;
  display:flex;gap:24px}
.peftlab-widget-snapshot{border-left:3px solid #9ec5fe;padding-left:8px}
math[display=block]{margin:0.6em 0;overflow-x:auto;overflow-y:hidden}
.jp-RenderedMarkdown img{max-width:100%}
</style>{%- endblock extra_css -%}
"""

INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{title}</title>
<style>
body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.5}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
pre{{background:#f6f8fa;padding:8px;overflow:auto}} code{{background:#f6f8fa}}
</style></head>
<body>
{body}
</body></html>
"""


def notebook_paths(src: Path) -> list[Path]:
    paths = sorted(Path(src).glob(PATTERN))
    if not paths:
        raise FileNotFoundError(f"no course notebooks ({PATTERN}) in {src}: pass the folder "
                                f"that holds them with --notebooks.")
    return paths


def _read(path: Path):
    import nbformat
    return nbformat.read(path, as_version=4)


def snapshot(paths) -> dict[str, int]:
    """Store widget snapshots in each notebook (in place, atomically): {path: widgets}."""
    import nbformat
    done = {}
    for path in map(Path, paths):
        nb = _read(path)
        done[str(path)] = add_snapshots(nb)
        text = nbformat.writes(nb)
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text + "\n",
                                                                       encoding="utf-8"))
    return done


def for_page(nb):
    """A copy of `nb` ready for a static page: each widget output becomes its snapshot (HTML
    only, so the exporter writes no widget script) and the stored state is dropped."""
    nb = copy.deepcopy(nb)
    state = widget_state(nb)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if not view:
                continue
            if view.get("model_id") in state:
                out["data"] = {"text/html": snapshot_html(view["model_id"], state)}
            else:       # a widget closed before the save (a finished progress bar): its text
                out["data"] = {k: v for k, v in out["data"].items() if k != WIDGET_VIEW}
    nb.metadata.pop("widgets", None)
    return nb


def _links(html: str, pages: set[str]) -> str:
    """href="02_lora.ipynb#x" -> href="02_lora.html#x" for the notebooks that have a page."""
    def sub(m):
        name = m.group(2)
        return f'{m.group(1)}{name[:-6]}.html' if name in pages else m.group(0)
    return re.sub(r'(href=["\'](?:\./)?)([^"\'#/]+\.ipynb)', sub, html)


def _nav(prev: str | None, nxt: str | None) -> str:
    parts = ["<a href='index.html'>course map</a>"]
    if prev:
        parts.append(f"<a href='{prev}'>&larr; previous</a>")
    if nxt:
        parts.append(f"<a href='{nxt}'>next &rarr;</a>")
    return f"<nav class='peftlab-nav'>{''.join(parts)}</nav>"


def _exporter():
    from jinja2 import DictLoader

    from peftlab.site_math import MathMLExporter
    exporter = MathMLExporter(template_name="lab", embed_images=True,
                              extra_loaders=[DictLoader({"peftlab_site.html.j2": TEMPLATE})])
    exporter.template_file = "peftlab_site.html.j2"
    return exporter


def render_page(nb, title: str, exporter=None, folder: Path | str | None = None) -> str:
    """One self-contained HTML page for a notebook (widgets as snapshots, math as MathML, the
    images its markdown links embedded, no CDN tags). folder: where those image paths start
    (the notebook's folder). Warns (BuildWarning) for each formula kept as TeX and each image
    not found, naming `title` and the cell."""
    from peftlab.site_math import BuildWarning
    exporter = exporter or _exporter()
    meta = {"name": title, "path": str(folder) if folder is not None else ""}
    body, _ = exporter.from_notebook_node(for_page(nb), resources={"metadata": meta})
    for cell, formula, why in exporter.failures:
        warnings.warn(f"{title}: cell {cell}: {formula.source()} kept as TeX ({why})",
                      BuildWarning, stacklevel=2)
    for src in re.findall(r"<img[^>]+src=[\"']((?!data:|https?:)[^\"']+)", body):
        warnings.warn(f"{title}: image {src} not found (paths start at {folder}); the page "
                      f"shows a broken image", BuildWarning, stacklevel=2)
    return body


def build(out, notebooks: Path | str | None = None, quiet: bool = False) -> list[Path]:
    """Write the static course into `out`; returns the pages written (index.html first)."""
    from peftlab.site_math import markdown_to_html
    src = Path(notebooks) if notebooks is not None else ROOT / "notebooks"
    paths, out = notebook_paths(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pages = {p.name for p in paths}
    names = [p.stem + ".html" for p in paths]
    written, exporter = [], _exporter()
    readme = src / "README.md"
    body = (markdown_to_html(readme.read_text(encoding="utf-8")) if readme.exists() else
            "<h1>Course</h1><ul>" + "".join(f"<li><a href='{n}'>{n[:-5]}</a></li>"
                                             for n in names) + "</ul>")
    index = INDEX.format(title="peftlab course", body=_links(body, pages))
    atomic_write(out / "index.html", lambda t: Path(t).write_text(index, encoding="utf-8"))
    written.append(out / "index.html")
    for i, path in enumerate(paths):
        html = render_page(_read(path), path.stem, exporter, folder=src)
        nav = _nav(names[i - 1] if i else None, names[i + 1] if i + 1 < len(names) else None)
        html = re.sub(r"(<body[^>]*>)", lambda m, nav=nav: m.group(1) + nav,
                      _links(html, pages), count=1)
        target = out / names[i]
        atomic_write(target, lambda t, h=html: Path(t).write_text(h, encoding="utf-8"))
        written.append(target)
        if not quiet:
            print(f"  {target}  ({len(html) / 1e6:.1f} MB)")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m peftlab.site", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the static course site into OUT")
    b.add_argument("out", type=Path)
    b.add_argument("--notebooks", type=Path, default=ROOT / "notebooks",
                   help="folder of NN_*.ipynb notebooks (default: the course)")
    s = sub.add_parser("snapshot", help="store widget snapshots in notebooks, in place")
    s.add_argument("paths", nargs="+", type=Path)
    args = ap.parse_args(argv)
    if args.command == "build":
        pages = build(args.out, args.notebooks)
        print(f"wrote {len(pages)} pages to {args.out}; open {args.out / 'index.html'}")
    else:
        for path, n in snapshot(args.paths).items():
            print(f"{path}: {n} widget snapshot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

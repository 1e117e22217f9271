"""Math on the course site (peftlab.site_math): which text is math, and the course's formulas
as MathML. No site build here (tests/test_site.py builds it; tests/test_browser.py draws it)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from peftlab import site, site_math
from peftlab.site_math import Formula, MathError, formulas, markdown_to_html, to_mathml

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# formulas of the course that do not convert, and why (none at present: a new one that fails
# must be fixed in site_math.REWRITES or listed here with its reason)
KNOWN_FAILURES: dict[str, str] = {}


def course_formulas() -> list[tuple[str, int, Formula]]:
    """(notebook, cell index, formula) for every formula in the course's markdown cells."""
    found = []
    for path in site.notebook_paths(NOTEBOOKS):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "markdown":
                found += [(path.stem, i, f) for f in formulas(cell.source)]
    return found


def test_every_formula_of_the_course_converts():
    found = course_formulas()
    per_notebook = {n: sum(1 for m, _, _ in found if m == n) for n, _, _ in found}
    print(f"{len(found)} formulas, {len({f.tex for _, _, f in found})} distinct: {per_notebook}")
    assert len(found) >= 300                       # 320 when this test was written
    failed = {}
    for name, i, f in found:
        try:
            out = to_mathml(f.tex, f.display)
        except MathError as e:
            failed[f.tex] = f"{name} cell {i}: {e}"
            continue
        assert out.startswith(f'<math display="{"block" if f.display else "inline"}">'), out
        assert "\\" not in re.sub(r"<[^>]+>", "", out), f"{name} cell {i}: TeX left in {out}"
    assert set(failed) == set(KNOWN_FAILURES), failed


def test_every_dollar_of_the_course_is_math():
    """What the parser leaves as text holds no `$` outside code: no formula is missed."""
    for path in site.notebook_paths(NOTEBOOKS):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type != "markdown" or "$" not in cell.source:
                continue
            failures: list = []
            html = markdown_to_html(cell.source, failures)
            text = re.sub(r"<(code|pre)\b.*?</\1>", "", html, flags=re.DOTALL)
            assert "$" not in text.replace("\\$", ""), f"{path.stem} cell {i}: a $ left as text"
            assert not failures, (path.stem, i, failures)


@pytest.mark.parametrize("tex, element", [
    (r"\frac{\alpha}{r}\, B A", "<mfrac>"),                                    # 02
    (r"\alpha / \sqrt{r}", "<msqrt>"),                                         # 02
    (r"\underbrace{4N}_{\text{weights}}", "<munder>"),                          # 01
    (r"\lVert P^\top P - I\rVert_F^2", "&#x02016;"),                           # 05: the norm bars
    (r"\mathcal N(0, 0.02)", "&#x1D4A9;"),                                      # 05: script N
    (r"A \in \mathbb{R}^{r \times d_{in}}", "&#x0211D;"),                      # 02: double-struck R
    (r"\arg\min_k \left| w_i / c_b - q_k \right|", "<mo>arg</mo>"),              # 11
    (r"\mathrm{softmax}\!\Big(\frac{Q}{\sqrt d}\Big)", 'width="-0.1667em"'),    # 03: \! as a length
])
def test_the_course_macros_become_mathml(tex, element):
    assert element in to_mathml(tex)


def test_what_is_math_and_what_is_not():
    text = ("code `$x$` and\n\n```\n$y$\n```\n\ncosts $5 and $10, a literal \\$3, "
            "math $\\alpha$ and $$\\frac12$$ and a spaced $ x $ is text")
    assert formulas(text) == [Formula(r"\alpha", False), Formula(r"\frac12", True)]
    html = markdown_to_html(text)
    assert "<code>$x$</code>" in html and "$y$" in html
    assert "costs $5 and $10, a literal $3" in html and "spaced $ x $ is text" in html
    assert html.count("<math") == 2 and '<math display="block">' in html
    assert "xmlns" not in html                     # HTML puts <math> in MathML's namespace


def test_a_formula_that_fails_stays_as_tex_in_code():
    with pytest.raises(MathError, match=r"does not know \\foo"):
        to_mathml(r"\foo x")
    with pytest.raises(MathError):
        to_mathml(r"x^")
    failures: list = []
    html = markdown_to_html(r"before $\foo x$ after $y$", failures)
    assert '<code class="peftlab-tex"' in html and r"$\foo x$</code>" in html
    assert html.count("<math") == 1
    assert failures == [(Formula(r"\foo x", False), r"latex2mathml does not know \foo")]


def test_the_build_warns_naming_notebook_and_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 00 · Title"),
                nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_markdown_cell("Fine $a + b$, unknown $\\foo$ and\n\n"
                                              "![a diagram](workshop/missing.png)")]
    nbformat.write(nb, tmp_path / "00_demo.ipynb")
    with pytest.warns(site_math.BuildWarning) as seen:
        site.build(tmp_path / "out", notebooks=tmp_path, quiet=True)
    said = [str(w.message) for w in seen]
    assert any(r"00_demo: cell 2: $\foo$ kept as TeX" in s for s in said), said
    assert any("00_demo: image workshop/missing.png not found" in s for s in said), said
    page = (tmp_path / "out" / "00_demo.html").read_text(encoding="utf-8")
    assert page.count("<math") == 1 and 'class="peftlab-tex"' in page

"""Math on the course site: TeX in markdown cells drawn as MathML, converted at build time.

The static site (peftlab.site) works offline, so it cannot load MathJax. Browsers draw MathML
natively (Chromium since 109, Firefox, Safari), so the build converts each formula once, with
the pure-Python latex2mathml, and the page holds `<math>` elements instead of `$...$`.

    to_mathml(r"\\frac{\\alpha}{r} BA")        # -> '<math display="inline">...</math>'
    markdown_to_html(cell_source, failures)    # the cell as HTML, its math as MathML
    formulas(cell_source)                      # [Formula(tex, display)] in the order they occur

Which text is math is decided by nbconvert's markdown parser (the one the HTML exporter uses
for every markdown cell), so math is never looked for inside code spans or fenced code, and
`\\$` is a literal dollar. One rule is stricter than nbconvert's, after pandoc: an inline
formula may not start after or end before a space, may hold no unescaped `$` and no backtick
(a code span wins), and may not be followed by a digit, so "$5 and $10" stays text.

A formula latex2mathml cannot convert, or converts into MathML that still holds a TeX command
(it writes an unknown `\\foo` as `<mi>\\foo</mi>`), is kept as its TeX source in a
`<code class="peftlab-tex">` and recorded in `failures`; the site build warns with the
notebook and the cell (peftlab.site.build).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from typing import ClassVar

from nbconvert.exporters import HTMLExporter
from nbconvert.filters.markdown_mistune import (
    IPythonRenderer,
    MarkdownWithMath,
    MathInlineParser,
)

try:                                     # jinja2 >= 3.0 (the same switch nbconvert makes)
    from jinja2 import pass_context
except ImportError:                      # pragma: no cover
    from jinja2 import contextfilter as pass_context

# TeX the converter gets wrong, said its way: \arg as an operator name, and a font command
# on a single unbraced letter (\mathcal N), which latex2mathml only maps to Unicode when braced
REWRITES = [
    (re.compile(r"\\arg(?![A-Za-z])"), r"\\operatorname{arg}"),
    (re.compile(r"\\(math(?:cal|bb|bf|frak|sf|rm|it|scr))\s*([A-Za-z0-9])"), r"\\\1{\2}"),
]
# MathML's named spaces (latex2mathml writes \! as one); MathML Core only reads lengths
NAMED_SPACES = {"veryverythinmathspace": 1, "verythinmathspace": 2, "thinmathspace": 3,
                "mediummathspace": 4, "thickmathspace": 5, "verythickmathspace": 6,
                "veryverythickmathspace": 7}                       # in eighteenths of an em
LEFTOVER = re.compile(r">[^<]*?(\\[A-Za-z]+)[^<]*<")              # a TeX command not converted
BARE_AMP = re.compile(r"&(?!#?\w+;)")


class BuildWarning(UserWarning):
    """Something the site build could not draw (a formula kept as TeX, an image not found)."""


class MathError(ValueError):
    """A formula that cannot be drawn as MathML; the message says why."""


@dataclass(frozen=True)
class Formula:
    """One formula of a markdown text.

    tex: the TeX between the delimiters, as written. display: True for `$$...$$` (and
    `\\begin{...}` environments, drawn as blocks), False for inline `$...$`."""

    tex: str
    display: bool

    def source(self) -> str:
        """The formula with its delimiters, as a reader would type it."""
        return f"$${self.tex}$$" if self.display else f"${self.tex}$"


def to_mathml(tex: str, display: bool = False) -> str:
    """One formula as a `<math>` element (no xmlns: HTML puts <math> in MathML's namespace).

    tex: the TeX without its delimiters. display: a block (`$$`) rather than inline math.
    Raises MathError when latex2mathml fails, or leaves a TeX command in its output."""
    from latex2mathml.converter import convert
    fixed = tex.strip()
    for pattern, repl in REWRITES:
        fixed = pattern.sub(repl, fixed)
    try:
        out = convert(fixed, display="block" if display else "inline")
    except Exception as e:  # noqa: BLE001 (latex2mathml raises its own error per case, and
        # plain StopIteration on some malformed input, such as a lone \left)
        raise MathError(f"{type(e).__name__} {e}".strip()) from None
    left = LEFTOVER.search(out)
    if left:
        raise MathError(f"latex2mathml does not know {left.group(1)}")
    out = out.replace(' xmlns="http://www.w3.org/1998/Math/MathML"', "", 1)
    out = re.sub(r'width="(negative)?(\w+mathspace)"', lambda m: 'width="{}{:.4f}em"'.format(
        "-" if m.group(1) else "", NAMED_SPACES.get(m.group(2), 3) / 18), out)
    return BARE_AMP.sub("&amp;", out)


class CourseMathParser(MathInlineParser):
    """nbconvert's inline math parser with pandoc's rule for `$...$` (see the module doc)."""

    INLINE_MATH_TEX = (r"(?s:(?<![$\\])\$(?=[^\s$])(?P<math_inline_tex>(?:\\.|[^$\\`])+?)"
                       r"(?<!\s)\$(?![$\d]))")
    SPECIFICATION: ClassVar[dict] = {**MathInlineParser.SPECIFICATION,
                                     "inline_math_tex": INLINE_MATH_TEX}


class MathMLRenderer(IPythonRenderer):
    """nbconvert's markdown renderer, drawing each formula as MathML.

    failures: a list the renderer appends (Formula, reason) to for every formula it keeps as
    TeX; the other arguments are IPythonRenderer's (attachments, embed_images, path, ...)."""

    def __init__(self, *args, failures: list | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.failures = failures if failures is not None else []

    def _math(self, formula: Formula) -> str:
        try:
            return to_mathml(formula.tex, formula.display)
        except MathError as e:
            self.failures.append((formula, str(e)))
            return (f'<code class="peftlab-tex" title="{escape(str(e))}">'
                    f"{escape(formula.source(), quote=False)}</code>")

    def inline_math(self, body: str) -> str:
        """`$...$`: inline MathML."""
        return self._math(Formula(body, False))

    def block_math(self, body: str) -> str:
        """`$$...$$`: a block of MathML."""
        return self._math(Formula(body, True))

    def latex_environment(self, name: str, body: str) -> str:
        """`\\begin{name}...\\end{name}`: the whole environment as one block."""
        return self._math(Formula(f"\\begin{{{name}}}{body}\\end{{{name}}}", True))


class _Recorder(MathMLRenderer):
    """Lists the formulas it meets instead of converting them."""

    def _math(self, formula: Formula) -> str:
        self.failures.append(formula)
        return ""


def _render(source: str, renderer: IPythonRenderer) -> str:
    return MarkdownWithMath(renderer=renderer,
                            inline=CourseMathParser(hard_wrap=False)).render(source)


def markdown_to_html(source: str, failures: list | None = None, **renderer_options) -> str:
    """A markdown text as HTML with its math as MathML.

    failures: where to append (Formula, reason) for each formula kept as TeX. renderer_options:
    IPythonRenderer's options (anchor links, attachments, embed_images, path)."""
    return _render(source, MathMLRenderer(escape=False, failures=failures, **renderer_options))


def formulas(source: str) -> list[Formula]:
    """The formulas of a markdown text, found exactly as the site build finds them."""
    found: list = []
    _render(source, _Recorder(escape=False, failures=found))
    return found


class MathMLExporter(HTMLExporter):
    """nbconvert's HTML exporter whose markdown filter draws math as MathML.

    After each from_notebook_node, `failures` holds (cell, Formula, reason) for every formula
    kept as TeX (cleared at the start of the next); cell is the cell's index in the notebook."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.failures: list = []
        self._index: dict = {}

    def from_notebook_node(self, nb, resources=None, **kw):
        """The page for `nb`, as HTMLExporter writes it, with MathML for its math."""
        self.failures, self._index = [], {}
        for i, cell in enumerate(nb.cells):          # the exporter renders a copy: find by id
            self._index.setdefault(cell.get("id") or cell.get("source"), i)
        return super().from_notebook_node(nb, resources, **kw)

    @pass_context
    def markdown2html(self, context, source):
        """The filter the templates call on markdown (cells and text/markdown outputs)."""
        cell = context.get("cell", {})
        found: list = []
        html = markdown_to_html(
            source, found, attachments=cell.get("attachments", {}),
            embed_images=self.embed_images,
            path=context.get("resources", {}).get("metadata", {}).get("path", ""),
            anchor_link_text=self.anchor_link_text,
            exclude_anchor_links=self.exclude_anchor_links, **self.lexer_options)
        where = self._index.get(cell.get("id") or cell.get("source"))
        self.failures.extend((where, f, why) for f, why in found)
        return html

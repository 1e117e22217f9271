"""The course conventions: numbering, opening and closing sections, widgets and figures,
outputs committed, and notebooks that import peftlab instead of copying it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
EXPECTED = [
    "00_setup", "01_full_finetuning", "02_lora", "03_prefix_and_prompt_tuning",
    "04_gradient_based_selection", "05_adaptive_budget_adalora", "06_comparison", "07_vision",
    "08_bring_your_own_model",
]
METHOD_NOTEBOOKS = ["01_full_finetuning", "02_lora", "03_prefix_and_prompt_tuning",
                    "04_gradient_based_selection", "05_adaptive_budget_adalora", "07_vision"]


def notebooks() -> list[Path]:
    return sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell) -> str:
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def test_sequence_is_complete_and_numbered():
    names = [p.stem for p in notebooks()]
    assert names == EXPECTED
    for i, name in enumerate(names):
        assert name.startswith(f"{i:02d}_") and re.fullmatch(r"\d\d_[a-z0-9_]+", name)


@pytest.mark.parametrize("name", EXPECTED)
def test_opening_section(name):
    nb = load(NB_DIR / f"{name}.ipynb")
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown"
    text = source(first)
    assert text.startswith(f"# {name[:2]} · "), text[:40]
    for heading in ("**What you will learn**", "**What you need**", "**Run time**"):
        assert heading in text, f"{name}: opening lacks {heading}"
    assert re.search(r"\*\*Run time\*\*:?.*(second|minute)", text), "run time must be stated"


@pytest.mark.parametrize("name", EXPECTED)
def test_closing_sections(name):
    nb = load(NB_DIR / f"{name}.ipynb")
    markdown = [source(c) for c in nb["cells"] if c["cell_type"] == "markdown"]
    tail = "\n".join(markdown[-2:])
    assert "## Summary" in tail and "## Exercises" in tail, f"{name}: no Summary/Exercises at the end"
    exercises = tail.split("## Exercises", 1)[1]
    n = len(re.findall(r"^\d+\.", exercises, flags=re.M))
    assert 2 <= n <= 4, f"{name}: {n} exercises"


@pytest.mark.parametrize("name", EXPECTED)
def test_imports_peftlab_and_outputs_are_committed(name):
    nb = load(NB_DIR / f"{name}.ipynb")
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert any("import peftlab as pl" in source(c) for c in code)
    assert all(c.get("execution_count") is not None for c in code if source(c).strip()), \
        f"{name}: run it top to bottom and commit the outputs"
    assert any(source(c).lstrip().startswith("# NBVAL_CHECK_OUTPUT") for c in code), \
        f"{name}: mark the deterministic cells with # NBVAL_CHECK_OUTPUT"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{name}: committed outputs contain an error"


@pytest.mark.parametrize("name", METHOD_NOTEBOOKS)
def test_method_notebooks_have_a_widget_and_a_figure(name):
    nb = load(NB_DIR / f"{name}.ipynb")
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert any("pl.widgets." in source(c) for c in code), f"{name}: no live widget"
    pngs = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert pngs, f"{name}: no figure"


def _library_lines() -> set[str]:
    lines = set()
    for path in (ROOT / "peftlab").rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if len(s) > 30 and not s.startswith(("#", '"', "'", "from ", "import ", "return ")):
                lines.add(s)
    return lines


@pytest.mark.parametrize("name", EXPECTED)
def test_notebooks_import_rather_than_copy_the_library(name):
    """No run of 4 consecutive substantial library lines appears in a notebook's code."""
    lib = _library_lines()
    nb = load(NB_DIR / f"{name}.ipynb")
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        run = 0
        for line in source(cell).splitlines():
            run = run + 1 if line.strip() in lib else 0
            assert run < 4, f"{name}: a code cell copies peftlab source; import it instead"


def test_course_map_lists_every_notebook_and_readme_links_it():
    course = (NB_DIR / "README.md").read_text()
    for name in EXPECTED:
        assert f"{name}.ipynb" in course, name
    assert "notebooks/README.md" in (ROOT / "README.md").read_text()

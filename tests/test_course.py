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
    "08_bring_your_own_model", "09_deploy_and_monitor", "10_chat_finetuning", "11_qlora",
    "12_peft_family", "13_choosing_settings", "14_serve_chat",
]
METHOD_NOTEBOOKS = ["01_full_finetuning", "02_lora", "03_prefix_and_prompt_tuning",
                    "04_gradient_based_selection", "05_adaptive_budget_adalora", "07_vision",
                    "10_chat_finetuning", "11_qlora", "12_peft_family", "13_choosing_settings",
                    "14_serve_chat"]


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


# --- second edition: answers, self-check, glossary, references, workshop kit -------------------

MINE = ["02_lora", "03_prefix_and_prompt_tuning", "04_gradient_based_selection",
        "05_adaptive_budget_adalora", "07_vision", "08_bring_your_own_model",
        "09_deploy_and_monitor", "10_chat_finetuning", "11_qlora", "12_peft_family",
        "13_choosing_settings", "14_serve_chat"]
WIDGET_WORDS = ("widget", "Explorer", "Viewer", "Inspector")


def _exercises(name: str) -> str:
    nb = load(NB_DIR / f"{name}.ipynb")
    markdown = [source(c) for c in nb["cells"] if c["cell_type"] == "markdown"]
    return "\n".join(markdown[-2:]).split("## Exercises", 1)[1]


@pytest.mark.parametrize("name", EXPECTED)
def test_every_exercise_has_a_written_answer(name):
    answers = (NB_DIR / "solutions" / f"{name}.md").read_text(encoding="utf-8")
    numbers = [int(n) for n in re.findall(r"^(\d+)\.", _exercises(name), flags=re.M)]
    for n in numbers:
        assert re.search(rf"^\*\*{n}\.", answers, flags=re.M), f"{name}: no answer to exercise {n}"


@pytest.mark.parametrize("name", ["02_lora", "03_prefix_and_prompt_tuning",
                                  "04_gradient_based_selection", "05_adaptive_budget_adalora",
                                  "07_vision", "10_chat_finetuning", "11_qlora",
                                  "12_peft_family", "13_choosing_settings",
                                  "14_serve_chat"])
def test_method_notebooks_have_an_exercise_that_needs_its_widget(name):
    items = re.split(r"^\d+\.", _exercises(name), flags=re.M)[1:]
    assert any(any(w in item for w in WIDGET_WORDS) for item in items), name


def test_every_checker_is_used_by_an_exercise():
    from peftlab import exercises
    text = "\n".join(_exercises(n) for n in EXPECTED)
    for name in exercises.CHECKERS:
        assert name in text, f"no exercise asks for {name}"


def test_self_check_questions_and_answers_match():
    questions = (NB_DIR / "SELF_CHECK.md").read_text(encoding="utf-8")
    answers = (NB_DIR / "solutions" / "self_check_answers.md").read_text(encoding="utf-8")

    def sections(text):
        parts = re.split(r"^## ", text, flags=re.M)[1:]
        return {p.splitlines()[0].strip(): len(re.findall(r"^\d+\.", p, flags=re.M)) for p in parts}
    q, a = sections(questions), sections(answers)
    assert set(q) == set(a) and len(q) == len(EXPECTED)
    for title, n in q.items():
        assert 3 <= n <= 5 and a[title] == n, title


def test_glossary_and_references():
    glossary = (NB_DIR / "GLOSSARY.md").read_text(encoding="utf-8").lower()
    for term in ("pooler", "kv cache", "empirical fisher", "intrinsic rank", "triplet",
                 "sensitivity", "training state", "held-out test"):
        assert f"**{term}" in glossary, term
    refs = (NB_DIR / "REFERENCES.md").read_text(encoding="utf-8")
    for arxiv in ("2106.09685", "2312.03732", "2104.08691", "2101.00190", "2303.08566",
                  "2303.10512", "2111.09839", "2312.10136"):
        assert f"https://arxiv.org/abs/{arxiv}" in refs, arxiv


def test_workshop_kit():
    kit = NB_DIR / "workshop"
    for agenda in ("AGENDA_3H.md", "AGENDA_1DAY.md"):
        text = (kit / agenda).read_text(encoding="utf-8")
        assert "Skip if short" in text and "peftlab.handout" in (kit / "README.md").read_text()
        for name in re.findall(r"`(\d\d_[a-z_]+)\.ipynb`", text):
            assert name in EXPECTED, f"{agenda} names a notebook that does not exist: {name}"
    trouble = (kit / "TROUBLESHOOTING.md").read_text(encoding="utf-8")
    for topic in ("VS Code", "Classic Notebook", "thread", "wheelhouse", "saveState"):
        assert topic in trouble, topic
    for png in ("lora.png", "prefix_prompt.png", "adalora_triplets.png", "qlora.png",
                "adapters_ia3.png"):
        assert (kit / "diagrams" / png).read_bytes()[:4] == b"\x89PNG", png


def test_diagram_script_draws_every_committed_diagram(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_diagrams",
                                                  NB_DIR / "workshop" / "make_diagrams.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    written = {p.name for p in mod.main(tmp_path)}
    assert written == {p.name for p in (NB_DIR / "workshop" / "diagrams").glob("*.png")}


@pytest.mark.parametrize("name", MINE)
def test_no_noise_in_stored_outputs(name):
    nb = load(NB_DIR / f"{name}.ipynb")
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        assert "warnings.filterwarnings(" not in source(cell), \
            f"{name}: a global filterwarnings outlives its cell; use warnings.catch_warnings()"
        for out in cell.get("outputs", []):
            text = json.dumps(out.get("text", "")) + json.dumps(out.get("data", {}).get("text/plain", ""))
            for noise in ("Writing model shards", "<torch._C.Generator", "0%|"):
                assert noise not in text, f"{name}: stored output has {noise!r}"


@pytest.mark.parametrize("name", MINE)
def test_header_run_time_matches_the_course_map(name):
    """The run time in a notebook's header and in notebooks/README.md are the same measurement."""
    header = source(load(NB_DIR / f"{name}.ipynb")["cells"][0])
    said = re.search(r"\*\*Run time\*\*:[^0-9]*([\d.]+) (seconds|minutes?)", header)
    assert said, f"{name}: the header states no run time as 'N seconds' or 'N minutes'"
    row = next(line for line in (NB_DIR / "README.md").read_text().splitlines()
               if f"({name}.ipynb)" in line)
    unit = "s" if said.group(2) == "seconds" else "min"
    assert f"| {said.group(1)} {unit} |" in row, f"{name}: header says {said.group(0)!r}, map: {row}"


def test_fixed_errors_stay_fixed():
    text = {n: "\n".join(source(c) for c in load(NB_DIR / f"{n}.ipynb")["cells"]) for n in MINE}
    assert "roughly independent of $r$" not in text["02_lora"]
    assert "only act through the first layer" not in text["03_prefix_and_prompt_tuning"]
    assert "| SPT (He et al., ICCV 2023) | sensitivity |" not in text["04_gradient_based_selection"]
    assert "Zhang et al." in text["05_adaptive_budget_adalora"]
    assert "the paper" not in text["05_adaptive_budget_adalora"].lower()
    assert "every method of the course works on a torchvision CNN" not in text["07_vision"]
    assert "weights + gradients + optimizer state.\n" not in text["08_bring_your_own_model"]
    assert "activations" in text["08_bring_your_own_model"]


def test_course_fits_its_time_budget():
    """The measured run times in the course map: each notebook under 3 minutes, the whole course
    under 20, and the total the README states is their sum."""
    readme = (NB_DIR / "README.md").read_text()
    secs = {}
    for line in readme.splitlines():
        hit = re.search(r"\((\d\d_\w+)\.ipynb\).*\| ([\d.]+) (s|min) \|$", line)
        if hit:
            secs[hit.group(1)] = float(hit.group(2)) * (60 if hit.group(3) == "min" else 1)
    every = sorted(p.stem for p in NB_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert sorted(secs) == every, sorted(set(every) ^ set(secs))
    slow = {n: s for n, s in secs.items() if s >= 180}
    assert not slow, f"notebooks over 3 minutes: {slow}"
    total = sum(secs.values()) / 60
    assert total < 20, f"the course takes {total:.1f} minutes"
    said = re.search(r"\*\*Whole course: about (\d+) minutes\.\*\*", readme)
    assert said and int(said.group(1)) == round(total), (said and said.group(0), total)

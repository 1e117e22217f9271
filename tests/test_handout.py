"""python -m peftlab.handout writes clean copies: every notebook, no outputs, no solutions."""

import json
import re
import sys
from pathlib import Path

import pytest
import timing

from peftlab.handout import DEFAULT_SOURCE, clean_notebook, main, write_handout

ROOT = Path(__file__).resolve().parent.parent


def _nb(cells, **meta):
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": dict(meta), "cells": cells}


def _code(src, outputs=(), count=1, tags=()):
    return {"cell_type": "code", "id": src[:8] or "x", "source": src, "execution_count": count,
            "metadata": {"tags": list(tags), "execution": {"iopub.status.busy": "t"}},
            "outputs": list(outputs)}


def test_the_course_copy_is_clean(tmp_path):
    out = tmp_path / "handout"
    written = write_handout(out)
    originals = sorted(p.name for p in DEFAULT_SOURCE.glob("[0-9][0-9]_*.ipynb"))
    assert originals and sorted(p.name for p in out.glob("*.ipynb")) == originals
    assert not (out / "solutions").exists()
    assert not any("solution" in str(p).lower() for p in written)
    assert not (out / "conftest.py").exists() and not (out / "sanitize.cfg").exists()
    assert (out / "README.md").exists()
    nbformat = pytest.importorskip("nbformat")
    for name in originals:
        clean = json.loads((out / name).read_text(encoding="utf-8"))
        orig = json.loads((DEFAULT_SOURCE / name).read_text(encoding="utf-8"))
        nbformat.validate(nbformat.from_dict(clean))
        assert "widgets" not in clean["metadata"]
        code = [c for c in clean["cells"] if c["cell_type"] == "code"]
        assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
        # the teaching content is untouched: same cells, same sources, in order
        assert [c["source"] for c in clean["cells"]] == [c["source"] for c in orig["cells"]]


def test_the_copy_holds_what_the_notebooks_read_beside_them(tmp_path):
    """Every committed report a code cell names ("results/...") and every image a markdown
    cell shows (![...](workshop/diagrams/...)) is in the copy, at the same relative path."""
    out = tmp_path / "handout"
    write_handout(out)
    needed = set()
    for path in sorted(DEFAULT_SOURCE.glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            text = "".join(cell["source"])
            if cell["cell_type"] == "code":
                needed |= {(path.name, m) for m in re.findall(r"[\"'](results/[\w./-]+)[\"']", text)}
            else:
                needed |= {(path.name, m) for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)}
    assert {"results/compare_default", "results/compare_chat"} <= {m for _, m in needed}
    assert sum(1 for _, m in needed if m.startswith("workshop/diagrams/")) >= 4
    missing = sorted(f"{nb}: {m}" for nb, m in needed if not (out / m).exists())
    assert not missing, f"the hand-out lacks what its notebooks read: {missing}"


def test_solution_cells_and_run_metadata_are_removed():
    nb = _nb([_code("x = 1", outputs=[{"output_type": "stream", "name": "stdout", "text": "1"}]),
              _code("answer = 42", tags=["solution"]),
              {"cell_type": "markdown", "id": "m", "metadata": {}, "source": "# hi"}],
             widgets={"application/vnd.jupyter.widget-state+json": {}})
    clean = clean_notebook(nb)
    assert [c["source"] for c in clean["cells"]] == ["x = 1", "# hi"]
    assert clean["cells"][0]["outputs"] == [] and clean["cells"][0]["execution_count"] is None
    assert "execution" not in clean["cells"][0]["metadata"]
    assert "widgets" not in clean["metadata"]
    assert nb["cells"][0]["outputs"] and "widgets" in nb["metadata"]      # input untouched


def test_refuses_bad_folders_before_writing(tmp_path):
    src = tmp_path / "course"
    src.mkdir()
    (src / "01_a.ipynb").write_text(json.dumps(_nb([_code("1")])))
    (src / "solutions").mkdir()
    (src / "solutions" / "answers.md").write_text("42")
    with pytest.raises(ValueError, match="inside the course folder"):
        write_handout(src / "out", source=src)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        write_handout(tmp_path / "o", source=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .ipynb"):
        write_handout(tmp_path / "o", source=tmp_path / "empty")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_handout(full, source=src)
    assert (full / "keep.txt").read_text() == "mine"                      # nothing changed
    (src / "02_bad.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match="02_bad.ipynb"):
        write_handout(tmp_path / "new", source=src)
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new.")]   # no temp left
    (src / "02_bad.ipynb").unlink()
    written = write_handout(full, source=src, overwrite=True)
    assert written == [Path("01_a.ipynb")] and not (full / "keep.txt").exists()


def test_command_line(tmp_path, capsys):
    assert main([str(tmp_path / "h"), "--source", str(DEFAULT_SOURCE)]) == 0
    assert "notebooks" in capsys.readouterr().out
    assert main([str(tmp_path / "h")]) == 2                                # exists, not empty
    assert "--overwrite" in capsys.readouterr().err
    run = timing.run([sys.executable, "-m", "peftlab.handout", "--help"],
                     "peftlab.handout --help", 60, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "OUT_DIR" in run.stdout.upper()

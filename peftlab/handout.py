"""Clean hand-out copies of the course: notebooks without outputs, no solutions.

    python -m peftlab.handout OUT_DIR                 # from the repository's notebooks/
    python -m peftlab.handout OUT_DIR --source path/to/notebooks --overwrite

    from peftlab.handout import write_handout
    write_handout("handout/")                          # -> the list of files written

What the copy holds: every notebook with its code and prose, and with its outputs, execution
counts, stored widget state and run metadata removed (a learner runs it and sees their own
results); the course pages (README, glossary, references, self-check questions), the workshop
kit with the diagrams the notebooks show, and the committed reports in results/ that the
notebooks read (compare_default; compare_chat for notebook 10). What it leaves out: the
answer key (`solutions/`, and any file or cell tagged as a solution), the nbval test
configuration (conftest.py, sanitize.cfg) and editor caches.

The copy is built in a temporary folder beside OUT_DIR and moved into place at the end, so
an interrupted run never leaves a half-written hand-out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

DEFAULT_SOURCE = Path(__file__).resolve().parent.parent / "notebooks"
SKIP_NAMES = {"solutions", "conftest.py", "sanitize.cfg", ".ipynb_checkpoints", "__pycache__",
              ".pytest_cache"}
SOLUTION_TAGS = {"solution", "solutions", "answer", "remove-cell", "remove_cell"}
RUN_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def _is_solution_file(path: Path) -> bool:
    return "solution" in path.name.lower() or "answer" in path.name.lower()


def _skipped(rel: Path) -> bool:
    return any(part in SKIP_NAMES for part in rel.parts) or _is_solution_file(rel)


def clean_notebook(nb: dict) -> dict:
    """The notebook with outputs, execution counts, widget state and solution cells removed.

    nb: a notebook as parsed JSON (nbformat 4); a new dict is returned, nb is not changed."""
    if not isinstance(nb, dict) or nb.get("nbformat") != 4 or "cells" not in nb:
        raise ValueError("not an nbformat-4 notebook (no 'cells' or nbformat != 4); "
                         "open and re-save it with Jupyter to upgrade it.")
    out = json.loads(json.dumps(nb))                       # a deep copy of plain JSON
    out.get("metadata", {}).pop("widgets", None)           # stored widget state
    cells = []
    for cell in out["cells"]:
        meta = cell.get("metadata", {})
        if SOLUTION_TAGS & set(meta.get("tags", [])):
            continue
        for key in RUN_METADATA:
            meta.pop(key, None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cells.append(cell)
    out["cells"] = cells
    return out


def _dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"     # Jupyter's own layout


def _check_paths(source: Path, out: Path, overwrite: bool) -> None:
    if not source.is_dir():
        raise FileNotFoundError(f"source {source} is not a folder: pass --source pointing at "
                                f"the course's notebooks/ folder.")
    if not any(source.glob("*.ipynb")):
        raise FileNotFoundError(f"source {source} holds no .ipynb notebook: pass --source "
                                f"pointing at the course's notebooks/ folder.")
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise ValueError(f"OUT_DIR {out} is inside the course folder {source}: choose a "
                         f"folder outside it (the copy would copy itself).")
    if dst in src.parents:
        raise ValueError(f"OUT_DIR {out} contains the course folder {source}: replacing it "
                         f"would delete the course; choose another folder.")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"OUT_DIR {out} is a file: choose a folder name.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"OUT_DIR {out} exists and is not empty: pass --overwrite "
                              f"(overwrite=True) to replace it, or choose a new folder.")


def write_handout(out_dir, source=None, overwrite: bool = False) -> list[Path]:
    """Write the hand-out copy of the course `source` (default: the repository's notebooks/)
    to `out_dir`; return the files written, relative to out_dir. Checks everything first."""
    source = Path(source) if source is not None else DEFAULT_SOURCE
    out = Path(out_dir)
    _check_paths(source, out, overwrite)
    notebooks = {}
    for path in sorted(source.rglob("*.ipynb")):           # parse all first: fail before writing
        rel = path.relative_to(source)
        if _skipped(rel):
            continue
        try:
            notebooks[rel] = clean_notebook(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    written = []
    try:
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source)
            if path.is_dir() or _skipped(rel):
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel in notebooks:
                target.write_text(_dump(notebooks[rel]), encoding="utf-8")
            elif path.suffix != ".ipynb":
                shutil.copy2(path, target)
            else:
                continue
            written.append(rel)
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m peftlab.handout",
        description="Write clean hand-out copies of the course: notebooks without outputs, "
                    "without solutions.",
        epilog="example: python -m peftlab.handout ~/handout   (then zip it or copy it to a "
               "USB stick)")
    parser.add_argument("out_dir", help="folder to write (new or empty; see --overwrite)")
    parser.add_argument("--source", default=None,
                        help=f"the course's notebooks folder (default: {DEFAULT_SOURCE})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT_DIR if it exists and is not empty")
    args = parser.parse_args(argv)
    try:
        written = write_handout(args.out_dir, args.source, args.overwrite)
    except (OSError, ValueError) as e:
        print(f"peftlab.handout: error: {e}", file=sys.stderr)
        return 2
    n_nb = sum(1 for p in written if p.suffix == ".ipynb")
    print(f"wrote {len(written)} files ({n_nb} notebooks, outputs and solutions stripped) "
          f"to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

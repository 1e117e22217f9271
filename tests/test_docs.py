"""help() on every public name shows a real docstring: the public API (peftlab.__all__, each
subpackage's and each method package's __all__) is walked, and every function, class and
module must explain itself; every config dataclass explains each of its fields."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pydoc

import pytest

import peftlab as pl

METHOD_PACKAGES = tuple(pl.core.registry.names())        # every registered method


def public_api() -> dict[str, object]:
    """{dotted name: object} for everything reachable through __all__ from peftlab."""
    found, seen = {}, set()

    def walk(prefix: str, module) -> None:
        if module.__name__ in seen:
            return
        seen.add(module.__name__)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not (inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj)):
                continue                              # constants: a docstring is impossible
            found[f"{prefix}.{name}"] = obj
            if inspect.ismodule(obj) and obj.__name__.startswith("peftlab"):
                walk(obj.__name__, obj)

    walk("peftlab", pl)
    for m in METHOD_PACKAGES:
        walk(f"peftlab.{m}", importlib.import_module(f"peftlab.{m}"))
    return found


API = public_api()


def real_docstring(obj) -> bool:
    doc = obj.__doc__
    if not doc or len(doc.strip()) < 10:
        return False
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):
            return False                              # the signature dataclass writes itself
        if any(base.__doc__ == doc for base in obj.__mro__[1:]):
            return False                              # inherited, says nothing of this class
    return True


def test_the_walk_sees_the_whole_api():
    assert len(API) > 150
    for name in ("peftlab.predict", "peftlab.lora.LoraConfig", "peftlab.data.load_dataset",
                 "peftlab.train.fit", "peftlab.adalora.AdaLoraConfig", "peftlab.cli"):
        assert name in API, name


@pytest.mark.parametrize("name", sorted(API))
def test_every_public_name_has_a_real_docstring(name):
    obj = API[name]
    assert real_docstring(obj), f"{name} has no docstring of its own"
    first = inspect.getdoc(obj).strip().splitlines()[0]
    assert first in pydoc.render_doc(obj, renderer=pydoc.plaintext)   # what help() prints


CONFIGS = sorted({n: o for n, o in API.items() if inspect.isclass(o)
                  and dataclasses.is_dataclass(o)}.items())


@pytest.mark.parametrize("name, cls", CONFIGS, ids=[n for n, _ in CONFIGS])
def test_every_dataclass_field_is_explained(name, cls):
    missing = [f.name for f in dataclasses.fields(cls)
               if not f.name.startswith("_") and f.name not in cls.__doc__]
    assert not missing, f"{name}'s docstring does not explain {missing}"


def test_the_checker_catches_what_it_should():
    @dataclasses.dataclass
    class Bare:
        x: int = 1

    class Child(pl.train.CheckpointError):
        pass

    def nothing():
        pass

    assert not real_docstring(Bare) and not real_docstring(nothing)
    assert not real_docstring(Child) and real_docstring(pl.lora.LoraConfig)


def test_the_readme_shows_the_committed_default_report_as_it_is():
    """The README's default-report table is the committed report's own table (its first part:
    rows, footnotes, budget and lr lines), so a changed report or wording cannot drift."""
    from pathlib import Path

    from peftlab.compare.report import Report
    root = Path(__file__).resolve().parents[1]
    table = Report.load(root / "notebooks/results/compare_default").table()
    text = (root / "README.md").read_text(encoding="utf-8")
    start = text.index("method       trainable")
    shown = text[start:text.index("```", start)].rstrip("\n")
    assert table.startswith(shown + "\n\n"), "README's compare block differs from report.json"

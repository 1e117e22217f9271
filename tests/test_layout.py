"""The shape of the library: the import graph is a tree, every method package has the same
shape with its math in one standalone file, and no file is too long to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from peftlab.core import registry

ROOT = Path(__file__).resolve().parents[1] / "peftlab"
# every in-tree method package, from the registry (a new package is checked without an edit)
METHODS = tuple(n for n in registry.names() if (ROOT / n / "spec.py").is_file())
MAX_LINES = 350


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str) -> str:
    """The module a dotted import name lands in: the longest prefix that is a module."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str) -> set[str]:
    """peftlab modules `module` imports, at the top and inside functions alike. Importing
    peftlab.a.b also runs peftlab.a's __init__, so that counts as an edge too (the root
    package peftlab/__init__.py, the facade, is left out of those implied edges, and so are
    the importer's own packages: they are initialised before any module inside them runs)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in names:
            if name == "peftlab" or name.startswith("peftlab."):
                target = _resolve(name)
                parts = target.split(".")
                found.add(target)
                found.update(".".join(parts[:i]) for i in range(2, len(parts))
                             if not module.startswith(".".join(parts[:i]) + "."))
    found.discard(module)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def test_import_graph_has_no_cycle():
    graph = {m: imports_of(m) for m in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_are_counted():
    # peftlab.models.vision imports the training loop inside pretrain()
    assert "peftlab.train" in imports_of("peftlab.models.vision")


def test_core_imports_nothing_above_it():
    for module in (m for m in MODULES if m.startswith("peftlab.core")):
        above = {i for i in imports_of(module) if not i.startswith("peftlab.core")}
        assert not above, f"{module} imports {sorted(above)}"


@pytest.mark.parametrize("method", METHODS)
def test_method_package_shape(method):
    """<method>/<method>.py holds the math and needs nothing else of its package but the
    pieces of math beside it (LoRA's fused.py, routing.py, variants.py), which like it need
    only peftlab.core; surgery.py and format.py sit on top of it."""
    folder = ROOT / method
    assert {"__init__.py", f"{method}.py", "surgery.py", "format.py"} <= \
        {p.name for p in folder.glob("*.py")}
    package = f"peftlab.{method}"
    reach, todo = set(), [f"{package}.{method}"]
    while todo:                                   # everything the math file needs, transitively
        for i in imports_of(todo.pop()) - reach:
            reach.add(i)
            if i.startswith(package + "."):
                todo.append(i)
    beside = {i for i in reach if i.startswith(package + ".")}
    assert not beside & {f"{package}.surgery", f"{package}.format"}, beside
    math_imports = reach - beside
    assert all(i.startswith("peftlab.core") for i in math_imports), math_imports


def test_no_library_file_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_math_is_what_the_wiring_and_exercises_call():
    import peftlab as pl
    from peftlab.prefix import wiring

    assert pl.exercises.prefix_attention is pl.prefix.prefix_attention
    assert wiring.prefix_attention is pl.prefix.prefix_attention
    from peftlab.prompt import hooks
    assert hooks.insert_prompt is pl.prompt.insert_prompt

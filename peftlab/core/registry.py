"""The method registry and the two per-step hooks every training loop calls.

Every method package declares itself once, in `<package>/spec.py` (a MethodSpec, see
core/methodspec.py). The registry finds them without importing any method's code:

    in tree       a scan of peftlab/*/spec.py (each file loaded on its own; its package is
                  imported only when the method is used)
    out of tree   the entry-point group "peftlab.methods" of installed distributions, e.g. in
                  a plugin's pyproject.toml:  [project.entry-points."peftlab.methods"]
                                              toy = "toy_method.spec:SPEC"

A method package's __init__ exposes:

    apply(model, config, **kw) -> model          required
    unload(model, merge=False) -> model          required; merge=False gives the base back
    adapter_state_dict(model) -> {name: tensor}  optional; default: the trainable parameters
    load_adapter_state(model, tensors)           optional; default: shape-checked copy
    prepare_load(model, config, tensors)         optional; default: apply(model, config)
    after_step(model, step)                      optional; default: nothing
    check_total_steps(model, steps)              optional; raise if a run of `steps` steps
                                                 cannot work (AdaLoRA's schedule)
    regularization(model) -> scalar tensor       optional; default: 0
    to_hf_peft(model) / from_hf_peft(cfg, tensors)   optional (Hugging Face PEFT format)

and its config dataclass (MethodSpec.config) with a class attribute `method = "<name>"`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from peftlab.core.methodspec import CompareEntry, MethodSpec, TrainEntry
from peftlab.core.state import get_method

GROUP = "peftlab.methods"
_ROOT = Path(__file__).resolve().parents[1]          # the peftlab package folder

# the registry itself: {name: MethodSpec}, filled on first use (refresh() scans again)
_SPECS: dict[str, MethodSpec] = {}


def _load_spec_file(path: Path) -> MethodSpec:
    """SPEC of peftlab/<package>/spec.py, loaded as module peftlab.<package>.spec without
    running the package's __init__ (which imports the method's code)."""
    name = f"peftlab.{path.parent.name}.spec"
    module = sys.modules.get(name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"{path} must define SPEC = MethodSpec(...) (peftlab/core/methodspec.py).")
    return spec


def _plugins() -> list[tuple[str, MethodSpec]]:
    """(distribution, MethodSpec) of every installed entry point in the group; one that fails
    to load is skipped with a warning naming it (a broken plugin never breaks peftlab)."""
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group=GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value
        try:
            spec = ep.load()
        except Exception as e:                       # noqa: BLE001 - reported, then skipped
            warnings.warn(f"peftlab method plugin {ep.name!r} ({dist}) failed to load and is "
                          f"skipped: {type(e).__name__}: {e}", stacklevel=3)
            continue
        if not isinstance(spec, MethodSpec):
            warnings.warn(f"peftlab method plugin {ep.name!r} ({dist}) points at "
                          f"{type(spec).__name__}, not a peftlab MethodSpec; skipped.",
                          stacklevel=3)
            continue
        out.append((dist, spec))
    return out


def refresh() -> dict[str, MethodSpec]:
    """Scan again: the in-tree spec files, then the installed plugins (an in-tree name wins
    over a plugin of the same name, with a warning). Returns {name: MethodSpec}."""
    found: dict[str, MethodSpec] = {}
    for path in sorted(_ROOT.glob("*/spec.py")):
        spec = _load_spec_file(path)
        found[spec.name] = spec
    for dist, spec in _plugins():
        if spec.name in found:
            warnings.warn(f"peftlab method plugin {spec.name!r} from {dist} has the name of "
                          f"a method peftlab already has; skipped (rename the plugin).",
                          stacklevel=2)
            continue
        found[spec.name] = spec
    _SPECS.clear()
    _SPECS.update(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))
    return dict(_SPECS)


def specs() -> dict[str, MethodSpec]:
    """{name: MethodSpec} of every method, in listing order (scanned on first use)."""
    if not _SPECS:
        refresh()
    return dict(_SPECS)


def names() -> list[str]:
    """Every method's name, in listing order."""
    return list(specs())


def spec(name: str) -> MethodSpec:
    """The MethodSpec of method `name`; ValueError naming the known ones otherwise."""
    known = specs()
    if name not in known:
        raise ValueError(f"Unknown peftlab method {name!r}; known: {', '.join(known)}.")
    return known[name]


def method_module(name: str):
    """The package of method `name`, imported on first use (a plugin lookup by name: the
    layers below the methods never import a method package statically)."""
    return importlib.import_module(spec(name).module)


def train_entries() -> dict[str, tuple[MethodSpec, TrainEntry]]:
    """{`peftlab train --method` name: (its MethodSpec, its TrainEntry)}, in listing order."""
    return {e.name: (s, e) for s in specs().values() for e in s.train}


def compare_entries(task: str) -> dict[str, tuple[MethodSpec, CompareEntry]]:
    """{`peftlab compare --methods` name: (MethodSpec, CompareEntry)} for `task`, in order."""
    return {e.name: (s, e) for s in specs().values() for e in s.compare if e.task == task}


def by_hf_peft_type(peft_type: str) -> MethodSpec | None:
    """The method whose Hugging Face PEFT counterpart is `peft_type` ("LORA", ...), or None."""
    return next((s for s in specs().values() if s.hf_peft_type == peft_type), None)


def cannot_merge(name: str) -> str:
    """The one message for a method that cannot merge (its spec's cannot_merge): what
    export_merged and unload(merge=True) raise."""
    s = spec(name)
    return (f"A {name!r} adapter cannot be merged into the base weights ({s.cannot_merge}), "
            f"so there is no plain model to make; keep it as an adapter (pl.save_adapter) and "
            f"take it out with pl.{name}.unload(model).")


# --- the per-step hooks -----------------------------------------------------------------------

def after_step(model: nn.Module, step: int) -> None:
    """Call once per step after optimizer.step(), before zero_grad(); a no-op where unused.

    AdaLoRA uses it to score importance from the step's gradients and re-allocate ranks; the
    other methods need nothing per step (selection's SparseDelta keeps unselected entries at
    their base values by construction).
    """
    name = get_method(model)
    if name is None:
        return
    hook = getattr(method_module(name), "after_step", None)
    if hook is not None:
        hook(model, step)


def check_total_steps(model: nn.Module, steps: int) -> None:
    """Raise ValueError before training if the model's method cannot work with a run of
    `steps` optimizer steps (AdaLoRA: its schedule must reach the final budget)."""
    name = get_method(model)
    hook = getattr(method_module(name), "check_total_steps", None) if name else None
    if hook is not None:
        hook(model, steps)


def regularization(model: nn.Module) -> torch.Tensor:
    """Extra loss term of the model's method (AdaLoRA's orthogonality penalty); 0 elsewhere."""
    name = get_method(model)
    hook = getattr(method_module(name), "regularization", None) if name else None
    if hook is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else "cpu")
    return hook(model)

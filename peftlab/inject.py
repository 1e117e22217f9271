"""Find the modules a method adapts, swap them for wrappers, freeze the rest.

Shared by every method. Target matching rules (one list may mix them):

  "query"                 exact module name, or a name suffix at a dot boundary:
                          matches "bert.encoder.layer.0.attention.self.query"
  "re:.*layer\\.[0-2]\\..*query"  a regular expression, matched against the full name
  re.compile(...)         the same, precompiled
  nn.Conv2d               a module type: every module of that type
  "all-linear"            every nn.Linear (and GPT-2's Conv1D) except the output head

A target that matches nothing raises before anything changes and lists what exists.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from torch import nn

# last name components that mark a classification / LM output head
HEAD_NAMES = ("classifier", "score", "lm_head", "fc", "head", "heads", "qa_outputs")

Target = "str | type | re.Pattern"


class TargetError(ValueError):
    """A target spec matched nothing, or matched a module a method cannot wrap."""


class AlreadyAdaptedError(RuntimeError):
    """The model (or a module in it) already carries a peftlab method."""


class AdapterLayer(nn.Module):
    """Marker base class for every peftlab wrapper around a base layer (`self.base_layer`)."""

    method = "adapter"


def _as_list(targets) -> list:
    if targets is None:
        return []
    if isinstance(targets, (str, type, re.Pattern)):
        return [targets]
    return list(targets)


def is_head(name: str, model: nn.Module | None = None) -> bool:
    """True for the output head: a module named like HEAD_NAMES, or the model's output embeddings."""
    last = name.rsplit(".", 1)[-1]
    parts = name.split(".")
    if last in HEAD_NAMES or (len(parts) >= 2 and parts[-2] in HEAD_NAMES):
        return True
    if model is not None and hasattr(model, "get_output_embeddings"):
        try:
            out = model.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            out = None
        if out is not None and dict(model.named_modules()).get(name) is out:
            return True
    return False


def _linear_types() -> tuple[type, ...]:
    """nn.Linear, plus transformers' Conv1D (GPT-2's linear layers, weight stored transposed)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def _matches(name: str, module: nn.Module, spec, model: nn.Module) -> bool:
    if isinstance(spec, type):
        return isinstance(module, spec)
    if isinstance(spec, re.Pattern):
        return spec.fullmatch(name) is not None
    if not isinstance(spec, str):
        raise TargetError(f"Target {spec!r} is neither a name, a 're:' pattern, a compiled "
                          f"regex, a module type nor 'all-linear'.")
    if spec == "all-linear":
        return isinstance(module, _linear_types()) and not is_head(name, model)
    if spec.startswith("re:"):
        try:
            return re.fullmatch(spec[3:], name) is not None
        except re.error as e:
            raise TargetError(f"Target {spec!r} is not a valid regular expression: {e}.") from e
    return name == spec or name.endswith("." + spec)


def describe_modules(model: nn.Module, limit: int = 12) -> str:
    """A short listing of what a model contains: suffix names with counts, and types."""
    names = [n for n, _ in model.named_modules() if n]
    suffixes = Counter(n.rsplit(".", 1)[-1] for n in names)
    types = Counter(type(m).__name__ for n, m in model.named_modules() if n)
    common = ", ".join(f"{s} (x{c})" if c > 1 else s for s, c in suffixes.most_common(limit))
    more = f", ... {len(suffixes) - limit} more" if len(suffixes) > limit else ""
    tys = ", ".join(f"{t} (x{c})" for t, c in types.most_common(8))
    return f"module names end in: {common}{more}; module types: {tys}"


def find_targets(model: nn.Module, targets, allowed: tuple[type, ...] = (nn.Module,),
                 method: str = "this method") -> list[str]:
    """Full names of the modules matched by `targets`, in model order.

    Raises TargetError (changing nothing) if a spec matches nothing, or matches a module whose
    type the method cannot wrap (`allowed`), or if the model's modules are already adapted.
    """
    specs = _as_list(targets)
    if not specs:
        raise TargetError(f"{method} needs at least one target; {describe_modules(model)}.")
    named = [(n, m) for n, m in model.named_modules() if n]
    chosen: list[str] = []
    for spec in specs:
        hits = [n for n, m in named if _matches(n, m, spec, model)
                and not any(n.startswith(c + ".") for c in chosen)]
        # a wrapper's own children (base_layer, lora_A ...) are never targets themselves
        hits = [n for n in hits if ".base_layer" not in n and ".lora_" not in n]
        if not hits:
            raise TargetError(f"Target {spec!r} matched no module of {type(model).__name__}; "
                              f"{describe_modules(model)}.")
        chosen.extend(h for h in hits if h not in chosen)
    modules = dict(named)
    adapted = [n for n in chosen if isinstance(modules[n], AdapterLayer)]
    if adapted:
        raise AlreadyAdaptedError(
            f"{adapted[0]} is already wrapped by a peftlab {modules[adapted[0]].method} layer; "
            f"a module takes one adapter. Start from a fresh base model.")
    bad = [n for n in chosen if not isinstance(modules[n], allowed)]
    if bad:
        kinds = ", ".join(t.__name__ for t in allowed)
        raise TargetError(f"{method} can wrap {kinds} modules, but target {bad[0]} is a "
                          f"{type(modules[bad[0]]).__name__}. Pick narrower targets "
                          f"(e.g. a suffix like 'query', or a type).")
    order = {n: i for i, (n, _) in enumerate(named)}
    return sorted(chosen, key=order.__getitem__)


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` where the module `name` was; return the old one."""
    parent, child = get_submodule_parent(model, name)
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def freeze(model: nn.Module) -> None:
    """requires_grad = False on every parameter."""
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze_modules(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Make whole modules trainable (e.g. the classifier head: `modules_to_save`)."""
    specs = _as_list(names)
    done = find_targets(model, specs, method="modules_to_save") if specs else []
    for n in done:
        for p in model.get_submodule(n).parameters():
            p.requires_grad_(True)
    return done


def head_names(model: nn.Module) -> list[str]:
    """Names of the output-head modules that hold parameters (e.g. ['classifier'])."""
    out = []
    for n, m in model.named_modules():
        if n and is_head(n, model) and any(True for _ in m.parameters(recurse=False)):
            if not any(n.startswith(o + ".") for o in out):
                out.append(n)
    return out


# --- which method a model carries ---------------------------------------------------------

def get_method(model: nn.Module) -> str | None:
    """The name of the peftlab method applied to `model`, or None for a plain model."""
    return model.__dict__.get("peftlab_method")


def get_config(model: nn.Module):
    return model.__dict__.get("peftlab_config")


def ensure_plain(model: nn.Module, method: str) -> None:
    """Raise if `model` already carries a peftlab method (one method per model)."""
    current = get_method(model)
    if current is not None:
        again = "again " if current == method else ""
        raise AlreadyAdaptedError(
            f"This model already carries a peftlab {current!r} adapter; applying {method!r} "
            f"{again}would stack methods. peftlab applies one method per model: start from a "
            f"fresh base model (e.g. pl.models.text_classifier()).")


def mark(model: nn.Module, method: str, config, targets: list[str] | None = None) -> None:
    """Record on the model which method it carries, with its config and resolved targets."""
    model.__dict__["peftlab_method"] = method
    model.__dict__["peftlab_config"] = config
    model.__dict__["peftlab_targets"] = list(targets or [])


def unmark(model: nn.Module) -> None:
    for k in ("peftlab_method", "peftlab_config", "peftlab_targets"):
        model.__dict__.pop(k, None)


def get_targets(model: nn.Module) -> list[str]:
    return list(model.__dict__.get("peftlab_targets", []))


def resolve_modules_to_save(model: nn.Module, targets: list[str], modules_to_save,
                            auto: list[str], label: str) -> list[str]:
    """The whole modules an adapter method trains next to its adapters.

    modules_to_save=None takes `auto` (the detected head) minus any that overlap a target;
    an explicit list is matched like targets, and overlapping a target raises TargetError.
    label names the method in the message, e.g. "a LoRA".
    """
    def overlaps(h: str) -> bool:
        return any(h == n or n.startswith(h + ".") or h.startswith(n + ".") for n in targets)

    if modules_to_save is None:
        return [h for h in auto if not overlaps(h)]
    keep = find_targets(model, modules_to_save, method="modules_to_save") \
        if modules_to_save else []
    clash = [h for h in keep if overlaps(h)]
    if clash:
        raise TargetError(f"{clash[0]} is both {label} target (or contains one) and in "
                          f"modules_to_save; a module either gets an adapter or trains "
                          f"fully. Remove it from one of the two lists.")
    return keep

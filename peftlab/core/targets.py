"""Target matching: find the modules a method adapts, swap them for wrappers, freeze the rest.

Shared by every method. Target matching rules (one list may mix them):

  "query"                 exact module name, or a name suffix at a dot boundary:
                          matches "bert.encoder.layer.0.attention.self.query"
  "re:.*layer\\.[0-2]\\..*query"  a regular expression, matched against the full name
  re.compile(...)         the same, precompiled
  nn.Conv2d               a module type: every module of that type
  "all-linear"            every nn.Linear (and GPT-2's Conv1D, and any linear-family base
                          layer registered in core/base.py) except the output head

A target that matches nothing raises before anything changes and lists what exists.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from torch import nn

from peftlab.core.errors import AlreadyAdaptedError, TargetError
from peftlab.core.heads import is_head
from peftlab.core.base import is_base
from peftlab.core.layers import AdapterLayer

Target = "str | type | re.Pattern"


def _as_list(targets) -> list:
    if targets is None:
        return []
    if isinstance(targets, (str, type, re.Pattern)):
        return [targets]
    if isinstance(targets, (bytes, dict)) or not hasattr(targets, "__iter__"):
        raise TargetError(f"Targets {targets!r} are neither one target nor a list of them: give "
                          f"a name ('query'), a 're:' pattern, a module type, 'all-linear', "
                          f"or a list of these.")
    return list(targets)


def _matches(name: str, module: nn.Module, spec, model: nn.Module) -> bool:
    if isinstance(spec, type):
        return isinstance(module, spec)
    if isinstance(spec, re.Pattern):
        return spec.fullmatch(name) is not None
    if not isinstance(spec, str):
        raise TargetError(f"Target {spec!r} is neither a name, a 're:' pattern, a compiled "
                          f"regex, a module type nor 'all-linear'.")
    if spec == "all-linear":
        return is_base(module, "linear") and not is_head(name, model)
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


# what other architectures call the attention projections a BERT-style name means
ALIASES = {"query": ("q_proj", "q_lin", "c_attn", "qkv_proj", "Wqkv"),
           "key": ("k_proj", "k_lin", "c_attn", "qkv_proj", "Wqkv"),
           "value": ("v_proj", "v_lin", "c_attn", "qkv_proj", "Wqkv")}


def _why_no_match(model: nn.Module, spec, named) -> str:
    """The reason a target matched nothing, when there is one to tell: 'all-linear' on a model
    whose only linear layer is its head (or that has none), or a BERT-style name on a model
    that calls the same projections differently."""
    if spec == "all-linear":
        linear = [n for n, m in named if is_base(m, "linear")]
        if linear:
            return (f": 'all-linear' takes every linear layer except the output head, and its "
                    f"only linear layers are the head ({', '.join(linear[:3])}); name the layers "
                    f"to adapt (e.g. targets=[nn.Conv2d] or their names)")
        return (": it has no linear layers at all ('all-linear' takes nn.Linear / Conv1D); "
                "name the layers to adapt (e.g. targets=[nn.Conv2d] or their names)")
    if isinstance(spec, str) and spec in ALIASES:
        suffixes = {n.rsplit(".", 1)[-1] for n, _ in named}
        own = {k: next((a for a in v if a in suffixes), None) for k, v in ALIASES.items()}
        if own[spec]:
            pair = list(dict.fromkeys(a for a in (own["query"], own["value"]) if a))
            return (f": {spec!r} is BERT's name for an attention projection (the default "
                    f"targets are ['query', 'value']) and this model calls it {own[spec]!r}; "
                    f"pass its own names (targets={pair}) or targets='all-linear'")
        return (f": {spec!r} is BERT's name for an attention projection (the default targets "
                f"are ['query', 'value']) and this model has none by that or a related name; "
                f"name the layers to adapt (targets='all-linear', [nn.Conv2d] or their names)")
    return ""


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
            raise TargetError(f"Target {spec!r} matched no module of {type(model).__name__}"
                              f"{_why_no_match(model, spec, named)}; {describe_modules(model)}.")
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

"""The methods `peftlab train` can apply, their command-line options and default learning
rates: all of it read from the registry (each method's spec.py, see peftlab/core/methodspec.py),
so a new method appears here without an edit."""

from __future__ import annotations

from peftlab.core import registry


def entries() -> dict:
    """{--method name: (MethodSpec, TrainEntry)}, in listing order."""
    return registry.train_entries()


def names() -> tuple[str, ...]:
    """The --method choices."""
    return tuple(entries())


def learning_rate(method: str) -> float:
    """The default peak learning rate of a --method choice."""
    return entries()[method][1].lr


def options() -> dict:
    """{flag: Option} of every registered method's options; a flag two methods share (LoRA's
    and AdaLoRA's --r) is declared by the first in listing order."""
    out = {}
    for spec in registry.specs().values():
        for o in spec.options:
            out.setdefault(o.flag, o)
    return out


def describe(s: dict) -> str:
    """One line naming the method and its main options, e.g. 'lora r=8 alpha=16 on query,value'."""
    return entries()[s["method"]][1].describe(s)


def apply_method(model, tokenizer, s: dict, train_split, total_steps: int) -> None:
    """Apply the method named in settings `s` to `model` (in place). A bad option raises
    ValueError before the model changes (each method's apply validates first)."""
    known = entries()
    if s["method"] not in known:
        raise ValueError(f"unknown method {s['method']!r}; choose from {', '.join(known)}")
    known[s["method"]][1].build(model, tokenizer, s, train_split, total_steps)


def __getattr__(name: str):
    if name == "LEARNING_RATES":             # {--method name: default lr}, from the registry
        return {n: e.lr for n, (_, e) in entries().items()}
    if name == "METHODS":
        return names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""What `peftlab sweep` may vary: each method's knobs, the grid spec, and the trials it makes.

A grid is {method: {knob: [values]}}; its trials are the cross product of each method's lists,
every knob not listed held at the value the compare row uses (so every trial records its full
settings). The knobs:

    every method   lr               peak learning rate (AdamW, linear decay, 6% warm-up)
    lora           r                rank of the update
                   alpha            r, 2r or a number: the scale is alpha / r (alpha / sqrt(r)
                                    with rslora); "16" is a fixed numerator, as in many recipes
                   rslora           0 / 1: Kalajdzievski's alpha / sqrt(r) scaling
                   targets          qv (query and value) or all (every linear layer)
    prefix, prompt virtual_tokens   prefix / prompt length
    selection      fraction         share of the weights trained
    adalora        target_r         average final rank (it starts at 1.5 x target_r)

Written on the command line as `METHOD:KNOB=V1,V2;KNOB=V1,...`, e.g.
`lora:r=4,8;alpha=r,2r,16;lr=1e-3,3e-3`, or as JSON ({"lora": {"r": [4, 8]}}). Every other
compare row of the task (DoRA, IA3, ...) can be swept on `lr` alone, with its row's build.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from peftlab.compare.methods import CTX, METHODS, MethodSpec


@dataclass(frozen=True)
class Knob:
    """One setting a sweep may vary. kind: "float", "int", "bool", "alpha" or "targets".
    ordered: its values have an order (a chosen value at either end is worth a warning)."""

    name: str
    kind: str
    ordered: bool
    help: str


KNOBS = {k.name: k for k in (
    Knob("lr", "float", True, "peak learning rate"),
    Knob("r", "int", True, "LoRA rank"),
    Knob("alpha", "alpha", False, "LoRA scale numerator: r, 2r or a number"),
    Knob("rslora", "bool", False, "0/1: scale alpha / sqrt(r) instead of alpha / r"),
    Knob("targets", "targets", False, "qv (query, value) or all (every linear layer)"),
    Knob("virtual_tokens", "int", True, "prefix / prompt length"),
    Knob("fraction", "float", True, "share of the weights selection trains"),
    Knob("target_r", "int", True, "AdaLoRA's average final rank"),
)}

# each method's own knobs beyond lr; every other compare row: lr only
OWN = {"lora": ("r", "alpha", "rslora", "targets"), "prefix": ("virtual_tokens",),
       "prompt": ("virtual_tokens",), "selection": ("fraction",), "adalora": ("target_r",)}
MAIN = {"lora": "r", "prefix": "virtual_tokens", "prompt": "virtual_tokens",
        "selection": "fraction", "adalora": "target_r"}     # the x axis of its figure


def knobs_of(method: str) -> tuple[str, ...]:
    """The knobs `method` may vary: lr, then its own (OWN)."""
    return ("lr", *OWN.get(method, ()))


def row_settings(task: str, method: str) -> dict:
    """The knob values of the task's compare row `method`: what a trial holds fixed."""
    spec = METHODS[task][method]
    ctx = CTX[task]
    r = ctx.get("lora_r", 8)
    fixed = {"lora": {"r": r, "alpha": "2r", "rslora": False, "targets": "all"},
             "prefix": {"virtual_tokens": 10}, "prompt": {"virtual_tokens": 10},
             "selection": {"fraction": ctx.get("selection_fraction", 0.005)},
             "adalora": {"target_r": r}}
    return {"lr": spec.budget.lr, **fixed.get(method, {})}


# compare rows that are a setting of another method's sweep: (that method, its settings)
ROW_POINTS = {"lora_qv": ("lora", {"targets": "qv"})}


def row_point(task: str, row: str) -> tuple[str, dict]:
    """(the sweep method whose trials hold compare row `row`'s settings, those settings)."""
    method, change = ROW_POINTS.get(row, (row, {}))
    if method not in METHODS[task]:
        method, change = row, {}
    return method, {**row_settings(task, method), **change}


# --- parsing and checking --------------------------------------------------------------------

class GridError(ValueError):
    """A grid the sweep cannot run: the message names the method, knob or value at fault."""


def parse_value(knob: str, text) -> object:
    """One value of `knob` from the command line or JSON, checked; GridError names it."""
    k = KNOBS[knob]
    s = str(text).strip().lower()
    try:
        if k.kind == "bool":
            if s in ("0", "false", "off", "no"):
                return False
            if s in ("1", "true", "on", "yes"):
                return True
            raise ValueError
        if k.kind == "alpha":
            if s in ("r", "2r"):
                return s
            v = float(s)
            if not v > 0:
                raise ValueError
            return int(v) if v == int(v) else v
        if k.kind == "targets":
            if s not in ("qv", "all"):
                raise ValueError
            return s
        v = int(s) if k.kind == "int" else float(s)
        if not v > 0 or (knob == "fraction" and v > 1) or (k.kind == "int" and str(v) != s):
            raise ValueError
        return v
    except ValueError:
        want = {"bool": "0 or 1", "alpha": "r, 2r or a positive number",
                "targets": "qv or all", "int": "a positive whole number",
                "float": "a number in (0, 1]" if knob == "fraction" else "a positive number"}
        raise GridError(f"knob {knob}: bad value {text!r}; want {want[k.kind]}") from None


def check(grid: dict, task: str = "text") -> dict[str, dict[str, list]]:
    """The grid, checked and normalised ({method: {knob: [values]}}, values parsed, no
    duplicates, knobs in their canonical order); GridError before anything runs."""
    if not isinstance(grid, dict) or not grid:
        raise GridError("the grid is empty: give at least one METHOD:KNOB=VALUES (or a JSON "
                        "file), e.g. lora:lr=1e-3,3e-3")
    out = {}
    for method, knobs in grid.items():
        if method not in METHODS.get(task, {}):
            raise GridError(f"unknown method {method!r} for task {task}; choose from "
                            f"{', '.join(METHODS[task])}")
        if not isinstance(knobs, dict) or not knobs:
            raise GridError(f"{method}: no knobs given; it knows {', '.join(knobs_of(method))}")
        for knob, values in knobs.items():
            if knob not in knobs_of(method):
                raise GridError(f"{method}: unknown knob {knob!r}; it knows "
                                f"{', '.join(knobs_of(method))}")
            values = values if isinstance(values, list) else [values]
            if not values:
                raise GridError(f"{method}: knob {knob} has no values")
        if task != "text" and "qv" in map(str, knobs.get("targets", [])):
            raise GridError(f"{method}: targets=qv names the text model's query/value layers; "
                            f"the {task} task has only targets=all")
        parsed = {k: list(dict.fromkeys(parse_value(k, v) for v in knobs[k]))
                  for k in knobs_of(method) if k in knobs}
        out[method] = parsed
    return out


def parse_cli(specs: list[str]) -> dict:
    """['lora:r=4,8;lr=1e-3', 'prefix:virtual_tokens=5,10'] -> {"lora": {"r": ["4", "8"],
    "lr": ["1e-3"]}, ...} (strings; check() parses them). A method named twice merges."""
    grid: dict[str, dict] = {}
    for spec in specs:
        method, sep, rest = spec.partition(":")
        if not sep or not method.strip():
            raise GridError(f"--grid {spec!r}: write METHOD:KNOB=V1,V2;KNOB=V1,... e.g. "
                            f"lora:r=4,8;lr=1e-3,3e-3")
        knobs = grid.setdefault(method.strip(), {})
        for part in filter(None, (p.strip() for p in rest.split(";"))):
            knob, eq, values = part.partition("=")
            if not eq:
                raise GridError(f"--grid {spec!r}: {part!r} is not KNOB=V1,V2")
            vals = [v for v in (v.strip() for v in values.split(",")) if v]
            if not vals:
                raise GridError(f"{method.strip()}: knob {knob.strip()} has no values")
            knobs[knob.strip()] = vals
    return grid


def load_json(path: str | Path) -> dict:
    """A grid from a JSON file: {method: {knob: [values]}} (or {"grid": {...}})."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GridError(f"--grid-file {path}: {e}") from None
    return doc.get("grid", doc) if isinstance(doc, dict) else doc


# --- the trials --------------------------------------------------------------------------------

def fmt(v) -> str:
    """A value as trial ids and tables write it: 0.003 -> 3e-03, True -> 1, '2r' -> 2r."""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def points(grid: dict, task: str = "text") -> list[tuple[str, dict]]:
    """Every grid point, [(method, {knob: value} with all the method's knobs)], in order."""
    out = []
    for method, knobs in grid.items():
        base = row_settings(task, method)
        names = list(knobs)
        for combo in itertools.product(*(knobs[k] for k in names)):
            out.append((method, {**base, **dict(zip(names, combo))}))
    return out


def rank_key(acc, loss) -> tuple:
    """Sort key of a setting, best first: higher validation accuracy, then lower validation
    loss (the tie-break where accuracies are equal)."""
    return (-(acc if acc is not None else -math.inf), loss if loss is not None else math.inf)


def point_id(method: str, knobs: dict) -> str:
    """'lora:alpha=2r;lr=3e-03;r=8;rslora=0;targets=all', the same for the same settings."""
    return f"{method}:" + ";".join(f"{k}={fmt(knobs[k])}" for k in sorted(knobs))


def trial_id(method: str, knobs: dict, seed: int) -> str:
    """A trial's id: its point's id and its seed, e.g. 'head:lr=0.02@seed=0'."""
    return f"{point_id(method, knobs)}@seed={seed}"


# --- building a trial's method -----------------------------------------------------------------

def _alpha(alpha, r: int) -> float:
    """LoRA's alpha from the knob: 'r' -> r, '2r' -> 2r, a number as it is."""
    return {"r": float(r), "2r": 2.0 * r}.get(alpha, alpha)


def build(model, ctx, *, method: str, knobs: dict, row_build) -> None:
    """Apply `method` with `knobs` to a fresh model: LoRA, prefix and prompt from their
    configs; selection and AdaLoRA (and every lr-only row) through their compare row's own
    build, the knob handed over in ctx."""
    if method == "lora":
        from peftlab import lora
        r = knobs["r"]
        targets = ctx["lora_qv_targets" if knobs["targets"] == "qv" else "lora_targets"]
        lora.apply(model, lora.LoraConfig(r=r, alpha=_alpha(knobs["alpha"], r),
                                          rslora=knobs["rslora"], targets=targets))
    elif method == "prefix":
        from peftlab import prefix
        prefix.apply(model, prefix.PrefixConfig(num_virtual_tokens=knobs["virtual_tokens"]))
    elif method == "prompt":
        from peftlab import prompt
        from peftlab.prompt.spec import PROMPT_INIT_TEXT
        prompt.apply(model, prompt.PromptConfig(num_virtual_tokens=knobs["virtual_tokens"],
                                                init="text", init_text=PROMPT_INIT_TEXT),
                     tokenizer=ctx["tokenizer"])
    else:
        extra = {"selection": {"selection_fraction": knobs.get("fraction")},
                 "adalora": {"lora_r": knobs.get("target_r")}}.get(method, {})
        row_build(model, {**ctx, **extra})


def spec_for(task: str, method: str, knobs: dict) -> MethodSpec:
    """The MethodSpec of one trial: the compare row's, its build and lr set by the knobs."""
    row = METHODS[task][method]
    settings = ", ".join(f"{k}={fmt(v)}" for k, v in knobs.items())
    return dataclasses.replace(
        row, description=f"{method} {settings}",
        budget=dataclasses.replace(row.budget, lr=knobs["lr"]),
        build=functools.partial(build, method=method, knobs=knobs, row_build=row.build))

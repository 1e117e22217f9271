"""LoRA: low-rank adaptation (Hu et al., 2021), from scratch.

A frozen weight W (d_out, d_in) gets a trainable update of rank r << min(d_out, d_in):

    y = W x + b + scale * B (A (dropout(x)))        A: (r, d_in), B: (d_out, r)
    scale = alpha / r        (or alpha / sqrt(r) with rsLoRA, Kalajdzievski 2023)

A starts like a normal layer (kaiming-uniform), B at zero, so training starts exactly at the
base model. Only A and B (r * (d_in + d_out) numbers per layer) train; merge() folds
scale * B @ A into W for zero-overhead inference, unmerge() takes it out again.

    cfg = pl.lora.LoraConfig(r=8, alpha=16, targets=["query", "value"])
    pl.lora.apply(model, cfg)          # wraps the targets, freezes the rest (the head trains)
    pl.lora.merge(model)               # W <- W + scale * B @ A   (merge twice: no-op)
    pl.lora.unmerge(model)             # W <- W - scale * B @ A
    pl.lora.unload(model, merge=True)  # merged, plain model: the wrappers are gone
    pl.lora.unload(model)              # the base model back, bit for bit (heads included)

Tied weights (LoRA on GPT-2's wte, whose matrix lm_head also reads): merge() gives the
merged layer its own copy W + scale * B @ A and leaves the shared W to the other module, so
merged outputs equal unmerged ones; unmerge() restores the tie. unload(merge=True) keeps
the untied copy and sets model.config.tie_word_embeddings = False, so that save_pretrained /
from_pretrained do not tie the two matrices again.

The layers (nn.Linear, nn.Conv2d, nn.Embedding, transformers' Conv1D) are the math, in
peftlab/lora/lora.py; this file is the surgery on a model; saving and the Hugging Face PEFT
conversion are in peftlab/lora/format.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.core.adapt import Plan, adapt, heads_for
from peftlab.core.base import base_kind
from peftlab.core.errors import TargetError
from peftlab.core.layers import tied_parameter_ids
from peftlab.core.state import restore, unmark
from peftlab.core.targets import find_targets, replace_module
from peftlab.lora import variants as lora_variants
from peftlab.lora.lora import (
    SUPPORTED,
    LoraConv2d,
    LoraEmbedding,
    LoraLayer,
    LoraLinear,
    dims,
    lora_scale,
    max_rank,
)


@dataclass
class LoraConfig:
    """LoRA: W x + (alpha / r) * B A x on each target, with A (r, d_in), B (d_out, r), B = 0
    at the start. pl.lora.apply(model, LoraConfig(...)).

    r: rank of the update; trainable numbers per layer = r * (d_in + d_out).
    alpha: the update is scaled by alpha / r (Hu et al.: less re-tuning when r changes; it
        does not keep the update's size as r grows, rsLoRA's alpha / sqrt(r) does).
    dropout: dropout on the adapter's input only (regularises A and B).
    targets: which modules get an adapter: name suffixes ("query"), full names,
        "re:<regex>", module types, or "all-linear".
    modules_to_save: whole modules trained as usual (and saved with the adapter), e.g.
        ["classifier"]; None = the model's classification head if it has one (never tied LM
        output embeddings); [] = none (the one heads rule, peftlab/core/adapt.py).
    rslora: scale = alpha / sqrt(r) instead: keeps updates from fading at high r.
    rank_pattern / alpha_pattern: per-module rank / alpha, {name or name suffix: value} (as
        HF PEFT's); modules not listed use r / alpha. AdaLoRA's to_lora writes these.
    variant: "lora", or the name of a registered LoRA variant (peftlab/lora/variants.py): how
        the update is parametrised, added to the output, merged and saved.
    """

    method = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["query", "value"])
    modules_to_save: list[str] | None = None
    rslora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    variant: str = "lora"

    def __post_init__(self):
        lora_variants.get(self.variant)          # ValueError naming the known variants
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive int (the rank), got {self.r!r}.")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoraConfig.alpha must be a positive number (the update is scaled "
                             f"by alpha / r), got {self.alpha!r}.")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}.")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        for name, pattern in (("rank_pattern", self.rank_pattern),
                              ("alpha_pattern", self.alpha_pattern)):
            if not isinstance(pattern, dict):
                raise ValueError(f"LoraConfig.{name} must be a dict {{module name: value}}, "
                                 f"got {pattern!r}.")
        for k, v in self.rank_pattern.items():
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"LoraConfig.rank_pattern[{k!r}] must be a positive int, "
                                 f"got {v!r}.")
        for k, v in self.alpha_pattern.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"LoraConfig.alpha_pattern[{k!r}] must be a positive number, "
                                 f"got {v!r}.")

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.r, self.rslora)

    def rank_of(self, name: str) -> int:
        """The rank of module `name`: rank_pattern's most specific matching key, else r."""
        return _lookup(self.rank_pattern, name, self.r)

    def alpha_of(self, name: str) -> float:
        return _lookup(self.alpha_pattern, name, self.alpha)


def _lookup(pattern: dict, name: str, default):
    """pattern[key] for the longest key equal to `name` or a suffix of it at a dot boundary."""
    hits = [k for k in pattern if name == k or name.endswith("." + k)]
    return pattern[max(hits, key=len)] if hits else default


# --- planning: everything is validated here, before the model changes -------------------------

def plan(model: nn.Module, config: LoraConfig) -> tuple[list[tuple[str, nn.Module, int]], list[str]]:
    """([(target name, module, adapter parameters)], modules_to_save names) for `config`.

    Changes nothing; raises TargetError for a target that matches nothing or a module LoRA
    cannot wrap, and ValueError for a rank the layer cannot hold.
    """
    names = find_targets(model, config.targets, method="LoRA")
    rows = []
    for name in names:
        module = model.get_submodule(name)
        if base_kind(module) is None:
            kinds = ", ".join(t.__name__ for t in SUPPORTED)
            raise TargetError(f"LoRA can wrap {kinds} modules (and base layers registered in "
                              f"peftlab/core/base.py), but target {name} is a "
                              f"{type(module).__name__}. Pick narrower targets (e.g. a suffix "
                              f"like 'query', or a type).")
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise TargetError(f"LoRA supports Conv2d with groups=1 only; {name} has groups="
                              f"{module.groups}. Leave it out of the targets.")
        limit, r = max_rank(module), config.rank_of(name)
        if r > limit and lora_variants.get(config.variant).rank_limited:
            raise ValueError(f"r={r} is larger than {name} ({type(module).__name__}) allows: "
                             f"its update has rank at most {limit}. Use r <= {limit}, or "
                             f"leave {name} out of the targets.")
        rows.append((name, module, lora_variants.get(config.variant).count(*dims(module), r)))
    unused = [k for k in {**config.rank_pattern, **config.alpha_pattern}
              if not any(n == k or n.endswith("." + k) for n in names)]
    if unused:
        raise TargetError(f"rank_pattern / alpha_pattern key {unused[0]!r} matches no LoRA "
                          f"target; the targets are {', '.join(names[:6])}"
                          f"{' ...' if len(names) > 6 else ''}.")
    return rows, heads_for(model, config.modules_to_save, names, "a LoRA")


def count_parameters(model: nn.Module, config: LoraConfig,
                     include_modules_to_save: bool = False) -> int:
    """Parameters `config` would add to `model` (A and B of every target), without changing it.

    With include_modules_to_save=True, also the parameters of modules_to_save: then it is the
    number of trainable parameters apply() would leave, the same count HF PEFT reports.
    """
    rows, heads = plan(model, config)
    n = sum(k for _, _, k in rows)
    if include_modules_to_save:
        n += sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())
    return n


# --- apply / merge / unmerge / unload -------------------------------------------------------

def _wrap(name: str, module: nn.Module, config: LoraConfig) -> LoraLayer:
    """The LoRA layer for the base layer's family (peftlab/core/base.py)."""
    kw = {"r": config.rank_of(name), "alpha": config.alpha_of(name), "rslora": config.rslora,
          "variant": config.variant}
    family = base_kind(module).family
    if family == "embedding":
        return LoraEmbedding(module, **kw)
    if family == "conv2d":
        return LoraConv2d(module, dropout=config.dropout, **kw)
    return LoraLinear(module, dropout=config.dropout, **kw)


def apply(model: nn.Module, config: LoraConfig | None = None) -> nn.Module:
    """Wrap every target in a LoRA layer, freeze the base, train adapters + modules_to_save.

    In place; returns the model. A bad config raises before anything changes (the skeleton
    in peftlab/core/adapt.py: plan, then attach).
    """
    config = config or LoraConfig()
    if not isinstance(config, LoraConfig):
        raise TypeError(f"pl.lora.apply needs a LoraConfig, got {type(config).__name__}.")

    def _plan() -> Plan:
        rows, heads = plan(model, config)
        layers = {name: _wrap(name, module, config) for name, module, _ in rows}  # model untouched
        lora_variants.get(config.variant).prepare(layers, config)   # checks; shared tensors
        return Plan(list(layers), heads, parts=layers)

    def _attach(p: Plan) -> None:
        for name, layer in p.parts.items():
            replace_module(model, name, layer)

    return adapt(model, "lora", config, _plan, _attach)


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """{name: layer} of every LoRA layer in the model, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _layers_or_raise(model: nn.Module, what: str) -> dict[str, LoraLayer]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"Cannot {what}: the model has no LoRA layers (apply "
                         f"pl.lora.apply(model, pl.lora.LoraConfig(...)) first).")
    return layers


def merge(model: nn.Module, unload: bool = False) -> nn.Module:
    """W <- W + scale * B @ A in every LoRA layer (already merged layers are skipped).

    A layer whose base weight is tied to another module gets its own merged copy (see the
    module docstring), so merged outputs equal unmerged ones.
    unload=True also removes the wrappers: a plain model with the update baked in.
    """
    layers = _layers_or_raise(model, "merge")
    tied = tied_parameter_ids(model)
    for layer in layers.values():
        layer.merge(untie=id(getattr(layer.base_layer, "weight", None)) in tied)
    return _unload(model, merge=True) if unload else model


def unmerge(model: nn.Module) -> nn.Module:
    """W <- W - scale * B @ A in every merged LoRA layer (equal to the original to float tolerance)."""
    for layer in _layers_or_raise(model, "unmerge").values():
        layer.unmerge()
    return model


def unload(model: nn.Module, merge: bool = False) -> nn.Module:
    """Replace each LoRA layer by its base layer; returns a plain model.

    merge=False (the default, as for every method) throws the adapter away and puts back the
    modules_to_save weights recorded at apply: the base model, bit for bit (unmerging a
    merged layer subtracts the update again, equal to the base up to float rounding).
    merge=True bakes the update in (modules_to_save keep what they learned): the fine-tuned
    model."""
    layers = _layers_or_raise(model, "unload")
    bank = model._modules.pop("peftlab_heads", None)     # heads of named adapters (named.py)
    if merge and bank is not None and bank.active in bank.banks:   # keep the active one's
        with torch.no_grad():
            for key, head in bank.banks[bank.active].items():
                model.get_submodule(key.replace("__", ".")).load_state_dict(head.state_dict())
    if merge:
        tied = tied_parameter_ids(model)
        for layer in layers.values():
            layer.merge(untie=id(getattr(layer.base_layer, "weight", None)) in tied)
        if any(layer.untied for layer in layers.values()):
            _untie_config(model)
    else:
        for layer in layers.values():
            layer.unmerge()
        restore(model)
    for name, layer in layers.items():
        layer.__dict__.pop("_tied_weight", None)
        replace_module(model, name, layer.base_layer)
    unmark(model)
    return model


def _untie_config(model: nn.Module) -> None:
    """The merged model has its own input and output matrices now: say so in its config."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
        cfg.tie_word_embeddings = False


# --- looking inside ------------------------------------------------------------------------------

def delta_weight(layer: LoraLayer) -> torch.Tensor:
    """scale * B @ A, detached, in the shape of the base layer's weight."""
    if not isinstance(layer, LoraLayer):
        raise TypeError(f"delta_weight needs a LoRA layer, got {type(layer).__name__}.")
    with torch.no_grad():
        return layer.delta_weight().detach()


def spectrum(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: the r largest singular values of its update scale * B @ A}, descending.

    An update of rank r has at most r non-zero singular values; how fast they fall off shows
    how much of the rank the task really used.
    """
    out = {}
    for name, layer in _layers_or_raise(model, "compute a spectrum").items():
        d = delta_weight(layer).float()
        d = d.reshape(d.shape[0], -1)                 # conv: (out, in * kh * kw)
        out[name] = torch.linalg.svdvals(d)[:layer.r]
    return out


_unload = unload   # merge(unload=True) has a parameter that hides the name

"""Gradient-based parameter selection: train only the entries the gradient says matter.

    batches = [b for b, _ in zip(loader, range(4))]         # a few batches to score on
    pl.selection.apply(model, pl.selection.SelectionConfig(fraction=0.005), batches=batches)
    pl.train.fit(model, ...)                                 # any optimizer, weight decay too
    pl.save_adapter(model, "sel")                            # indices + values, nothing else

Steps: (1) score every candidate weight with gradients over a few batches
(selection_scores.compute_scores: Fisher, |grad| or |w * grad|), (2) keep the top entries at
a granularity (global FISH / per-row GPS / whole tensors), (3) train a compact delta.

The delta, for a selected tensor W of shape S with k selected flat positions `indices`:

    W_eff = W + scatter(values)        W frozen (S), indices buffer (k,) int64,
                                       values Parameter (k,), initialised to 0

registered with torch.nn.utils.parametrize, so every module (Linear, Embedding, LayerNorm,
...) keeps working unchanged. The optimizer sees only `values`: its state (AdamW: two moments)
and the saved adapter scale with k, and unselected entries stay bit-identical to the base
under any optimizer, weight decay and momentum included. (A gradient mask on the dense
weight is not enough: AdamW's decay and momentum would still move masked entries.) A tensor
that is selected entirely (granularity="tensor", or the head) trains as itself, densely.

Adapter tensors: "<param>.sparse_indices" / ".sparse_values" / ".sparse_shape" for sparse
tensors, "<param>" for dense ones; load_adapter rebuilds the selection from them, no batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from peftlab.inject import ensure_plain, find_targets, get_method, head_names, mark, unmark
from peftlab.selection_scores import (GRANULARITIES, KINDS, LayerRow, candidate_names,  # noqa: F401
                                      compute_scores, layer_summary, make_masks, resolve_count)

SUFFIXES = (".sparse_indices", ".sparse_values", ".sparse_shape")


@dataclass
class SelectionConfig:
    method = "selection"
    fraction: float | None = None   # budget as a share of ALL model parameters (None + no count: 0.005)
    count: int | None = None        # or as an exact number of trainable entries (head included)
    granularity: str = "global"     # "global" (FISH) | "row" (GPS, per output neuron) | "tensor"
    score: str = "fisher"           # "fisher" (squared grads) | "grad" (|grad|) | "sensitivity" (|w*grad|)
    targets: list[str] | None = None  # modules whose parameters may be chosen; None = all but the head
    # modules trained fully (None = the detected output head, [] = none); they count toward
    # the budget, the rest of it goes to the best-scored entries
    modules_to_save: list[str] | None = None
    per_example: bool = True        # Fisher from per-example gradients (exact, slower) or per batch
    max_batches: int | None = None  # use at most this many score batches (None = all given)
    seed: int = 0                   # seeds dropout while scoring, so the masks are reproducible

    def __post_init__(self):
        if self.fraction is None and self.count is None:
            self.fraction = 0.005
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"SelectionConfig.granularity must be one of {GRANULARITIES}, "
                             f"got {self.granularity!r}.")
        if self.score not in KINDS:
            raise ValueError(f"SelectionConfig.score must be one of {KINDS}, got {self.score!r}.")
        if self.targets is not None and isinstance(self.targets, str):
            self.targets = [self.targets]
        resolve_count(10 ** 18, self.fraction, self.count)   # range checks only


class SparseDelta(nn.Module):
    """The parametrization W -> W + scatter(values) at flat positions `indices`."""

    def __init__(self, shape, indices: torch.Tensor, dtype=torch.float32, device=None):
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("indices", indices.to(device=device, dtype=torch.long))   # (k,)
        self.values = nn.Parameter(torch.zeros(indices.numel(), dtype=dtype, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:   # (S) -> (S)
        return weight.reshape(-1).index_add(0, self.indices, self.values).view_as(weight)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, selected={self.indices.numel():,}"


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod, _, attr = name.rpartition(".")
    return (model.get_submodule(mod) if mod else model), attr


def _install(model: nn.Module, masks: dict[str, torch.Tensor], dense: list[str]) -> None:
    """Freeze everything; make `dense` params trainable; attach a SparseDelta per partial mask."""
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for n in dense:
        params[n].requires_grad_(True)
    all_names = list(model.named_parameters(remove_duplicate=False))
    for n, m in masks.items():
        p = params[n]
        delta = SparseDelta(p.shape, m.reshape(-1).nonzero().flatten(), p.dtype, p.device)
        # every module that holds this Parameter (tied weights) gets the same delta
        for other in [o for o, q in all_names if q is p]:
            owner, attr = _owner(model, other)
            parametrize.register_parametrization(owner, attr, delta, unsafe=True)
            owner.parametrizations[attr].original.requires_grad_(False)


def sparse_layers(model: nn.Module) -> dict[str, SparseDelta]:
    """{parameter name (as in the plain model): its SparseDelta}."""
    out, seen = {}, set()
    for mname, mod in model.named_modules():
        if parametrize.is_parametrized(mod):
            for attr, plist in mod.parametrizations.items():
                for d in plist:
                    if isinstance(d, SparseDelta) and id(d) not in seen:   # tied: first name
                        seen.add(id(d))
                        out[f"{mname}.{attr}" if mname else attr] = d
    return out


def _dense_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters()
            if p.requires_grad and ".parametrizations." not in n]


def apply(model: nn.Module, config: SelectionConfig | None = None, *, batches=None,
          loss_fn=None, scores: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Score, select and attach sparse deltas; returns the model (changed in place).

    batches: iterable of batches for loss_fn(model, batch) (default pl.train.loss_fn); or pass
    precomputed `scores` from compute_scores. Everything is validated before the model changes.
    """
    config = config or SelectionConfig()
    ensure_plain(model, "selection")
    heads = head_names(model) if config.modules_to_save is None else list(config.modules_to_save)
    if heads:
        find_targets(model, heads, method="modules_to_save")
    head_params = candidate_names(model, heads) if heads else []
    total = sum(p.numel() for p in model.parameters())
    budget = resolve_count(total, config.fraction, config.count)
    named = dict(model.named_parameters())
    n_head = sum(named[n].numel() for n in head_params)
    if budget <= n_head:
        raise ValueError(f"The budget ({budget:,} entries) does not exceed the head's "
                         f"{n_head:,} parameters ({', '.join(heads)}), which always train: raise "
                         f"fraction/count, or pass modules_to_save=[] to select the head too.")
    cands = candidate_names(model, config.targets, exclude=heads)
    if scores is None:
        if batches is None:
            raise ValueError("selection.apply needs batches= (a few training batches to score "
                             "on) or scores= from selection.compute_scores.")
        scores = compute_scores(model, batches, loss_fn, kind=config.score,
                                targets=config.targets, per_example=config.per_example,
                                max_batches=config.max_batches, seed=config.seed)
    missing = [n for n in cands if n not in scores]
    if missing:
        raise ValueError(f"scores= lacks {len(missing)} candidate parameters, e.g. {missing[0]}; "
                         f"compute them with the same targets as the config.")
    k = budget - n_head
    n_cand = sum(named[n].numel() for n in cands)
    if k > n_cand:
        raise ValueError(f"The budget leaves {k:,} entries to select but the targets hold only "
                         f"{n_cand:,}; lower fraction/count or widen targets.")
    masks = make_masks({n: scores[n] for n in cands}, count=k, granularity=config.granularity)
    full = [n for n, m in masks.items() if bool(m.all())]
    partial = {n: m for n, m in masks.items() if m.any() and not m.all()}
    _install(model, partial, head_params + full)
    resolved = find_targets(model, config.targets) if config.targets else []
    mark(model, "selection", config, resolved)
    return model


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """{parameter name: bool mask of the trainable entries} for a model carrying a selection."""
    out = {}
    for n, d in sparse_layers(model).items():
        m = torch.zeros(d.shape, dtype=torch.bool, device=d.indices.device)
        m.view(-1)[d.indices] = True
        out[n] = m
    for n in _dense_names(model):
        out[n] = torch.ones_like(dict(model.named_parameters())[n], dtype=torch.bool)
    return out


# --- the adapter protocol (see registry.py) ----------------------------------------------------

def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for n, d in sparse_layers(model).items():
        out[n + ".sparse_indices"] = d.indices.detach()
        out[n + ".sparse_values"] = d.values.detach()
        out[n + ".sparse_shape"] = torch.tensor(d.shape, dtype=torch.long)
    params = dict(model.named_parameters())
    for n in _dense_names(model):
        out[n] = params[n].detach()
    return out


def _parse(tensors: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    sparse, dense = {}, []
    for key in tensors:
        base = next((key[: -len(s)] for s in SUFFIXES if key.endswith(s)), None)
        if base is None:
            dense.append(key)
        else:
            sparse.setdefault(base, set()).add(key[len(base):])
    return sparse, dense


def prepare_load(model: nn.Module, config: SelectionConfig, tensors: dict[str, torch.Tensor]):
    """Rebuild the saved selection on a plain base model from the adapter's indices (no batches).
    Checks every name, shape and index first; raises ValueError naming the culprit."""
    from peftlab.adapters import AdapterError
    ensure_plain(model, "selection")
    params = dict(model.named_parameters())
    sparse, dense = _parse(tensors)
    for base, have in sparse.items():
        if have != set(SUFFIXES):
            raise AdapterError(f"{base}: the adapter holds {sorted(have)}, needs all of {SUFFIXES}.")
        if base not in params:
            raise AdapterError(f"The adapter selects entries of {base}, which this model lacks: "
                               f"load it onto the base model it was trained on.")
        shape = tuple(int(s) for s in tensors[base + ".sparse_shape"].tolist())
        if shape != tuple(params[base].shape):
            raise AdapterError(f"{base}: shape {shape} in the adapter, "
                               f"{tuple(params[base].shape)} in the model (another base model?).")
        idx = tensors[base + ".sparse_indices"]
        if idx.numel() != tensors[base + ".sparse_values"].numel() or idx.numel() == 0 or \
                int(idx.min()) < 0 or int(idx.max()) >= params[base].numel():
            raise AdapterError(f"{base}: indices do not fit a tensor of shape {shape}.")
    for n in dense:
        if n not in params or tuple(params[n].shape) != tuple(tensors[n].shape):
            where = "missing from" if n not in params else "of another shape in"
            raise AdapterError(f"{n} is {where} this model: load the adapter onto the base "
                               f"model it was trained on.")
    masks = {}
    for base in sparse:
        m = torch.zeros(params[base].numel(), dtype=torch.bool)
        m[tensors[base + ".sparse_indices"].long()] = True
        masks[base] = m.view(params[base].shape)
    _install(model, masks, dense)
    mark(model, "selection", config, list(config.targets or []))
    return model


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    from peftlab.adapters import AdapterError, check_state
    expected = adapter_state_dict(model)
    check_state(expected, tensors)
    for n, d in sparse_layers(model).items():
        if not torch.equal(d.indices.cpu(), tensors[n + ".sparse_indices"].long().cpu()):
            raise AdapterError(f"{n}: the adapter selects other entries than this model's "
                               f"selection; load it onto a plain base model instead.")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, d in sparse_layers(model).items():
            d.values.copy_(tensors[n + ".sparse_values"].to(d.values.dtype))
        for n in _dense_names(model):
            params[n].copy_(tensors[n].to(params[n].dtype))


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold every delta into its weight (W <- W + scatter(values)) and drop the parametrizations.
    The model becomes a plain model again (frozen, no method mark): export it with
    save_pretrained; save the adapter *before* merging if you want the small file."""
    if get_method(model) != "selection":
        raise ValueError("merge() needs a model carrying a peftlab selection "
                         f"(this one carries {get_method(model)!r}).")
    done = set()
    for mname, mod in list(model.named_modules()):
        for attr in list(getattr(mod, "parametrizations", {}) or {}):
            d = next(x for x in mod.parametrizations[attr] if isinstance(x, SparseDelta))
            # copy.deepcopy shares parametrize's per-module class between copies, and removal
            # edits that class: give this module its own so a copy's merge can't break another
            cls = type(mod)
            mod.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            # a tied weight is folded once; its other owners just get the (merged) original back
            parametrize.remove_parametrizations(mod, attr, leave_parametrized=id(d) not in done)
            done.add(id(d))
            getattr(mod, attr).requires_grad_(False)
    unmark(model)
    return model

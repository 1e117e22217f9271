"""Gradient-based parameter selection: train only the entries the gradient says matter.

    batches = [b for b, _ in zip(loader, range(4))]         # a few batches to score on
    pl.selection.apply(model, pl.selection.SelectionConfig(fraction=0.005), batches=batches)
    pl.train.fit(model, ...)                                 # any optimizer, weight decay too
    pl.save_adapter(model, "sel")                            # indices + values, nothing else

Steps: (1) score every candidate weight with gradients over a few batches
(selection/scores.py compute_scores: Fisher, |grad| or |w * grad|), (2) keep the top entries at
a granularity (global FISH / per-row GPS / whole tensors), (3) train a compact delta.

The delta, for a selected tensor W of shape S with k selected flat positions `indices`:

    W_eff = W + scatter(values)        W frozen (S), indices buffer (k,) int64,
                                       values Parameter (k,), initialised to 0

registered with torch.nn.utils.parametrize, so every module (LayerNorm, RMSNorm, a bias, ...)
keeps working unchanged, reading W_eff as its .weight. A selected Linear, Conv1D or Embedding
weight also gets a wrapper in the layer's place, as LoRA's (selection/sparse.py SparseLinear /
SparseEmbedding around `base_layer`), whose forward never forms the dense W_eff or its dense
gradient: only the k values' gradient. The optimizer sees only `values`: its state (AdamW:
two moments) and the saved adapter scale with k, and unselected entries stay bit-identical to
the base under any optimizer, weight decay and momentum included. (A gradient mask on the dense
weight keeps masked entries' moments at zero, but AdamW's decoupled weight decay still shrinks
them, and the gradients and optimizer state stay dense.) A tensor
that is selected entirely (granularity="tensor", or the head) trains as itself, densely.

Adapter tensors: "<param>.sparse_indices" / ".sparse_values" / ".sparse_shape" for sparse
tensors, "<param>" for dense ones; load_adapter rebuilds the selection from them, no batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from peftlab.core.adapt import Plan, adapt, heads_for
from peftlab.core.base import base_weight, is_base
from peftlab.core.errors import check_number
from peftlab.core.layers import adapter_dtype
from peftlab.core.state import get_method, restore, unmark
from peftlab.core.targets import find_targets, replace_module
from peftlab.selection.scores import compute_scores
from peftlab.selection.selection import GRANULARITIES, KINDS, candidate_names, make_masks, \
    resolve_count
from peftlab.selection.sparse import SparseDelta, SparseEmbedding, SparseLayer, SparseLinear, \
    effective_weight, fast_kind


@dataclass
class SelectionConfig:
    """Gradient-based selection: score every weight, train only the best-scored entries.

    fraction: the budget as a share of ALL model parameters (None and no count: 0.005).
    count: or the budget as an exact number of trainable entries (head included).
    granularity: "global" (FISH: one ranking over everything), "row" (GPS: per output
        neuron) or "tensor".
    score: "fisher" (squared gradients), "grad" (|grad|) or "sensitivity" (|w * grad|).
    targets: modules whose parameters may be chosen; None = all but the head.
    modules_to_save: modules trained fully (None = the detected output head, [] = none);
        they count toward the budget, the rest goes to the best-scored entries.
    per_example: Fisher from per-example gradients (exact, slower) or per batch.
    max_batches: use at most this many scoring batches (None = all given).
    seed: seeds dropout while scoring, so the masks are reproducible.
    """

    method = "selection"
    fraction: float | None = None
    count: int | None = None
    granularity: str = "global"
    score: str = "fisher"
    targets: list[str] | None = None
    modules_to_save: list[str] | None = None
    per_example: bool = True
    max_batches: int | None = None
    seed: int = 0

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
        check_number("SelectionConfig", "max_batches", self.max_batches, int, low=1, none=True)
        check_number("SelectionConfig", "seed", self.seed, int)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod, _, attr = name.rpartition(".")
    return (model.get_submodule(mod) if mod else model), attr


def _rows_are_columns(model: nn.Module, name: str) -> bool:
    """Whether parameter `name` stores its layer's canonical (d_out, d_in) weight transposed
    (GPT-2's Conv1D: (d_in, d_out)), i.e. base_weight is a transposed view of it: an output
    neuron's incoming weights ("row") are a column there."""
    owner, attr = _owner(model, name)
    if attr != "weight" or not is_base(owner, "linear"):
        return False
    w, stored = base_weight(owner), owner.weight
    return w is not stored and w.dim() == 2 and w.shape == stored.T.shape \
        and w.stride() == stored.T.stride() and w.data_ptr() == stored.data_ptr()


def _install(model: nn.Module, masks: dict[str, torch.Tensor], dense: list[str]) -> None:
    """Make `dense` params trainable (the model is frozen already); attach a SparseDelta per
    partial mask, then wrap the Linear / Conv1D / Embedding layers whose weight got one.
    Their originals were recorded by the skeleton, for unload()."""
    params = dict(model.named_parameters())
    for n in dense:
        params[n].requires_grad_(True)
    all_names = list(model.named_parameters(remove_duplicate=False))
    done, wrap = set(), []
    for n, m in masks.items():
        p = params[n]
        delta = SparseDelta(p.shape, m.reshape(-1).nonzero().flatten(), adapter_dtype(p),
                            p.device)
        # every module that holds this Parameter (tied weights) gets the same delta
        for other in [o for o, q in all_names if q is p]:
            owner, attr = _owner(model, other)
            if (id(owner), attr) in done:             # one module at two places in the tree
                continue
            done.add((id(owner), attr))
            parametrize.register_parametrization(owner, attr, delta, unsafe=True)
            owner.parametrizations[attr].original.requires_grad_(False)
            if attr == "weight" and fast_kind(owner):
                wrap.append(other.rpartition(".")[0])
    for name in wrap:                  # after all tensors have their deltas: the fast forward
        base = model.get_submodule(name)
        layer = SparseEmbedding if fast_kind(base) == "embedding" else SparseLinear
        replace_module(model, name, layer(base))


def _plain_name(name: str, wrappers: set[str]) -> str:
    """A name in the adapted model -> the name in the plain model (a wrapper's ".base_layer"
    dropped)."""
    parts = name.split(".")
    return ".".join(p for i, p in enumerate(parts)
                    if not (p == "base_layer" and ".".join(parts[:i]) in wrappers))


def _wrappers(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, SparseLayer)}


def sparse_layers(model: nn.Module) -> dict[str, SparseDelta]:
    """{parameter name (as in the plain model): its SparseDelta}."""
    out, seen, wrappers = {}, set(), _wrappers(model)
    for mname, mod in model.named_modules():
        if parametrize.is_parametrized(mod):
            for attr, plist in mod.parametrizations.items():
                for d in plist:
                    if isinstance(d, SparseDelta) and id(d) not in seen:   # tied: first name
                        seen.add(id(d))
                        out[_plain_name(f"{mname}.{attr}" if mname else attr, wrappers)] = d
    return out


def _dense_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """{parameter name (as in the plain model): parameter} of the tensors trained densely."""
    wrappers = _wrappers(model)
    return {_plain_name(n, wrappers): p for n, p in model.named_parameters()
            if p.requires_grad and ".parametrizations." not in n}


def apply(model: nn.Module, config: SelectionConfig | None = None, *, batches=None,
          loss_fn=None, scores: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Score, select and attach sparse deltas; returns the model (changed in place).

    batches: iterable of batches for loss_fn(model, batch) (default pl.train.loss_fn, the
    cross-entropy of peftlab/core/batches.py); or pass
    precomputed `scores` from compute_scores. Everything is validated before the model changes.
    """
    config = config or SelectionConfig()

    def plan() -> Plan:
        heads = heads_for(model, config.modules_to_save, label="a selection")
        return _plan(model, config, heads, batches, loss_fn, scores)

    return adapt(model, "selection", config, plan, lambda p: _install(model, p.parts, p.keep))


def _plan(model: nn.Module, config: SelectionConfig, heads: list[str], batches, loss_fn,
          scores) -> Plan:
    """Score (unless `scores` is given), check the budget, make the masks; changes nothing.
    Plan.parts: {parameter: mask} of the partially selected tensors; Plan.keep: the tensors
    that train densely (the heads' parameters, wholly selected tensors)."""
    head_params = candidate_names(model, heads) if heads else []
    if not candidate_names(model, config.targets, exclude=heads):
        raise ValueError(f"selection has nothing to select: {type(model).__name__} has no "
                         f"parameters outside its head ({', '.join(heads) or 'none'}) among the "
                         f"targets ({config.targets or 'every parameter'}). Widen targets, or "
                         f"pass modules_to_save=[] to select within the head too.")
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
    if all(not bool(scores[n].any()) for n in cands):
        raise ValueError("selection has nothing to select by: every score is 0, so the loss's "
                         "gradient reaches none of the candidate parameters (does loss_fn use the "
                         "model's output, and do the batches carry labels?). Choosing entries "
                         "from all-zero scores would be arbitrary; fix loss_fn or the batches.")
    k = budget - n_head
    n_cand = sum(named[n].numel() for n in cands)
    if k > n_cand:
        raise ValueError(f"The budget leaves {k:,} entries to select but the targets hold only "
                         f"{n_cand:,}; lower fraction/count or widen targets.")
    # "row" means output neuron; a Conv1D (GPT-2) stores its weight as (d_in, d_out)
    flip = {n for n in cands if config.granularity == "row" and _rows_are_columns(model, n)}
    masks = make_masks({n: scores[n].T if n in flip else scores[n] for n in cands}, count=k,
                       granularity=config.granularity)
    masks = {n: m.T.contiguous() if n in flip else m for n, m in masks.items()}
    full = [n for n, m in masks.items() if bool(m.all())]
    partial = {n: m for n, m in masks.items() if m.any() and not m.all()}
    resolved = find_targets(model, config.targets) if config.targets else []
    return Plan(resolved, heads, keep=head_params + full, parts=partial)


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """{parameter name: bool mask of the trainable entries} for a model carrying a selection."""
    out = {}
    for n, d in sparse_layers(model).items():
        m = torch.zeros(d.shape, dtype=torch.bool, device=d.indices.device)
        m.view(-1)[d.indices] = True
        out[n] = m
    for n, p in _dense_params(model).items():
        out[n] = torch.ones_like(p, dtype=torch.bool)
    return out


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold every delta into its weight (W <- W + scatter(values)), drop the wrappers and the
    parametrizations (each such module is replaced by a plain one of its class). The model
    becomes a plain model again (frozen, no method mark): export it with save_pretrained;
    save the adapter *before* merging if you want the small file."""
    return _remove(model, fold=True)


@torch.no_grad()
def unload(model: nn.Module, merge: bool = False) -> nn.Module:
    """Take the selection out. merge=False (the default): drop the deltas and put back the
    tensors that trained densely (the head, whole selected tensors) as they were at apply:
    the base model, bit for bit. merge=True: the same as merge(model)."""
    return _remove(model, fold=merge)


def _remove(model: nn.Module, fold: bool) -> nn.Module:
    if get_method(model) != "selection":
        raise ValueError("This needs a model carrying a peftlab selection "
                         f"(this one carries {get_method(model)!r}).")
    for name, mod in list(model.named_modules(remove_duplicate=False)):
        if isinstance(mod, SparseLayer):                        # the wrappers out
            replace_module(model, name, mod.base_layer)
    folded, plain = set(), {}
    for name, mod in list(model.named_modules(remove_duplicate=False)):
        if parametrize.is_parametrized(mod):
            if id(mod) not in plain:
                plain[id(mod)] = _unparametrized(mod, fold, folded)
            replace_module(model, name, plain[id(mod)])
    if not fold:
        restore(model)
    for p in model.parameters():
        p.requires_grad_(False)
    unmark(model)
    return model


def _unparametrized(mod: nn.Module, fold: bool, folded: set) -> nn.Module:
    """A module of mod's own class with mod's state, each parametrized tensor its original
    Parameter again (W + delta folded in when fold; a tied weight once, its other holders
    share the Parameter). Not torch's remove_parametrizations: it edits the parametrized
    class, which copy.deepcopy shares between copies, so a copy's merge would break another."""
    cls = parametrize.type_before_parametrizations(mod)
    out = cls.__new__(cls)
    out.__dict__.update(mod.__dict__)                  # hooks, flags, buffers, attributes
    out._modules = {k: m for k, m in mod._modules.items() if k != "parametrizations"}
    out._parameters = dict(mod._parameters)
    for attr, plist in mod.parametrizations.items():
        w, d = plist.original, plist[0]
        if fold and id(d) not in folded:
            w.copy_(effective_weight(w, d.indices, d.values))
        folded.add(id(d))
        out._parameters[attr] = w.requires_grad_(False)
    return out

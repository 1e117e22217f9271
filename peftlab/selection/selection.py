"""Let the gradient pick: score every weight, then keep the best ones at some granularity.

One idea, four papers, different granularities:

    FISH masks (Sung et al., 2021)   global top-k of the empirical Fisher     -> granularity="global"
    GPS (Zhang et al., CVPR 2024)    top-K incoming weights of every neuron   -> granularity="row"
    SPT (He et al., ICCV 2023)       count sensitive entries per matrix       -> layer_summary()
    layer / tensor selection          whole tensors ranked by mean score       -> granularity="tensor"

Scores (all of shape = the parameter's shape, computed over M batches b with mean-loss
gradient g_b = dL_b/dw, or N single examples i with gradient g_i):

    "grad"         |(1/M) sum_b g_b|                 magnitude of the accumulated gradient (GPS)
    "fisher"       (1/N) sum_i g_i^2                 empirical Fisher, per-example (FISH); with
                   per_example=False: (1/M) sum_b g_b^2   the cheaper mini-batch estimator
    "sensitivity"  |w * (1/M) sum_b g_b|             first-order Taylor estimate of the loss
                                                      change if w were set to 0

Computing them (running the model on a few batches, one backward pass per example or one
batched pass for all) is selection/scores.py compute_scores; the masks and the summary below
need no model at all. They are plain functions so widgets and notebooks can call them
(pl.selection re-exports them). The update itself, W + scatter(values) in storage and in
compute, is selection/sparse.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

KINDS = ("fisher", "grad", "sensitivity")
GRANULARITIES = ("global", "row", "tensor")


# --- which parameters ------------------------------------------------------------------------

def candidate_names(model: nn.Module, targets=None, exclude: Iterable[str] = ()) -> list[str]:
    """Names of the parameters that may be selected: those of the `targets` modules (inject
    matching rules; None = every parameter), minus those under the `exclude` modules."""
    if targets is None:
        names = [n for n, _ in model.named_parameters()]
    else:
        from peftlab.core.targets import find_targets
        names = []
        for mod in find_targets(model, targets, method="selection"):
            names += [f"{mod}.{n}" for n, _ in model.get_submodule(mod).named_parameters()]
        seen = set()
        names = [n for n in names if not (n in seen or seen.add(n))]
    # a tied parameter (GPT-2's lm_head = wte) is known by its first name, as named_parameters()
    first, canon = {}, {}
    for n, p in model.named_parameters(remove_duplicate=False):
        canon[n] = first.setdefault(id(p), n)
    ex = tuple(e + "." for e in exclude)
    excluded = {c for n, c in canon.items() if n.startswith(ex)}
    out = []
    for n in (canon[n] for n in names):
        if n not in excluded and n not in out:
            out.append(n)
    return out


# --- masks -----------------------------------------------------------------------------------

def resolve_count(total: int, fraction: float | None = None, count: int | None = None) -> int:
    """The budget as a count of entries: exactly `count`, or round(fraction * total)."""
    if (fraction is None) == (count is None):
        raise ValueError("Give the budget as exactly one of fraction= (share of the "
                         "parameters, in (0, 1]) or count= (a number of entries).")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise ValueError(f"count must be a positive int, got {count!r}.")
        if count > total:
            raise ValueError(f"count={count:,} is larger than the {total:,} parameters there "
                             f"are to choose from; use a smaller count or fraction=1.0.")
        return count
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1] (e.g. 0.005 for 0.5%), got {fraction!r}.")
    return max(1, round(fraction * total))


def _top_k_flat(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries; ties broken by lower index (deterministic), sorted."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    if k >= flat.numel():
        return torch.arange(flat.numel(), device=flat.device)
    thr = torch.topk(flat, k, sorted=False).values.min()   # the k-th largest value
    above = (flat > thr).nonzero().flatten()
    ties = (flat == thr).nonzero().flatten()[: k - above.numel()]
    return torch.cat([above, ties]).sort().values


def _split(idx: torch.Tensor, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat indices into the concatenation of all scores -> one boolean mask per tensor."""
    masks, start = {}, 0
    for n, s in scores.items():
        m = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
        sel = idx[(idx >= start) & (idx < start + s.numel())] - start
        m[sel.to(s.device)] = True
        masks[n] = m.view(s.shape)
        start += s.numel()
    return masks


def make_masks(scores: dict[str, torch.Tensor], fraction: float | None = None,
               count: int | None = None, granularity: str = "global") -> dict[str, torch.Tensor]:
    """{name: bool mask} keeping the best-scored entries within the budget.

    fraction is a share of the entries in `scores`; count an exact number.
      "global": the top-`count` entries over all tensors (FISH). Exactly `count` selected.
      "row":    every row (output neuron; a 1-D tensor is one row) keeps its top K =
                count // rows entries (GPS), capped at the row length; the rest of the budget
                goes to the best remaining entries anywhere. Exactly `count` selected.
      "tensor": whole tensors, by mean score, greedily while they fit. At most `count`.
    Ties are broken by position (earlier tensor, lower index first), so masks are deterministic.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"Unknown granularity {granularity!r}: use one of {GRANULARITIES}.")
    if not scores:
        raise ValueError("make_masks got no scores: compute_scores returned nothing to rank.")
    total = sum(s.numel() for s in scores.values())
    k = resolve_count(total, fraction, count)
    cpu = {n: s.detach().float().cpu() for n, s in scores.items()}
    flat = torch.cat([s.flatten() for s in cpu.values()])
    if granularity == "global":
        masks = _split(_top_k_flat(flat, k), cpu)
    elif granularity == "row":
        rows = sum(s.shape[0] if s.dim() > 1 else 1 for s in cpu.values())
        per_row = k // rows
        picked, start = [], 0
        for s in cpu.values():
            r = s.reshape(s.shape[0], -1) if s.dim() > 1 else s.reshape(1, -1)   # (rows, fan_in)
            kk = min(per_row, r.shape[1])
            if kk:
                # stable descending sort: equal scores keep the lower index first
                top = r.sort(dim=1, descending=True, stable=True).indices[:, :kk]  # (rows, kk)
                offs = torch.arange(r.shape[0]).unsqueeze(1) * r.shape[1]
                picked.append((top + offs).flatten() + start)
            start += s.numel()
        base = torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)
        rest = flat.clone()
        rest[base] = float("-inf")
        extra = _top_k_flat(rest, k - base.numel())
        masks = _split(torch.cat([base, extra]), cpu)
    else:
        order = sorted(range(len(cpu)), key=lambda i: (-list(cpu.values())[i].mean().item(), i))
        chosen, used = set(), 0
        names = list(cpu)
        for i in order:
            if used + cpu[names[i]].numel() <= k:
                chosen.add(names[i])
                used += cpu[names[i]].numel()
        masks = {n: torch.full(s.shape, n in chosen, dtype=torch.bool) for n, s in cpu.items()}
    return {n: m.to(scores[n].device) for n, m in masks.items()}


# --- where the selected entries live ---------------------------------------------------------

@dataclass
class LayerRow:
    """One row of the selection summary: where the selected parameters fall.

    layer: transformer block index (the first ".N." in the name); None outside blocks.
    module: module path inside the block ("attention.self.query"), or the full path.
    selected: selected entries in this module's parameters. total: all its entries.
    fraction (a property): selected / total.
    """

    layer: int | None
    module: str
    selected: int
    total: int

    @property
    def fraction(self) -> float:
        return self.selected / self.total if self.total else 0.0


_LAYER = re.compile(r"^(.*?)\.(\d+)\.(.+)$")


def layer_summary(masks: dict[str, torch.Tensor]) -> list[LayerRow]:
    """Rows (layer, module, selected, total), one per module, in model order; weight and bias
    of a module are added together. Feed it to plots.selection.layer_heatmap."""
    rows: dict[tuple, LayerRow] = {}
    for name, m in masks.items():
        module = name.rpartition(".")[0] or name
        hit = _LAYER.match(module)
        key = (int(hit.group(2)), hit.group(3)) if hit else (None, module)
        row = rows.setdefault(key, LayerRow(key[0], key[1], 0, 0))
        row.selected += int(m.sum())
        row.total += m.numel()
    return list(rows.values())

"""Checkers for notebook 04: the empirical Fisher score and the FISH / GPS masks."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.exercises._common import CheckResult, call, close, compare, verdict
from peftlab.selection.scores import compute_scores
from peftlab.selection.selection import make_masks


def check_topk_mask(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(scores, k) -> bool mask (same shape) of the k largest entries of `scores`."""

    g = torch.Generator().manual_seed(4)
    scores = torch.rand(6, 7, generator=g)
    for k in (1, 5, 20):
        want = make_masks({"w": scores}, count=k, granularity="global")["w"]
        got, err = call(fn, scores, k)
        if err:
            return verdict(False, err, quiet)
        if not torch.is_tensor(got) or got.shape != scores.shape:
            return verdict(False, f"expected a mask shaped {tuple(scores.shape)}, got "
                                  f"{getattr(got, 'shape', type(got).__name__)}.", quiet)
        got = got.bool()
        if int(got.sum()) != k:
            return verdict(False, f"for k={k} your mask selects {int(got.sum())} entries.", quiet)
        if not torch.equal(got, want):
            smallest = torch.equal(got, make_masks({"w": -scores}, count=k)["w"])
            hint = " You picked the smallest scores; keep the largest." if smallest else ""
            return verdict(False, f"for k={k} your mask selects other entries than the top-k."
                                  f"{hint}", quiet)
    return verdict(True, "your global top-k mask matches peftlab.selection (FISH-style).", quiet)


def check_row_mask(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(scores, k_per_row) -> bool mask keeping the top k entries of every row (GPS-style)."""

    g = torch.Generator().manual_seed(5)
    scores = torch.rand(5, 8, generator=g)
    for k in (1, 3):
        want = make_masks({"w": scores}, count=k * scores.shape[0], granularity="row")["w"]
        got, err = call(fn, scores, k)
        if err:
            return verdict(False, err, quiet)
        if not torch.is_tensor(got) or got.shape != scores.shape:
            return verdict(False, f"expected a mask shaped {tuple(scores.shape)}.", quiet)
        per_row = got.bool().sum(1)
        if not torch.all(per_row == k):
            return verdict(False, f"with k={k}, rows keep {per_row.tolist()} entries; every "
                                  f"row (output neuron) must keep exactly k.", quiet)
        if not torch.equal(got.bool(), want):
            return verdict(False, f"with k={k} every row keeps k entries, but not its k "
                                  f"largest (did you rank along columns?).", quiet)
    return verdict(True, "your per-row mask matches peftlab.selection (GPS-style).", quiet)


def _fisher_case():
    """A tiny classifier without dropout (so train/eval mode does not matter) and 2 batches."""
    g = torch.Generator().manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    batches = [(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))
               for n in (6, 4)]
    return model, batches


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def check_fisher_score(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(model, batches, loss_fn, name) -> the empirical Fisher of parameter `name`.

    fisher = (1/N) sum_i g_i ** 2 over the N examples of all batches, g_i the gradient of the
    loss of example i alone (a batch of one: (x[i:i+1], y[i:i+1])); same shape as the
    parameter. batches: a list of (x, y); loss_fn(model, batch) -> scalar mean loss.
    Checked against peftlab.selection.compute_scores(kind="fisher") on a tiny MLP.
    """
    model, batches = _fisher_case()
    for name in ("0.weight", "2.bias"):
        want = compute_scores(model, batches, loss_fn=_loss, kind="fisher",
                              per_example=True)[name]
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        got, err = call(fn, model, batches, _loss, name)
        if err:
            return verdict(False, err, quiet)
        if any(not torch.equal(before[n], p) for n, p in model.named_parameters()):
            return verdict(False, "your function changed the model's weights; a score only "
                                  "reads gradients (use torch.autograd.grad, no optimizer).", quiet)
        problem = compare(got, want, f"Fisher of {name!r}", atol=1e-7)
        if problem:
            per_batch = compute_scores(model, batches, loss_fn=_loss, kind="fisher",
                                       per_example=False)[name]
            grad = compute_scores(model, batches, loss_fn=_loss, kind="grad")[name]
            n = sum(len(y) for _, y in batches)
            if close(got, per_batch):
                problem += " You squared each batch's mean gradient (the per-batch estimator); " \
                           "square each example's gradient, then average."
            elif close(got, want * n):
                problem += f" You summed over the {n} examples; divide by their number."
            elif close(got, grad) or close(got, grad.square()):
                problem += " That is the accumulated gradient score; Fisher averages squared " \
                           "per-example gradients, so opposite gradients do not cancel."
            return verdict(False, problem, quiet)
    return verdict(True, "your per-example empirical Fisher matches "
                         "peftlab.selection.compute_scores (two parameters, 10 examples).", quiet)

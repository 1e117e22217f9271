"""compute_scores: run the model on a few batches and score every candidate weight.

The scores are defined in selection/selection.py ("fisher", "grad", "sensitivity"); this
file computes them, in three short steps:

    _setup        the candidates, one fp32 sum per candidate, the batched plan (fisher.py)
    _accumulate   one batch: one batched pass (fisher.accumulate), or the loop: one backward
                  pass per example (per-example Fisher) or per batch (everything else)
    _finish       the sums divided by the count and turned into the score kind

and _scoring, the context they run in: training mode (dropout on, seeded inside a forked RNG),
the candidates requiring gradients; afterwards every mode, buffer (BatchNorm's running
statistics), requires_grad flag, .grad and the global RNG are as they were.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from peftlab.core.batches import loss_fn as cross_entropy_loss
from peftlab.selection import fisher
from peftlab.selection.selection import KINDS, candidate_names


@dataclass
class _Run:
    """One scoring run: what _setup prepared and _accumulate fills."""

    kind: str
    single: bool                   # per-example Fisher: example by example
    loss_fn: Callable
    names: list[str]
    params: list[torch.Tensor]
    acc: list[torch.Tensor]        # fp32 sums, one per parameter (its shape)
    layers: dict | None            # fisher.plan: the batched pass; None: the loop
    checked: bool = False          # the batched pass was compared with the loop (batch one)
    n_seen: int = 0                # examples (per-example Fisher) or batches summed


def compute_scores(model: nn.Module, batches: Iterable, loss_fn: Callable | None = None,
                   kind: str = "fisher", targets=None, per_example: bool = True,
                   max_batches: int | None = None, seed: int = 0,
                   batched: bool = True) -> dict[str, torch.Tensor]:
    """{parameter name: score tensor (same shape, fp32, on the parameter's device)}.

    batches: any iterable of batches for loss_fn(model, batch) -> scalar mean loss (default
    pl.train.loss_fn). The model runs in training mode (dropout on, seeded by `seed` inside a
    forked RNG), as it will during fine-tuning; running statistics it updates (BatchNorm) are
    put back afterwards. per_example only affects kind="fisher": the batch is split into
    single examples, and BatchNorm layers then normalise with their running statistics (the
    statistics of a batch of one are not defined for BatchNorm1d, and would couple nothing).
    batched: per-example Fisher from one backward pass per batch (selection/fisher.py) where
    the model allows it (Linear, Conv1D, Embedding, LayerNorm and RMSNorm parameters, tied
    ones too), checked on the first batch against single-example passes; False, or any other
    model: one backward pass per example (the reference; about 7x slower on MiniLM).
    """
    run = _setup(model, loss_fn, kind, targets, per_example, max_batches, batched)
    with _scoring(model, run.params, seed, run.single):
        for batch in itertools.islice(batches, max_batches):
            _accumulate(model, run, batch)
    return _finish(run)


def _setup(model, loss_fn, kind, targets, per_example, max_batches, batched) -> _Run:
    if kind not in KINDS:
        raise ValueError(f"Unknown score kind {kind!r}: use one of {KINDS}.")
    if max_batches is not None and max_batches <= 0:
        raise ValueError(f"max_batches must be > 0 (or None for all), got {max_batches!r}.")
    names = candidate_names(model, targets)
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    single = kind == "fisher" and per_example
    return _Run(kind, single, loss_fn or cross_entropy_loss, names, params,
                [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params],
                fisher.plan(model, names) if single and batched else None)


@contextlib.contextmanager
def _scoring(model: nn.Module, params: list[torch.Tensor], seed: int, single: bool):
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    flags, grads = [p.requires_grad for p in params], [p.grad for p in params]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model.train()
            if single:
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
            for p in params:
                p.requires_grad_(True)
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
            for p, f, g in zip(params, flags, grads):
                p.requires_grad_(f)
                p.grad = g


def _accumulate(model: nn.Module, run: _Run, batch) -> None:
    if run.layers is not None and not run.checked:
        run.checked = True
        run.layers = _batched_if_exact(model, run, batch)
    if run.layers is not None:
        try:
            run.n_seen += fisher.accumulate(model, run.layers, run.loss_fn, batch,
                                            dict(zip(run.names, run.acc)))
            return
        except fisher.Unsupported:
            run.layers = None                       # this batch and the rest: the loop
    for piece in _examples(batch) if run.single else [batch]:
        gs = torch.autograd.grad(run.loss_fn(model, piece), run.params, allow_unused=True)
        for a, g in zip(run.acc, gs):
            if g is not None:
                a.add_(g.float().square() if run.kind == "fisher" else g.float())
        run.n_seen += 1


def _finish(run: _Run) -> dict[str, torch.Tensor]:
    if run.n_seen == 0:
        raise ValueError("compute_scores got no batches: pass a non-empty iterable of batches "
                         "(e.g. a few batches of the training loader).")
    out = {}
    for n, p, a in zip(run.names, run.params, run.acc):
        a /= run.n_seen
        if run.kind == "grad":
            a = a.abs()
        elif run.kind == "sensitivity":
            a = (p.detach().float() * a).abs()
        out[n] = torch.nan_to_num(a, nan=0.0)
    return out


def _examples(batch) -> list:
    """Split a batch (dict of tensors, or (inputs, labels)) into batches of one example."""
    if isinstance(batch, dict):
        n = next(v for v in batch.values() if torch.is_tensor(v)).shape[0]
        return [{k: v[i:i + 1] if torch.is_tensor(v) else v for k, v in batch.items()}
                for i in range(n)]
    x, y = batch
    return [(x[i:i + 1], y[i:i + 1]) for i in range(y.shape[0])]


def _batched_if_exact(model: nn.Module, run: _Run, batch) -> dict | None:
    """run.layers when the batched per-example Fisher matches single-example passes on the
    batch's first two examples (dropout off), else None (with a warning when they differ)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        ok = fisher.agrees_with_loop(model, run.layers, run.loss_fn, _examples(batch)[:2],
                                     dict(zip(run.names, run.params)))
    except fisher.Unsupported:
        return None
    finally:
        for m, mode in modes:
            m.training = mode
    if not ok:
        warnings.warn("compute_scores: the batched per-example Fisher differs from single-example "
                      "passes on this model (is loss_fn a mean over the batch? a token loss: are "
                      "the batch's 'labels' the ones it averages over, -100 where ignored?); "
                      "using one backward pass per example.", stacklevel=4)
        return None
    return run.layers

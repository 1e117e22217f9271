"""Checkers for the course exercises: test your implementation against the library.

Each checker takes your function, runs it on a few seeded inputs next to peftlab's own
implementation, and says in plain words what is wrong (or that all is well):

    from peftlab.exercises import check_lora_forward
    check_lora_forward(my_lora_forward)        # prints a verdict, returns a CheckResult

| checker | your function | notebook |
|---|---|---|
| check_lora_forward   | (x, W, b, A, B, alpha, r) -> y                       | 02 |
| check_lora_merge     | (W, A, B, alpha, r) -> merged W                      | 02 |
| check_lora_count     | (d_in, d_out, r) -> number of LoRA parameters        | 02 |
| check_prefix_attention | (q, k, v, prefix_k, prefix_v, mask) -> attention output | 03 |
| check_topk_mask      | (scores, k) -> bool mask of the k largest entries    | 04 |
| check_row_mask       | (scores, k_per_row) -> bool mask, top k in every row | 04 |
| check_budget         | (step, init_budget, target_budget, tinit, tfinal, total_steps) -> budget | 05 |

Solutions are kept apart, in notebooks/solutions/, so an instructor can hand out the course
without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.adalora.adalora import budget_schedule
from peftlab.lora.lora import LoraLinear
from peftlab.prefix.prefix import prefix_attention
from peftlab.selection.selection import make_masks


@dataclass
class CheckResult:
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return ("PASS: " if self.passed else "NOT YET: ") + self.message

    def _repr_html_(self) -> str:
        color = "#2e7d32" if self.passed else "#c62828"
        return f"<p style='color:{color}'><b>{'PASS' if self.passed else 'NOT YET'}</b>: " \
               f"{self.message}</p>"


def _verdict(passed: bool, message: str, quiet: bool) -> CheckResult:
    result = CheckResult(passed, message)
    if not quiet:
        print(result)
    return result


def _call(fn: Callable, *args):
    try:
        return fn(*args), None
    except Exception as e:  # the learner's code raised: report it in words
        return None, f"your function raised {type(e).__name__}: {e}"


def _compare(got, want: torch.Tensor, what: str, atol: float = 1e-5) -> str | None:
    if not torch.is_tensor(got):
        return f"{what}: expected a tensor, got {type(got).__name__}."
    if tuple(got.shape) != tuple(want.shape):
        return f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}."
    if not torch.allclose(got.float(), want.float(), atol=atol, rtol=1e-4):
        err = (got.float() - want.float()).abs().max().item()
        return f"{what}: values differ from the reference by up to {err:.3g}."
    return None


# --- LoRA ------------------------------------------------------------------------------------

def _lora_case(seed: int, d_in=6, d_out=5, r=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, d_in, generator=g)
    W, b = torch.randn(d_out, d_in, generator=g), torch.randn(d_out, generator=g)
    A, B = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
    return x, W, b, A, B


def _reference_layer(W, b, A, B, alpha):
    """peftlab's LoraLinear holding exactly these tensors."""

    base = nn.Linear(W.shape[1], W.shape[0])
    layer = LoraLinear(base, r=A.shape[0], alpha=alpha)
    with torch.no_grad():
        base.weight.copy_(W)
        base.bias.copy_(b)
        layer.lora_A.weight.copy_(A)
        layer.lora_B.weight.copy_(B)
    return layer


def check_lora_forward(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(x, W, b, A, B, alpha, r) -> y = x W^T + b + (alpha / r) * x A^T B^T.

    x: (N, d_in), W: (d_out, d_in), b: (d_out,), A: (r, d_in), B: (d_out, r) -> y: (N, d_out).
    Checked against peftlab.lora's LoraLinear with the same weights.
    """
    for seed, alpha in ((0, 4.0), (1, 16.0)):
        x, W, b, A, B = _lora_case(seed)
        r = A.shape[0]
        with torch.no_grad():
            want = _reference_layer(W, b, A, B, alpha)(x)
        got, err = _call(fn, x, W, b, A, B, alpha, r)
        if err:
            return _verdict(False, err, quiet)
        problem = _compare(got, want, "y")
        if problem:
            plain = x @ W.T + b
            if torch.is_tensor(got) and got.shape == want.shape:
                if torch.allclose(got, plain, atol=1e-5):
                    problem += " Your output equals the base layer alone: the LoRA branch is missing."
                elif torch.allclose(got, plain + (x @ A.T @ B.T), atol=1e-4):
                    problem += " The LoRA branch is not scaled: multiply it by alpha / r."
                elif torch.allclose(got, plain + alpha * (x @ A.T @ B.T), atol=1e-3):
                    problem += " You scaled by alpha; the scale is alpha / r."
            return _verdict(False, problem, quiet)
    return _verdict(True, "your LoRA forward matches peftlab.lora (two seeds, two alphas).", quiet)


def check_lora_merge(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(W, A, B, alpha, r) -> W + (alpha / r) * B @ A, shaped like W (d_out, d_in)."""
    x, W, b, A, B = _lora_case(2)
    alpha, r = 8.0, A.shape[0]
    layer = _reference_layer(W, b, A, B, alpha)
    layer.merge()
    want = layer.base_layer.weight.detach().clone()
    got, err = _call(fn, W.clone(), A, B, alpha, r)
    if err:
        return _verdict(False, err, quiet)
    problem = _compare(got, want, "merged W")
    if problem and torch.is_tensor(got) and got.shape == (W.shape[1], W.shape[0]):
        problem += " It looks transposed: B @ A is (d_out, d_in), like W."
    if problem:
        return _verdict(False, problem, quiet)
    return _verdict(True, "your merge equals peftlab.lora.merge: W + (alpha / r) * B @ A.", quiet)


def check_lora_count(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(d_in, d_out, r) -> the number of trainable LoRA parameters on one Linear layer."""

    for d_in, d_out, r in ((384, 384, 8), (384, 1536, 4), (10, 3, 1)):
        want = sum(p.numel() for n, p in LoraLinear(nn.Linear(d_in, d_out), r, 1.0)
                   .named_parameters() if "lora_" in n)
        got, err = _call(fn, d_in, d_out, r)
        if err:
            return _verdict(False, err, quiet)
        if got != want:
            hint = ""
            if got == d_in * d_out:
                hint = " That is the size of the full matrix; LoRA trains A and B only."
            elif got in (d_in * r, d_out * r):
                hint = " You counted only one of A (r x d_in) and B (d_out x r)."
            return _verdict(False, f"for d_in={d_in}, d_out={d_out}, r={r} you returned {got}, "
                                   f"the layer has {want} LoRA parameters.{hint}", quiet)
    return _verdict(True, "your count matches the LoRA layers: r * (d_in + d_out).", quiet)


# --- prefix tuning ---------------------------------------------------------------------------

def check_prefix_attention(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(q, k, v, prefix_k, prefix_v, mask) -> (B, H, T, D) attention output with prefixes.

    q, k, v: (B, H, T, D); prefix_k, prefix_v: (H, P, D); mask: (B, T), 1 = real token.
    """
    g = torch.Generator().manual_seed(3)
    B, H, T, D, P = 2, 2, 5, 4, 3
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    pk, pv = torch.randn(H, P, D, generator=g), torch.randn(H, P, D, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    want = prefix_attention(q, k, v, pk, pv, mask)          # peftlab/prefix/prefix.py
    got, err = _call(fn, q, k, v, pk, pv, mask)
    if err:
        return _verdict(False, err, quiet)
    problem = _compare(got, want, "attention output")
    if problem and torch.is_tensor(got) and got.shape == want.shape:
        no_prefix = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bool()[:, None, None, :])
        if torch.allclose(got, no_prefix, atol=1e-5):
            problem += " It equals attention without the prefix: concatenate prefix_k/prefix_v " \
                       "in front of the keys and values."
        elif torch.allclose(got[0], want[0], atol=1e-5):
            problem += " The unpadded sequence is right; check the mask: padding must stay " \
                       "masked and the prefix positions must be visible."
    if problem:
        return _verdict(False, problem, quiet)
    return _verdict(True, "your prefix attention matches: every real token sees the prefix, "
                          "padding stays masked.", quiet)


# --- gradient-based selection ----------------------------------------------------------------

def check_topk_mask(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(scores, k) -> bool mask (same shape) of the k largest entries of `scores`."""

    g = torch.Generator().manual_seed(4)
    scores = torch.rand(6, 7, generator=g)
    for k in (1, 5, 20):
        want = make_masks({"w": scores}, count=k, granularity="global")["w"]
        got, err = _call(fn, scores, k)
        if err:
            return _verdict(False, err, quiet)
        if not torch.is_tensor(got) or got.shape != scores.shape:
            return _verdict(False, f"expected a mask shaped {tuple(scores.shape)}, got "
                                   f"{getattr(got, 'shape', type(got).__name__)}.", quiet)
        got = got.bool()
        if int(got.sum()) != k:
            return _verdict(False, f"for k={k} your mask selects {int(got.sum())} entries.", quiet)
        if not torch.equal(got, want):
            smallest = torch.equal(got, make_masks({"w": -scores}, count=k)["w"])
            hint = " You picked the smallest scores; keep the largest." if smallest else ""
            return _verdict(False, f"for k={k} your mask selects other entries than the top-k."
                                   f"{hint}", quiet)
    return _verdict(True, "your global top-k mask matches peftlab.selection (FISH-style).", quiet)


def check_row_mask(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(scores, k_per_row) -> bool mask keeping the top k entries of every row (GPS-style)."""

    g = torch.Generator().manual_seed(5)
    scores = torch.rand(5, 8, generator=g)
    for k in (1, 3):
        want = make_masks({"w": scores}, count=k * scores.shape[0], granularity="row")["w"]
        got, err = _call(fn, scores, k)
        if err:
            return _verdict(False, err, quiet)
        if not torch.is_tensor(got) or got.shape != scores.shape:
            return _verdict(False, f"expected a mask shaped {tuple(scores.shape)}.", quiet)
        per_row = got.bool().sum(1)
        if not torch.all(per_row == k):
            return _verdict(False, f"with k={k}, rows keep {per_row.tolist()} entries; every "
                                   f"row (output neuron) must keep exactly k.", quiet)
        if not torch.equal(got.bool(), want):
            return _verdict(False, f"with k={k} every row keeps k entries, but not its k "
                                   f"largest (did you rank along columns?).", quiet)
    return _verdict(True, "your per-row mask matches peftlab.selection (GPS-style).", quiet)


# --- AdaLoRA ---------------------------------------------------------------------------------

def check_budget(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(step, init_budget, target_budget, tinit, tfinal, total_steps) -> budget at that step.

    The cubic schedule of AdaLoRA: init_budget during warm-up, target_budget in the final phase,
    and in between init + (target - init) * (1 - (1 - progress) ** 3), rounded down as the library.
    """
    from types import SimpleNamespace


    cfg = SimpleNamespace(init_r=12, target_r=4, tinit=10, tfinal=20, total_steps=100,
                          delta_t=1)
    n = 6
    for step in (0, 10, 11, 25, 40, 60, 79, 80, 81, 99):
        want = budget_schedule(cfg, step, n).budget
        got, err = _call(fn, step, cfg.init_r * n, cfg.target_r * n, cfg.tinit, cfg.tfinal,
                         cfg.total_steps)
        if err:
            return _verdict(False, err, quiet)
        try:
            ok = math.floor(got) == want
        except TypeError:
            ok = False
        if not ok:
            return _verdict(False, f"at step {step} (tinit={cfg.tinit}, tfinal={cfg.tfinal}, "
                                   f"total={cfg.total_steps}) you return {got}, the schedule "
                                   f"says {want}.", quiet)
    return _verdict(True, "your budget schedule matches peftlab.adalora at every sampled step.",
                    quiet)


CHECKERS = {
    "check_lora_forward": check_lora_forward,
    "check_lora_merge": check_lora_merge,
    "check_lora_count": check_lora_count,
    "check_prefix_attention": check_prefix_attention,
    "check_topk_mask": check_topk_mask,
    "check_row_mask": check_row_mask,
    "check_budget": check_budget,
}

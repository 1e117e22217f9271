"""Checkers for notebook 05: AdaLoRA's budget schedule and its triplet score."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from peftlab.adalora.adalora import SVDLinear, budget_schedule, triplet_scores
from peftlab.exercises._common import CheckResult, call, close, compare, verdict


def check_budget(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(step, init_budget, target_budget, tinit, tfinal, total_steps) -> budget at that step.

    The cubic schedule of AdaLoRA: init_budget during warm-up, target_budget in the final phase,
    and in between init + (target - init) * (1 - (1 - progress) ** 3), rounded down as the library.
    """
    cfg = SimpleNamespace(init_r=12, target_r=4, tinit=10, tfinal=20, total_steps=100,
                          delta_t=1)
    n = 6
    for step in (0, 10, 11, 25, 40, 60, 79, 80, 81, 99):
        want = budget_schedule(cfg, step, n).budget
        got, err = call(fn, step, cfg.init_r * n, cfg.target_r * n, cfg.tinit, cfg.tfinal,
                        cfg.total_steps)
        if err:
            return verdict(False, err, quiet)
        try:
            ok = math.floor(got) == want
        except TypeError:
            ok = False
        if not ok:
            return verdict(False, f"at step {step} (tinit={cfg.tinit}, tfinal={cfg.tfinal}, "
                                  f"total={cfg.total_steps}) you return {got}, the schedule "
                                  f"says {want}.", quiet)
    return verdict(True, "your budget schedule matches peftlab.adalora at every sampled step.",
                   quiet)


def _svd_case(seed: int = 8, d_in: int = 7, d_out: int = 5, r: int = 4) -> SVDLinear:
    """An SVDLinear whose importance (ipt_*) and uncertainty (unc_*) buffers hold random,
    positive values, as after some training steps. d_in != d_out so an axis mix-up shows."""
    layer = SVDLinear(nn.Linear(d_in, d_out), r=r, alpha=float(r), dropout=0.0, total_steps=1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("ipt_P", "unc_P", "ipt_lambda", "unc_lambda", "ipt_Q", "unc_Q"):
            buf = getattr(layer, name)
            buf.copy_(torch.rand(buf.shape, generator=g))
    return layer


def check_triplet_scores(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(layer) -> (r,) scores of an AdaLoRA layer's triplets (Zhang et al., ICLR 2023, section 3.2):

        s(w) = ipt * unc  (smoothed sensitivity times its uncertainty, buffers of the layer)
        S_i  = s(lambda_i) + mean_j s(P[j, i]) + mean_j s(Q[i, j])

    layer.ipt_P, layer.unc_P: (out, r); layer.ipt_lambda, layer.unc_lambda: (r,);
    layer.ipt_Q, layer.unc_Q: (r, in). Checked against peftlab.adalora.triplet_scores.
    """
    for seed in (8, 9):
        layer = _svd_case(seed)
        want = triplet_scores(layer)
        got, err = call(fn, layer)
        if err:
            return verdict(False, err, quiet)
        problem = compare(got, want, "triplet scores", atol=1e-6)
        if problem:
            s_p, s_q = layer.ipt_P * layer.unc_P, layer.ipt_Q * layer.unc_Q
            s_l = layer.ipt_lambda * layer.unc_lambda
            if close(got, s_l + s_p.sum(0) + s_q.sum(1)):
                problem += " You summed s(P) and s(Q); the paper averages them (1/d1 and 1/d2)."
            elif close(got, layer.ipt_lambda + layer.ipt_P.mean(0) + layer.ipt_Q.mean(1)):
                problem += " You used the smoothed sensitivity alone; multiply it by the " \
                           "uncertainty (ipt * unc) before adding."
            elif close(got, s_l):
                problem += " Only lambda's score: add the mean scores of the triplet's column " \
                           "of P and row of Q."
            elif torch.is_tensor(got) and got.shape != want.shape:
                problem += " Average P over its rows (dim 0) and Q over its columns (dim 1): " \
                           "one number per triplet."
            return verdict(False, problem, quiet)
    return verdict(True, "your triplet scores match peftlab.adalora.triplet_scores.", quiet)

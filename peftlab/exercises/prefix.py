"""Checker for notebook 03: attention over [prefix ; text]."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from peftlab.exercises._common import CheckResult, call, compare, verdict
from peftlab.prefix.prefix import prefix_attention


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
    got, err = call(fn, q, k, v, pk, pv, mask)
    if err:
        return verdict(False, err, quiet)
    problem = compare(got, want, "attention output")
    if problem and torch.is_tensor(got) and got.shape == want.shape:
        no_prefix = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bool()[:, None, None, :])
        if torch.allclose(got, no_prefix, atol=1e-5):
            problem += " It equals attention without the prefix: concatenate prefix_k/prefix_v " \
                       "in front of the keys and values."
        elif torch.allclose(got[0], want[0], atol=1e-5):
            problem += " The unpadded sequence is right; check the mask: padding must stay " \
                       "masked and the prefix positions must be visible."
    if problem:
        return verdict(False, problem, quiet)
    return verdict(True, "your prefix attention matches: every real token sees the prefix, "
                         "padding stays masked.", quiet)

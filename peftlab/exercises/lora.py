"""Checkers for notebook 02 (LoRA on a linear layer) and 07 (LoRA on a convolution)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from peftlab.exercises._common import CheckResult, call, close, compare, verdict
from peftlab.lora.lora import LoraConv2d, LoraLinear


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
        got, err = call(fn, x, W, b, A, B, alpha, r)
        if err:
            return verdict(False, err, quiet)
        problem = compare(got, want, "y")
        if problem:
            plain = x @ W.T + b
            if close(got, plain, atol=1e-5):
                problem += " Your output equals the base layer alone: the LoRA branch is missing."
            elif close(got, plain + (x @ A.T @ B.T), atol=1e-4):
                problem += " The LoRA branch is not scaled: multiply it by alpha / r."
            elif close(got, plain + alpha * (x @ A.T @ B.T), atol=1e-3):
                problem += " You scaled by alpha; the scale is alpha / r."
            return verdict(False, problem, quiet)
    return verdict(True, "your LoRA forward matches peftlab.lora (two seeds, two alphas).", quiet)


def check_lora_merge(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(W, A, B, alpha, r) -> W + (alpha / r) * B @ A, shaped like W (d_out, d_in)."""
    x, W, b, A, B = _lora_case(2)
    alpha, r = 8.0, A.shape[0]
    layer = _reference_layer(W, b, A, B, alpha)
    layer.merge()
    want = layer.base_layer.weight.detach().clone()
    got, err = call(fn, W.clone(), A, B, alpha, r)
    if err:
        return verdict(False, err, quiet)
    problem = compare(got, want, "merged W")
    if problem and torch.is_tensor(got) and got.shape == (W.shape[1], W.shape[0]):
        problem += " It looks transposed: B @ A is (d_out, d_in), like W."
    if problem:
        return verdict(False, problem, quiet)
    return verdict(True, "your merge equals peftlab.lora.merge: W + (alpha / r) * B @ A.", quiet)


def check_lora_count(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(d_in, d_out, r) -> the number of trainable LoRA parameters on one Linear layer."""

    for d_in, d_out, r in ((384, 384, 8), (384, 1536, 4), (10, 3, 1)):
        want = sum(p.numel() for n, p in LoraLinear(nn.Linear(d_in, d_out), r, 1.0)
                   .named_parameters() if "lora_" in n)
        got, err = call(fn, d_in, d_out, r)
        if err:
            return verdict(False, err, quiet)
        if got != want:
            hint = ""
            if got == d_in * d_out:
                hint = " That is the size of the full matrix; LoRA trains A and B only."
            elif got in (d_in * r, d_out * r):
                hint = " You counted only one of A (r x d_in) and B (d_out x r)."
            return verdict(False, f"for d_in={d_in}, d_out={d_out}, r={r} you returned {got}, "
                                  f"the layer has {want} LoRA parameters.{hint}", quiet)
    return verdict(True, "your count matches the LoRA layers: r * (d_in + d_out).", quiet)


def check_conv_lora_delta(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(A, B, scale) -> the kernel update of a LoRA'd Conv2d, shaped like its weight.

    A: (r, C_in, k, k) (lora_A, a k x k conv C_in -> r); B: (C_out, r, 1, 1) (lora_B, a 1x1 conv
    r -> C_out) -> delta: (C_out, C_in, k, k), delta[o, i, u, v] = scale * sum_k B[o, k] A[k, i, u, v].
    Checked against peftlab.lora.LoraConv2d.delta_weight holding the same A and B.
    """
    g = torch.Generator().manual_seed(6)
    for c_in, c_out, k, r, alpha in ((3, 5, 3, 2, 4.0), (4, 6, 1, 3, 9.0)):
        layer = LoraConv2d(nn.Conv2d(c_in, c_out, k, padding=k // 2), r=r, alpha=alpha)
        with torch.no_grad():
            layer.lora_A.weight.copy_(torch.randn(r, c_in, k, k, generator=g))
            layer.lora_B.weight.copy_(torch.randn(c_out, r, 1, 1, generator=g))
        A, B = layer.lora_A.weight.detach().clone(), layer.lora_B.weight.detach().clone()
        with torch.no_grad():
            want = layer.delta_weight()
        got, err = call(fn, A, B, layer.scale)
        if err:
            return verdict(False, err, quiet)
        problem = compare(got, want, f"delta for C_in={c_in}, C_out={c_out}, k={k}, r={r}")
        if problem:
            if close(got, want / layer.scale):
                problem += " The update is not scaled: multiply by scale (alpha / r)."
            elif torch.is_tensor(got) and got.dim() == 2 and got.numel() == want.numel():
                problem += " You have the matrix view (C_out, C_in k k); reshape it to the " \
                           "kernel's shape (C_out, C_in, k, k)."
            elif torch.is_tensor(got) and got.shape == (c_in, c_out, k, k):
                problem += " Output and input channels are swapped: B's rows are the output " \
                           "channels."
            return verdict(False, problem, quiet)
        # the reason the formula is right: a conv with W + delta equals the LoRA layer
        x = torch.randn(2, c_in, 6, 6, generator=g)
        base = layer.base_layer
        with torch.no_grad():
            ours = nn.functional.conv2d(x, base.weight + got, base.bias, padding=base.padding)
            assert torch.allclose(ours, layer(x), atol=1e-4)
    return verdict(True, "your kernel update matches LoraConv2d.delta_weight, and a plain "
                         "conv2d with W + delta gives the LoRA layer's output.", quiet)

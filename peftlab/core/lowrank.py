"""A frozen linear layer plus a low-rank update, as one autograd step (LoRA's fast path).

    y = x W^T + b + scale * (x A^T) B^T        x: (..., d_in), W: (d_out, d_in) (Conv1D:
                                               (d_in, d_out)), A: (r, d_in), B: (d_out, r)

Written with modules (base(x) + lora_B(lora_A(x)) * scale, as Hugging Face PEFT's layer does),
autograd runs five kernels forward and about ten backward, three of them elementwise passes
over the (N, d_out) / (N, d_in) activations: the multiply by scale, the add, and the sum of
the two input gradients. Here forward is three matmuls writing one output (the scale rides in
addmm's alpha) and backward five (dL/dx = g W + (scale g B) A, accumulated in place):

    h = x A^T                         (N, r)         dL/dh = scale * g B          (N, r)
    y = addmm(b, x, W^T)              (N, d_out)     dL/dA = (dL/dh)^T x          (r, d_in)
    y += scale * h B^T   (addmm_)                    dL/dB = scale * g^T h        (d_out, r)
                                                     dL/dx = g W + (dL/dh) A      (N, d_in)

The products are the autograd path's; only the rounding of the scale's multiply may differ.
W must be frozen (it gets no gradient); the bias may train.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.core.layers import LINEAR_TYPES

_PLAIN = tuple(t.forward for t in LINEAR_TYPES)   # the base forwards lowrank_linear reproduces


def _forward(x, a, b, w, bias, scale: float, conv1d: bool):
    """(y as (..., d_out), x2, h): the three matmuls of the fused forward."""
    x2 = x.reshape(-1, x.shape[-1])                                               # (N, d_in)
    h = x2 @ a.T                                                                  # (N, r)
    wt = w if conv1d else w.T                                                     # (d_in, d_out)
    y = torch.addmm(bias, x2, wt) if bias is not None else x2 @ wt                # (N, d_out)
    y.addmm_(h, b.T, alpha=scale)                                                 # + scale h B^T
    return y.view(*x.shape[:-1], y.shape[-1]), x2, h


class _LowRankLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, b, w, bias, scale: float, conv1d: bool):
        y, x2, h = _forward(x, a, b, w, bias, scale, conv1d)
        ctx.save_for_backward(x2, h, a, b, w)
        ctx.scale, ctx.conv1d = scale, conv1d
        return y

    @staticmethod
    def backward(ctx, g):
        x2, h, a, b, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])                                           # (N, d_out)
        gh = (g2 @ b).mul_(ctx.scale)                                             # (N, r)
        gx = ga = gb = gbias = None
        if need[0]:
            gx = (g2 @ (w.T if ctx.conv1d else w)).addmm_(gh, a).view(*g.shape[:-1], -1)
        if need[1]:
            ga = gh.T @ x2                                                        # (r, d_in)
        if need[2]:
            gb = (g2.T @ h).mul_(ctx.scale)                                       # (d_out, r)
        if need[4]:
            gbias = g2.sum(0)
        return gx, ga, gb, None, gbias, None, None


def lowrank_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   a: torch.Tensor, b: torch.Tensor, scale: float,
                   conv1d: bool = False) -> torch.Tensor:
    """x W^T + bias + scale * (x a^T) b^T (conv1d: x W + ...) in one autograd step. With no
    gradient to record (inference, decoding), the same three matmuls run without the autograd
    Function's bookkeeping: the same numbers, less overhead per call."""
    if not torch.is_grad_enabled() or not (x.requires_grad or a.requires_grad
                                           or b.requires_grad or (bias is not None
                                                                  and bias.requires_grad)):
        return _forward(x, a, b, weight, bias, scale, conv1d)[0]
    return _LowRankLinear.apply(x, a, b, weight, bias, scale, conv1d)


def can_fuse(base: nn.Module, x: torch.Tensor, a: torch.Tensor) -> bool:
    """True when lowrank_linear computes what base(x) + the update would: base is a plain
    nn.Linear / Conv1D (its class's own forward, no hooks) with a frozen weight, x, a and the
    weight share one dtype (nothing to cast), and autocast is off."""
    w = getattr(base, "weight", None)
    return (type(base).forward in _PLAIN and not (base._forward_hooks or base._forward_pre_hooks)
            and w is not None and not w.requires_grad and x.dtype == a.dtype == w.dtype
            and not torch.is_autocast_enabled(x.device.type))

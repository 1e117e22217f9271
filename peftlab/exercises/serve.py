"""Checker for notebook 09 (serving several LoRA adapters on one base in one batch)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from peftlab.exercises._common import CheckResult, call, close, compare, verdict
from peftlab.lora.lora import LoraLinear


def _case(seed: int, d_in=6, d_out=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, d_in, generator=g)
    W, b = torch.randn(d_out, d_in, generator=g), torch.randn(d_out, generator=g)
    adapters = {}
    for name, r, alpha in (("support", 2, 4.0), ("sales", 3, 12.0)):
        adapters[name] = (torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g),
                          alpha / r)
    return x, W, b, adapters


def _reference(x, W, b, adapters, names):
    """peftlab's LoraLinear carrying both adapters, routed row by row (pl.lora.route)."""
    base = nn.Linear(W.shape[1], W.shape[0])
    (first, (A0, B0, s0)), *rest = adapters.items()
    layer = LoraLinear(base, r=A0.shape[0], alpha=s0 * A0.shape[0])
    layer.primary = layer.active = first
    with torch.no_grad():
        base.weight.copy_(W)
        base.bias.copy_(b)
        layer.lora_A.weight.copy_(A0)
        layer.lora_B.weight.copy_(B0)
        for name, (A, B, s) in rest:
            p = layer.make_parts(A.shape[0], s * A.shape[0])
            p.lora_A.weight.copy_(A)
            p.lora_B.weight.copy_(B)
            layer.add_adapter(name, p)
        layer.rows = list(names)
        y = layer(x)
    layer.rows = None
    return y


def check_mixed_lora(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(x, W, b, adapters, names) -> y: one forward pass where row i uses adapter names[i].

    x: (N, d_in); W: (d_out, d_in); b: (d_out,); adapters: {name: (A (r, d_in), B (d_out, r),
    scale)}; names: N adapter names, None meaning the base layer alone. Row i of y must be
    x[i] W^T + b + scale * x[i] A^T B^T with the A, B, scale of adapter names[i]: what that row
    gets when served alone. Checked against peftlab.lora's LoraLinear with both adapters
    loaded and the rows routed (what pl.predict(..., adapter_names=...) does in every layer).
    """
    for seed, names in ((0, ["support", "sales", "support", None, "sales", "sales"]),
                        (1, ["sales", None, None, "support", "sales", "support"])):
        x, W, b, adapters = _case(seed)
        want = _reference(x, W, b, adapters, names)
        got, err = call(fn, x, W, b, adapters, list(names))
        if err:
            return verdict(False, err, quiet)
        problem = compare(got, want, "y")
        if problem:
            plain = x @ W.T + b
            upd = {n: s * (x @ A.T @ B.T) for n, (A, B, s) in adapters.items()}
            first = names[0]
            if close(got, plain, atol=1e-5):
                problem += " Your output is the base layer alone: add each row's LoRA update."
            elif close(got, plain + upd[first], atol=1e-4):
                problem += (f" Every row got adapter {first!r} (the first row's): route each "
                            f"row through the adapter names[i] names.")
            elif close(got, plain + sum(upd.values()), atol=1e-4):
                problem += " You added every adapter's update to every row: only names[i]'s."
            else:
                rows_none = [i for i, n in enumerate(names) if n is None]
                if torch.is_tensor(got) and got.shape == want.shape and not torch.allclose(
                        got[rows_none], plain[rows_none], atol=1e-5):
                    problem += " Rows named None must get the base layer alone."
                elif torch.is_tensor(got) and got.shape == want.shape:
                    wrong = [i for i in range(len(names))
                             if not torch.allclose(got[i], want[i], atol=1e-5)]
                    problem += (f" Rows {wrong} are off; check the scale (alpha / r, given "
                                f"per adapter) and the order x A^T B^T.")
            return verdict(False, problem, quiet)
    return verdict(True, "every row gets exactly its own adapter's output, as peftlab's routed "
                         "LoRA layer gives it (two seeds, two adapters and the base).", quiet)

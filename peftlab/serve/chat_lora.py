"""Per-row LoRA in two extra matrix products per layer, whatever the mix of adapters in the batch.

    stacked = StackedLora(model)
    with stacked.route(["support", None, "sql", "support"]):     # row i through names[i]
        model(...)                                               # one forward pass
    stacked.invalidate()                          # an adapter was loaded, replaced or deleted

pl.lora.route (peftlab/lora/routing.py) adds each row's update group by group: for every
adapter in the batch, gather its rows, run A and B on them, scatter the result back. That is
clear, and per layer it costs 4 small operations per adapter; a decoding step of 8 rows over
3 adapters runs ~2,000 of them through 210 layers, and each is a few microseconds of Python
and dispatch, as long as the arithmetic. S-LoRA (Sheng et al. 2023) and Punica (Chen et al.
2023, "Punica: Multi-Tenant LoRA Serving") compute the mixed batch in one pass instead, with
custom kernels that gather each row's A and B. Without custom kernels, stacking does the same:

    A_all = [A_1; A_2; ...]          (r_1 + r_2 + ..., d_in)   every adapter's A, stacked
    B_all = [B_1, B_2, ...]          (d_out, r_1 + r_2 + ...)  and their B side by side
    mask  (rows, r_1 + r_2 + ...)    scale_k on the columns of row i's adapter k, 0 elsewhere
    y = base(x) + ((x A_all^T) * mask) B_all^T

Row i's columns of other adapters are multiplied by exact zeros, so its update is its own
adapter's scale * B A x (up to float rounding: the products run over other shapes; the
engine's tests compare every step's logits with a plain forward pass to 1e-4). A row of the
base (None) gets exact zeros. The work is x A_all^T for all adapters, r_1 + r_2 + ... columns
instead of r per row: nothing next to the base layer's d_out columns at small ranks.

It covers plain LoRA on nn.Linear layers (the chat models' case); anything else (DoRA or
another variant, Conv1D or embedding layers, a merged layer, classifier heads) falls back to
pl.lora.route. The stacked tensors are copies: whoever changes an adapter calls invalidate()
(the engine does after every model work item), and they are rebuilt at the next route().
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.state import get_method
from peftlab.lora.heads import bank_of
from peftlab.lora.named import adapter_names, route
from peftlab.lora.surgery import lora_layers


def _eligible(layer) -> bool:
    return (layer.variant == "lora" and not layer.merged and type(layer.base_layer) is nn.Linear
            and all(isinstance(layer.parts(n).lora_dropout, nn.Identity) or not layer.training
                    for n in layer.adapter_names()))


class StackedLora:
    """The stacked A and B of every LoRA layer of `model` (module docstring), built lazily."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.plan: list | None = None            # [(layer, A_all, B_all, columns)]
        self.columns: set = set()                # each layer's ((adapter, r, scale), ...)
        self.usable = False

    def invalidate(self) -> None:
        """Forget the stacked copies (the model's adapters changed)."""
        self.plan, self.columns, self.usable = None, set(), False

    def _build(self) -> None:
        self.plan, self.columns = [], set()
        layers = lora_layers(self.model) if get_method(self.model) == "lora" else {}
        self.usable = bool(layers) and bank_of(self.model) is None and \
            all(_eligible(m) for m in layers.values())
        if not self.usable:
            return
        for m in layers.values():
            parts = [(n, m.parts(n)) for n in m.adapter_names()]
            key = tuple((n, p.lora_A.weight.shape[0], float(p.scale)) for n, p in parts)
            self.columns.add(key)
            A = torch.cat([p.lora_A.weight for _, p in parts])                  # (R, d_in)
            B = torch.cat([p.lora_B.weight for _, p in parts], dim=1).contiguous()  # (d_out, R)
            self.plan.append((m, A, B, key))

    def masks(self, names: list) -> dict:
        """Per layer columns: (rows, 1, R), scale_k on the columns of row i's adapter k, 0
        elsewhere (None when every row is on the base)."""
        if all(n is None for n in names):
            return dict.fromkeys(self.columns)
        weight = self.plan[0][1]
        out = {}
        for cols in self.columns:
            use = torch.tensor([[scale if n == name else 0.0 for name, r, scale in cols
                                 for _ in range(r)] for n in names], dtype=weight.dtype)
            out[cols] = use.to(weight.device)[:, None, :]
        return out

    @contextlib.contextmanager
    def route(self, names: list):
        """Row i of every forward pass inside goes through adapter names[i] (None: the base),
        stacked when the model allows it, else by pl.lora.route."""
        if get_method(self.model) != "lora":
            yield self.model
            return
        if self.plan is None:
            self._build()
        if not self.usable:
            with route(self.model, names):
                yield self.model
            return
        known = set(adapter_names(self.model))
        unknown = [n for n in names if n is not None and n not in known]
        if unknown:
            raise KeyError(f"No adapter named {unknown[0]!r}: the model has {sorted(known)}.")
        masks = self.masks(list(names))
        patched = []
        try:
            for m, A, B, key in self.plan:
                m.forward = _stacked_forward(m, A, B, masks[key], len(names))
                patched.append(m)
            yield self.model
        finally:
            for m in patched:
                del m.forward


def _stacked_forward(layer, A: torch.Tensor, B: torch.Tensor, mask, rows: int):
    """The layer's forward inside StackedLora.route: base(x) + ((x A^T) * mask) B^T."""
    base = layer.base_layer
    if mask is None:                                # every row on the base: nothing to add
        return lambda x: base(x)                    # a function: a module would be a child

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != rows:
            raise ValueError(f"{rows} adapter names for a batch of {x.shape[0]} rows: give "
                             f"one adapter name per input.")
        y = base(x)
        m = mask if x.dim() == 3 else mask.reshape(rows, *[1] * (x.dim() - 2), -1)
        return y + F.linear(F.linear(x.to(A.dtype), A) * m, B).to(y.dtype)
    return forward

"""Several named adapters on one LoRA layer, and mixed-adapter batches (one forward pass).

The first adapter keeps its tensors on the layer itself (lora_A / lora_B: state_dict keys,
saved files and the HF PEFT layout exactly as with one adapter); each further one is a
LoraParts in the ModuleDict `others`. `active` names the adapter forward adds (None: base
only); `rows` (set by pl.lora.named.route) names one per batch row.

    layer.parts("support")          # the holder of that adapter's lora_A, lora_B, scale
    routed(layer, x, y)             # y + each row's own adapter update (or the active one's)

Imports nothing of LoRA but variants.py: LoRA's math file (lora.py) builds on it.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.lora import variants
from peftlab.lora.variants import lora_scale


class LoraParts(nn.Module):
    """The tensors of one named adapter beside the first: lora_A, lora_B (and lora_dropout)
    with its own r, alpha and scale. The first adapter keeps the same attributes on the layer
    itself, so each layer's math reads `p.lora_A`, `p.scale` with p = the layer or a LoraParts."""

    def __init__(self, r: int, alpha: float, rslora: bool = False):
        super().__init__()
        self.r, self.alpha, self.scale = r, alpha, lora_scale(alpha, r, rslora)

    extra_repr = lambda self: f"r={self.r}, alpha={self.alpha}, scale={self.scale:g}"


class NamedAdapters:
    """The named-adapter part of a LoRA layer (a mixin of LoraLayer: it needs `primary`,
    `_modules`, `_build` and the layer's `variant`)."""

    def adapter_names(self) -> list[str]:
        """The names of the adapters this layer holds, the first one first."""
        others = self._modules.get("others")
        return [self.primary, *(others.keys() if others is not None else [])]

    def parts(self, name: str) -> nn.Module:
        """The holder of adapter `name`'s tensors: the layer itself for the first adapter."""
        if name == self.primary:
            return self
        others = self._modules.get("others")
        if others is None or name not in others:
            raise KeyError(f"{name!r} is not an adapter of this layer "
                           f"(it has {self.adapter_names()}).")
        return others[name]

    def make_parts(self, r: int, alpha: float, dropout: float = 0.0,
                   rslora: bool = False) -> LoraParts:
        """A new holder of A, B (frozen: for inference); add_adapter(name, parts) puts it in."""
        p = LoraParts(r, alpha, rslora)
        self._build(p, r, dropout)
        variants.get(self.variant).build(self, p)
        return p.requires_grad_(False)

    def add_adapter(self, name: str, parts: nn.Module) -> None:
        """Hold `parts` (from make_parts) as adapter `name` (replacing one of that name)."""
        if name == self.primary:
            raise ValueError(f"{name!r} is the adapter held on the layer itself.")
        if "others" not in self._modules:
            self.others = nn.ModuleDict()
        self.others[name] = parts

    def remove_adapter(self, name: str) -> None:
        """Drop adapter `name` (not the first: it is the layer's own tensors)."""
        if name == self.primary:
            raise ValueError(f"{name!r} is held on the layer itself and cannot be removed alone.")
        self.parts(name)                          # KeyError naming the adapters if unknown
        del self.others[name]
        if not len(self.others):
            del self.others


def routed(layer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y = base(x) plus what the adapters add: the active adapter's update, or with
    `layer.rows` set row i gets adapter rows[i]'s (None / an adapter not on this layer:
    nothing). Rows are gathered per adapter, so each row's numbers are those it would get
    alone."""
    names = layer.adapter_names()
    if layer.rows is None:
        if layer.active not in names:
            return y
        return layer.add_update(layer.parts(layer.active), x, y)
    if len(layer.rows) != x.shape[0]:
        raise ValueError(f"{len(layer.rows)} adapter names for a batch of {x.shape[0]} rows: "
                         f"give one adapter name per input.")
    out = y
    for name in dict.fromkeys(layer.rows):
        if name not in names:
            continue
        idx = torch.tensor([i for i, n in enumerate(layer.rows) if n == name], device=x.device)
        rows = layer.add_update(layer.parts(name), x.index_select(0, idx), y.index_select(0, idx))
        out = out.index_copy(0, idx, rows.to(y.dtype))
    return out

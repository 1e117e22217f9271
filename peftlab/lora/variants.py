"""The LoRA variant seam: what a variant of LoRA (DoRA, VeRA, ...) changes, in one class.

A variant is one file: a subclass of LoraVariant registered under its name, chosen with
LoraConfig(variant="<name>"). Each hook receives the layer and `p`, the holder of one
adapter's tensors (the layer itself for the first adapter, a LoraParts for the others), which
has p.lora_A, p.lora_B (or lora_embedding_A / _B), p.lora_dropout and p.scale:

    build(layer, p)            extra tensors, after A and B exist; name them lora_* so they
                               are saved with the adapter (what it saves) and train
    update(layer, p, x, y)     the layer's output given y = base(x)   (how it adds)
    delta(layer, p)            W' - W in the canonical layout of peftlab/core/base.py, so that
                               merge folds the variant in exactly      (how it merges)
    unmerge_delta(layer, p)    the same W' - W computed from the merged weight W' (default:
                               delta, right when the update does not depend on W)
    prepare(layers, config)    once every layer of the adapter is built, before the model
                               changes: check them by name, and build what they share (VeRA's
                               one random pair A, B); raise here to refuse the config
    count(d_in, d_out, r)      the trainable numbers the variant adds per layer (plan, budgets)
    rank_limited               whether r <= min(d_in, d_out) is required (VeRA: no, its r is
                               the shared random pair's, free of the layer's shape)

Optional, for the Hugging Face PEFT format: to_hf_peft(model, hf_cfg, tensors) -> (hf_cfg,
tensors) rewrites plain LoRA's export (a variant without it is refused: format="peftlab").

Plain LoRA is the base class: update = y + layer._update(p, x) (scale * B A dropout(x), the
formula each layer class of lora.py writes out), delta = layer._delta(p) (scale * B @ A).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lora_scale(alpha: float, r: int, rslora: bool = False) -> float:
    """alpha / r (Hu et al.), or alpha / sqrt(r) (rsLoRA: keeps large-r updates from fading)."""
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoraVariant:
    """Plain LoRA (Hu et al., 2021); subclass and override to make a variant."""

    name = "lora"
    rank_limited = True

    def build(self, layer: nn.Module, p: nn.Module) -> None:
        """Add the variant's own tensors to p (plain LoRA has none)."""

    def update(self, layer: nn.Module, p: nn.Module, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        """The adapted output: y + scale * B(A(dropout(x)))."""
        return y + layer._update(p, x).to(y.dtype)

    def delta(self, layer: nn.Module, p: nn.Module) -> torch.Tensor:
        """W' - W, canonical layout: scale * B @ A."""
        return layer._delta(p)

    def unmerge_delta(self, layer: nn.Module, p: nn.Module) -> torch.Tensor:
        """W' - W while the base holds the merged W' (a variant whose update depends on W,
        like DoRA's column norms, recovers W from W' here)."""
        return self.delta(layer, p)

    def prepare(self, layers: dict[str, nn.Module], config) -> None:
        """All layers {target name: layer} of one adapter, built, not yet in the model: check
        them together and add what they share (plain LoRA: nothing). Raising here leaves the
        model unchanged."""

    def count(self, d_in: int, d_out: int, r: int) -> int:
        """Trainable numbers per layer: r * (d_in + d_out) for A and B (conv: d_in counts the
        kernel)."""
        return r * (d_in + d_out)


# the registry of variants: {name: an instance}; register() adds to it
VARIANTS: dict[str, LoraVariant] = {"lora": LoraVariant()}


def register(variant: type[LoraVariant]) -> type[LoraVariant]:
    """Register a LoraVariant subclass under its `name` (usable as a class decorator)."""
    if not (isinstance(variant, type) and issubclass(variant, LoraVariant)):
        raise TypeError(f"register() takes a LoraVariant subclass, got {variant!r}.")
    VARIANTS[variant.name] = variant()
    return variant


def get(name: str) -> LoraVariant:
    """The registered variant `name`; ValueError naming the known ones otherwise."""
    if not isinstance(name, str) or name not in VARIANTS:
        raise ValueError(f"Unknown LoRA variant {name!r}; known: {', '.join(VARIANTS)} (a "
                         f"variant registers itself with peftlab.lora.variants.register).")
    return VARIANTS[name]

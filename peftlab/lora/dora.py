"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024), a LoRA variant.

Split each weight into a magnitude and a direction, and let LoRA move the direction:

    W' = m * (W + s B A) / ||W + s B A||        m: (d_out,), the norms taken per output row
    y  = W' x + b = m / ||W + s B A|| * (W x + s B A x) + b

m starts at ||W|| (row norms), B at zero, so W' = W at the start. Following the paper (section
4.3) and Hugging Face PEFT, the norm ||W + s B A|| is a constant in backward (detached): the
gradient reaches m, A and B but not through the norm, which saves memory and barely changes
training. Trainable per layer: r * (d_in + d_out) + d_out.

    pl.lora.apply(model, pl.lora.LoraConfig(r=8, alpha=16, variant="dora"))

Like peft (lora/dora.py, DoraLinearLayer), m is `lora_magnitude_vector.weight`, so a DoRA
adapter saves as a Hugging Face LoRA with use_dora=True and loads there with equal outputs.
Supported: nn.Linear and GPT-2's Conv1D (embeddings and convolutions are refused by name).

Merging: W <- W' exactly. The norm cannot be recovered from W' (the direction loses it), so
merge keeps the row norms it used and unmerge divides them back in, as peft does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.base import base_kind, base_weight
from peftlab.core.errors import TargetError
from peftlab.lora import variants


class Magnitude(nn.Module):
    """m, one number per output row; a module with `.weight` so its state-dict key is
    `...lora_magnitude_vector.weight`, as in peft."""

    def __init__(self, m: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(m)                 # (d_out,)


def row_norms(w: torch.Tensor) -> torch.Tensor:
    """||w_i|| for each output row i of a (d_out, d_in) weight: (d_out,)."""
    return torch.linalg.norm(w, dim=1)


@variants.register
class DoRA(variants.LoraVariant):
    name = "dora"

    def build(self, layer, p):
        if base_kind(layer.base_layer).family != "linear":
            return                                    # prepare() refuses it by name
        w = base_weight(layer.base_layer).float()                     # (d_out, d_in)
        adapted = w + layer._delta(p)                 # B = 0 at build: W itself
        dt = p.lora_B.weight.dtype
        p.lora_magnitude_vector = Magnitude(row_norms(adapted).to(dt))

    def prepare(self, layers, config):
        for name, layer in layers.items():
            kind = base_kind(layer.base_layer)
            if kind.family != "linear":
                raise TargetError(f"DoRA adapts linear layers (nn.Linear, Conv1D); target "
                                  f"{name} is a {kind.name}. Leave it out of the targets, or "
                                  f"use plain LoRA (variant='lora') for it.")
            zero = (layer.lora_magnitude_vector.weight == 0).nonzero().flatten().tolist()
            if zero:
                raise TargetError(f"DoRA cannot adapt {name}: output row(s) {zero[:5]} of its "
                                  f"weight are all zeros, so the direction W / ||W|| is "
                                  f"undefined (0 / 0). Leave {name} out of the targets, or use "
                                  f"plain LoRA for it.")

    def count(self, d_in, d_out, r):
        return r * (d_in + d_out) + d_out             # A, B and the magnitude m

    def update(self, layer, p, x, y):
        """y = b + m / ||W + s B A|| * (W x + s B A x), written as peft adds it to y = W x + b
        (so that a live dropout, applied to the adapter's input only, matches peft too)."""
        w = base_weight(layer.base_layer)                             # (d_out, d_in)
        dx = p.lora_dropout(x.to(p.lora_A.weight.dtype))              # (..., d_in)
        ba = p.lora_B.weight @ p.lora_A.weight                        # (d_out, d_in)
        norm = row_norms(w.to(ba.dtype) + p.scale * ba.detach()).detach()   # a constant
        g = p.lora_magnitude_vector.weight / norm                     # (d_out,)
        b = layer.base_layer.bias
        if isinstance(p.lora_dropout, nn.Identity) or not layer.training:   # W dx = y - b
            wdx = y - b if b is not None else y
        else:
            wdx = F.linear(dx, w.to(dx.dtype))
        lora = p.lora_B(p.lora_A(dx))                                 # (..., d_out)
        return (y + (g - 1) * wdx + g * p.scale * lora).to(y.dtype)

    def delta(self, layer, p):
        """W' - W = m / ||W + s B A|| * (W + s B A) - W (the norms kept for unmerge)."""
        if layer.merged:
            return self.unmerge_delta(layer, p)
        w = base_weight(layer.base_layer).float()
        adapted = w + layer._delta(p)                                 # W + s B A
        norm = row_norms(adapted)
        p.__dict__["_dora_norm"] = norm               # a plain attribute, as HF's cache
        return (p.lora_magnitude_vector.weight.float() / norm)[:, None] * adapted - w

    def unmerge_delta(self, layer, p):
        """W' - W from the merged W': W = W' * ||W + s B A|| / m - s B A."""
        merged = base_weight(layer.base_layer).float()
        norm = p.__dict__.get("_dora_norm")
        if norm is None:
            raise RuntimeError("This DoRA layer holds no row norms from a merge, so W cannot "
                               "be recovered from the merged weight.")
        g = p.lora_magnitude_vector.weight.float() / norm.to(merged.device)
        return merged - (merged / g[:, None] - layer._delta(p))

    def to_hf_peft(self, model, hf_cfg, tensors):
        """A Hugging Face LoRA with use_dora=True; peft's file names m `...lora_magnitude_vector`
        (its save drops the `.weight`)."""
        m = ".lora_magnitude_vector.weight"
        return {**hf_cfg, "use_dora": True}, {k.removesuffix(".weight") if k.endswith(m) else k: v
                                               for k, v in tensors.items()}


def from_hf_tensors(tensors: dict) -> dict:
    """peft's `...lora_magnitude_vector` keys -> ours (`...lora_magnitude_vector.weight`)."""
    return {f"{k}.weight" if k.endswith(".lora_magnitude_vector") else k: v
            for k, v in tensors.items()}

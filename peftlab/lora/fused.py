"""LoRA's fast path: when a LoraLinear has nothing else to do, its whole forward is one fused
autograd step (core/lowrank.py: three matmuls forward, five backward).

    y = fused(layer, x)       # the result, or None when the plain formula must run

It applies when the first adapter is active and unmerged, no mixed batch is routed, no
dropout is live, the variant is plain LoRA and core.lowrank.can_fuse accepts the base layer
and dtypes (a dense nn.Linear or Conv1D with a frozen weight).
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.core.layers import is_conv1d
from peftlab.core.lowrank import can_fuse, lowrank_linear


def fused(layer, x: torch.Tensor) -> torch.Tensor | None:
    """base(x) + scale * B(A(x)) in one step, or None when it does not apply (see above)."""
    b = layer.base_layer
    if layer.active != layer.primary or layer.merged or layer.rows is not None or \
            layer.variant != "lora" or \
            (layer.training and isinstance(layer.lora_dropout, nn.Dropout)) or \
            not can_fuse(b, x, layer.lora_A.weight):
        return None
    return lowrank_linear(x, b.weight, b.bias, layer.lora_A.weight, layer.lora_B.weight,
                          layer.scale, is_conv1d(b))

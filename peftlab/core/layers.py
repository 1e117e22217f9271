"""Layer helpers every method shares: the marker base class of wrappers, and the one import
of transformers' Conv1D (GPT-2's linear layer: y = x @ W + b, W stored as (d_in, d_out))."""

from __future__ import annotations

import torch
from torch import nn

try:  # GPT-2 style "linear" layers; without transformers there is nothing of that kind
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = None

# the layers "all-linear" and the linear-only methods (AdaLoRA) accept
LINEAR_TYPES: tuple[type, ...] = (nn.Linear, Conv1D) if Conv1D is not None else (nn.Linear,)


def is_conv1d(module: nn.Module) -> bool:
    return Conv1D is not None and isinstance(module, Conv1D)


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear or a Conv1D."""
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]
    return module.in_features, module.out_features


class AdapterLayer(nn.Module):
    """Marker base class for every peftlab wrapper around a base layer (`self.base_layer`)."""

    method = "adapter"


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype of an adapter on a base weight: fp32 on fp16 / bf16 bases (as Hugging Face
    PEFT does: small low-precision updates would round away, and torch's GradScaler refuses
    fp16 gradients), the base's own dtype otherwise. Adapter outputs are cast back."""
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


def tied_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters that more than one module holds (tied weights, e.g. GPT-2's
    wte.weight and lm_head.weight)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {i for i, n in seen.items() if n > 1}

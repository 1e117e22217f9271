"""Layer helpers every method shares: the marker base class of wrappers, and the one import
of transformers' Conv1D (GPT-2's linear layer: y = x @ W + b, W stored as (d_in, d_out))."""

from __future__ import annotations

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

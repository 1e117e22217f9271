"""Bottleneck adapters, from scratch: a small MLP with a residual, inserted in every block.

The adapter (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP"):

    f(h) = s * W_up act(W_down h + b_down) + b_up        W_down: (m, d), W_up: (d, m), m << d

d is the hidden size, m the bottleneck (d // reduction_factor), act a nonlinearity, s a
constant scaling. W_up and b_up start at zero, so f = 0 and training starts exactly at the
base model. Trainable numbers per adapter: 2 * d * m + m + d.

Where it goes, with h = Sublayer(x) the output of a block's attention or FFN (after its output
projection, before the skip connection):

    serial   (Houlsby)   h' = h + f(h)          the adapter reads the sublayer's output
    parallel (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
             Learning")   h' = h + f(x)          the adapter reads the sublayer's input

and the block goes on as before: LN(x + h') in a post-LN encoder (BERT), x + h' in a pre-LN
decoder (Llama, GPT-2). The nonlinearity sits between the two projections, so f is not a
linear map and cannot be folded into any base weight: adapters cost a little extra compute at
inference, for good (the price LoRA was designed to avoid).

Three wrappers put f in place; each keeps the module it wraps as `base_layer`, untouched:

    SerialAdapter         wraps the sublayer's output projection (BERT's attention.output.dense,
                          Llama's o_proj / down_proj, GPT-2's c_proj):  y -> y + f(y)
    ParallelAdapter       wraps a pre-LN sublayer (Llama's self_attn / mlp):
                          (x, ...) -> Sublayer(x, ...) + f(x)
    ParallelAdapterPostLN wraps a post-LN "residual module" (BERT's BertSelfOutput /
                          BertOutput, forward(h, x) = LN(dropout(dense(h)) + x)):
                          (h, x) -> base(h, x + f(x)) = LN(dense(h) + f(x) + x): the adapter's
                          output joins the sum inside the layer norm, the same sum as h + f(x)

The surgery (finding those modules in a model) is peftlab/bottleneck/surgery.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.layers import AdapterLayer, adapter_dtype

# the nonlinearity between the projections, by name (the names transformers and the
# `adapters` package use: "swish" is SiLU, x * sigmoid(x); "gelu" the exact erf form)
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu, "silu": F.silu,
               "tanh": torch.tanh}


class Bottleneck(nn.Module):
    """f(h) = scaling * up(act(down(h))): down (d -> m), act, up (m -> d) with up = 0."""

    def __init__(self, d: int, m: int, non_linearity: str = "swish", scaling: float = 1.0):
        super().__init__()
        self.down = nn.Linear(d, m)        # default init (kaiming-uniform), as He et al.
        self.up = nn.Linear(m, d)
        nn.init.zeros_(self.up.weight)     # f = 0 at the start: the base model, exactly
        nn.init.zeros_(self.up.bias)
        self.non_linearity, self.scaling = non_linearity, float(scaling)
        self.act = ACTIVATIONS[non_linearity]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.act(self.down(h))              # (..., m)  the bottleneck
        return self.scaling * self.up(z)        # (..., d)

    @staticmethod
    def count(d: int, m: int) -> int:
        """Trainable numbers of one adapter: W_down, b_down, W_up, b_up."""
        return 2 * d * m + m + d

    def extra_repr(self) -> str:
        return f"non_linearity={self.non_linearity!r}, scaling={self.scaling:g}"


def _through(adapter: Bottleneck, h: torch.Tensor) -> torch.Tensor:
    """f(h), computed in the adapter's dtype (fp32 on a half-precision base) and cast back."""
    return adapter(h.to(adapter.up.weight.dtype)).to(h.dtype)


class _Wrapper(AdapterLayer):
    """base_layer (frozen, untouched) + one Bottleneck `bottleneck` (trained)."""

    method = "bottleneck"

    def __init__(self, base_layer: nn.Module, d: int, m: int, non_linearity: str,
                 scaling: float, like: torch.Tensor):
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck = Bottleneck(d, m, non_linearity, scaling).to(like.device,
                                                                      adapter_dtype(like))


class SerialAdapter(_Wrapper):
    """Houlsby: y = base(x); y + f(y). Wraps a sublayer's output projection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)                  # (B, T, d)  the sublayer's output h
        return y + _through(self.bottleneck, y)


class ParallelAdapter(_Wrapper):
    """He et al.: Sublayer(x, ...) + f(x). Wraps a whole pre-LN sublayer (attention or MLP);
    x is its first input (the normalised hidden states), passed by position or as
    hidden_states=. An attention's (output, weights) tuple keeps its other entries."""

    def forward(self, *args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]          # (B, T, d)
        out = self.base_layer(*args, **kwargs)
        if isinstance(out, tuple):                                # attention: (h, weights)
            return (out[0] + _through(self.bottleneck, x),) + out[1:]
        return out + _through(self.bottleneck, x)


class ParallelAdapterPostLN(_Wrapper):
    """He et al. in a post-LN block: base(h, x) = LN(dropout(dense(h)) + x), so
    base(h, x + f(x)) = LN(dense(h) + f(x) + x). Wraps BERT's BertSelfOutput / BertOutput;
    x (input_tensor) is the input of the attention (or the FFN) these modules finish."""

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        x = input_tensor                                          # (B, T, d)
        return self.base_layer(hidden_states, x + _through(self.bottleneck, x))


WRAPPERS = (SerialAdapter, ParallelAdapter, ParallelAdapterPostLN)

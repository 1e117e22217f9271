"""The math of IA3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and
Cheaper than In-Context Learning"): learned vectors that rescale activations.

    keys, values:        y = l * (W x + b)          l: (d_out, 1), scales the layer's output
    the FFN's inner act: y = W (l * x) + b          l: (1, d_in),  scales the down projection's
                                                    input (the feed-forward vector)

Every l starts at ones, so training starts exactly at the base model; a layer trains d_out (or
d_in) numbers. Merging is exact: an output vector scales W's rows and the bias
(W <- l * W, b <- l * b), a feed-forward vector scales W's columns (W <- W * l).

    IA3Linear   nn.Linear and GPT-2's Conv1D (through the base-layer seam, core/base.py)

The vector is `ia3_l` with peft's shapes ((d_out, 1) or (1, d_in)), so state dicts map one to
one to Hugging Face PEFT's IA3 (tuners/ia3/layer.py). On fp16 / bf16 bases l stays fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.core.base import base_kind, base_weight
from peftlab.core.layers import AdapterLayer, adapter_dtype


class IA3Linear(AdapterLayer):
    """y = base(x) * l (keys, values), or y = base(x * l) (feedforward=True).

    x: (..., d_in) -> y: (..., d_out); l: (d_out, 1), or (1, d_in) for a feed-forward layer.
    """

    method = "ia3"

    def __init__(self, base_layer: nn.Module, feedforward: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.feedforward = feedforward
        self.merged = False
        d_in, d_out = base_kind(base_layer).dims(base_layer)
        w = base_weight(base_layer)
        shape = (1, d_in) if feedforward else (d_out, 1)
        self.ia3_l = nn.Parameter(torch.ones(shape, device=w.device, dtype=adapter_dtype(w)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        l = self.ia3_l.flatten()                                     # (d_in,) or (d_out,)
        if self.feedforward:
            return self.base_layer((x.to(l.dtype) * l).to(x.dtype))  # W (l * x) + b
        y = self.base_layer(x)                                       # (..., d_out)
        return (y * l).to(y.dtype)                                   # l * (W x + b)

    def scaled_weight(self) -> torch.Tensor:
        """The merged weight, canonical layout (d_out, d_in): l * W (rows) or W * l (columns)."""
        w = base_weight(self.base_layer).float()
        return w * self.ia3_l.float()              # (d_out, 1) or (1, d_in) broadcasts

    @torch.no_grad()
    def merge(self) -> None:
        """W <- l * W and b <- l * b (or W <- W * l); forward then skips l. No-op when merged."""
        if self.merged:
            return
        kind, w = base_kind(self.base_layer), base_weight(self.base_layer)
        kind.add_(self.base_layer, self.scaled_weight() - w.float())
        b = self.base_layer.bias
        if b is not None and not self.feedforward:
            b.copy_((b.float() * self.ia3_l.float().flatten()).to(b.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W / l (and b <- b / l): the base to float rounding. Refused where l has a zero
        (that row or column of W is gone from the merged weight)."""
        if not self.merged:
            return
        l = self.ia3_l.float()
        if (l == 0).any():
            raise ValueError("This IA3 vector has zero entries, so the merged weight lost those "
                             "rows / columns and cannot be unmerged; apply IA3 to a fresh base "
                             "and load the adapter instead.")
        kind, w = base_kind(self.base_layer), base_weight(self.base_layer)
        kind.add_(self.base_layer, w.float() / l - w.float())
        b = self.base_layer.bias
        if b is not None and not self.feedforward:
            b.copy_((b.float() / l.flatten()).to(b.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        kind = "feedforward (scales the input)" if self.feedforward else "scales the output"
        return f"{kind}, merged={self.merged}"

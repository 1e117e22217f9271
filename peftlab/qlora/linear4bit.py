"""Linear4bit: a frozen Linear whose weight is stored in NF4 and dequantized on the fly.

    y = x @ dequant(W_nf4).T + b          x: (..., d_in) -> y: (..., d_out), fp32 compute

It stores only buffers (the packed codes and the constants, peftlab/qlora/nf4.py), never a
dense weight: forward dequantizes (d_out, d_in) in fp32, multiplies, and lets it go; the
backward pass (grad_x = grad_y @ W) dequantizes again instead of keeping W alive, as
bitsandbytes' MatMul4Bit does. The weight is frozen (no weight gradient, ever).

It is one entry in the base-layer seam (peftlab/core/base.py), so LoRA wraps it like an
nn.Linear: weight(module) is the dequantized weight, nbytes(module) the bytes of codes and
constants, and add_ (merging in place) refuses: a 4-bit weight cannot hold W + delta.
Merging is done by pl.qlora.unload(model, merge=True), which dequantizes first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.base import BaseKind, register
from peftlab.core.layers import Conv1D, is_conv1d
from peftlab.qlora import nf4

CANNOT_MERGE = ("cannot merge into a 4-bit weight in place; use pl.qlora.unload(model, "
                "merge=True), which dequantizes the base to float and merges there")


class _Matmul4bit(torch.autograd.Function):
    """y = x @ W.T + b with W dequantized in forward and again in backward (not saved)."""

    @staticmethod
    def forward(ctx, x, bias, layer):
        w = layer.dequantize().to(x.dtype)                       # (d_out, d_in)
        ctx.layer, ctx.has_bias = layer, bias is not None
        return F.linear(x, w, bias)                              # (..., d_out)

    @staticmethod
    def backward(ctx, grad_y):
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ ctx.layer.dequantize().to(grad_y.dtype)   # (..., d_in)
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_b = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, grad_b, None


class Linear4bit(nn.Module):
    """A Linear (or GPT-2 Conv1D) whose weight lives as NF4 codes + constants (buffers).

    packed (ceil(n/2),) uint8; absmax (n_blocks,) float32, or with double quantization
    (n_blocks,) uint8 + absmax2 (ceil(n_blocks/256),) float32 + absmax_offset () float32.
    bias stays a float parameter (frozen by the method, like the rest of the base)."""

    def __init__(self, q: nf4.NF4Weight, bias: torch.Tensor | None, source: str = "nn.Linear"):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.block_size, self.double_quant, self.source = q.block_size, q.double_quant, source
        self.register_buffer("packed", q.packed)
        self.register_buffer("absmax", q.absmax)
        if q.double_quant:
            self.register_buffer("absmax2", q.absmax2)
            self.register_buffer("absmax_offset", q.offset.reshape(()))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)

    @classmethod
    def from_float(cls, module: nn.Module, block_size: int = 64, double_quant: bool = True,
                   name: str = "the layer") -> Linear4bit:
        """Quantize an nn.Linear or Conv1D (its weight in the canonical (d_out, d_in) layout)."""
        conv1d = is_conv1d(module)
        w = module.weight.T if conv1d else module.weight        # (d_out, d_in)
        q = nf4.quantize(w, block_size, double_quant, name=name)
        return cls(q, module.bias, "Conv1D" if conv1d else "nn.Linear")

    def dequantize(self) -> torch.Tensor:
        """W_hat (d_out, d_in), float32."""
        return nf4.dequantize(self.packed, self.absmax, (self.out_features, self.in_features),
                              self.block_size, getattr(self, "absmax2", None),
                              getattr(self, "absmax_offset", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Matmul4bit.apply(x, self.bias, self)

    def to_float(self, weight: torch.Tensor | None = None) -> nn.Module:
        """The float layer it came from (same class), holding `weight` (d_out, d_in)
        (default: the dequantized weight), bias copied."""
        w = (self.dequantize() if weight is None else weight).detach()
        dev = self.packed.device
        if self.source == "Conv1D":
            layer = Conv1D(self.out_features, self.in_features)
            layer.weight = nn.Parameter(w.T.contiguous().to(dev), requires_grad=False)
        else:
            layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                              device=dev)
            layer.weight = nn.Parameter(w.to(dev), requires_grad=False)
        if self.bias is not None:
            layer.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return layer

    def nbytes_by_part(self) -> dict[str, int]:
        """{"codes": packed 4-bit codes, "constants": absmax (and its 8-bit level)}."""
        codes = self.packed.numel() * self.packed.element_size()
        consts = sum(b.numel() * b.element_size() for n, b in self.named_buffers(recurse=False)
                     if n != "packed")
        return {"codes": codes, "constants": consts}

    def extra_repr(self) -> str:
        bits = nf4.bits_per_parameter(self.block_size, self.double_quant)
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nf4 block={self.block_size}, "
                f"double_quant={self.double_quant} ({bits:.3f} bits/param)")


def _refuse_add(module: nn.Module, delta: torch.Tensor) -> None:
    raise ValueError(f"Linear4bit: {CANNOT_MERGE}.")


KIND = register(BaseKind(
    "Linear4bit", "linear", lambda m: isinstance(m, Linear4bit),
    lambda m: (m.in_features, m.out_features), lambda m: m.dequantize(), _refuse_add,
    lambda m: sum(m.nbytes_by_part().values())))

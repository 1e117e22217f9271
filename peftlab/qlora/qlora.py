"""The math of QLoRA (Dettmers et al. 2023), one adapted layer:

    y = dequant(W_nf4) x + b + scale * B (A (dropout(x)))     A: (r, d_in), B: (d_out, r)

    W_nf4     the frozen weight in 4-bit NormalFloat, blocks of 64, double quantization
              (nf4.py: the code book, quantize, dequantize; bits per parameter derived)
    dequant   on the fly, in forward and again in backward (linear4bit.py: Linear4bit)
    A, B      LoRA's fp32 adapters (peftlab/lora/lora.py: LoraLinear), B = 0 at the start,
              so the adapted model starts at the dequantized base exactly

Gradients flow through the 4-bit base to A and B (and to earlier layers) but never into it:
d loss / dx = grad_y @ dequant(W_nf4) + (LoRA's term); W_nf4 has no gradient.
"""

from __future__ import annotations

from torch import nn

from peftlab.qlora.linear4bit import Linear4bit
from peftlab.qlora.nf4 import bits_per_parameter


def quantize_linear(module: nn.Module, block_size: int = 64, double_quant: bool = True,
                    name: str = "the layer") -> Linear4bit:
    """The 4-bit base of one layer: nn.Linear / Conv1D -> Linear4bit (codes + constants)."""
    return Linear4bit.from_float(module, block_size, double_quant, name)


def stored_fraction(block_size: int = 64, double_quant: bool = True) -> float:
    """Bytes of a quantized weight over its fp32 bytes: bits_per_parameter / 32
    (0.1290 at block 64 with double quantization, 0.1406 without)."""
    return bits_per_parameter(block_size, double_quant) / 32

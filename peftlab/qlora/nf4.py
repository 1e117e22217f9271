"""NF4: 4-bit NormalFloat with double quantization (Dettmers et al. 2023, QLoRA), from scratch.

A weight W (d_out, d_in) is flattened and cut into blocks of B = 64 numbers. Each block keeps
one fp32 scale c = max |w| (its absmax) and, per number, the 4-bit index of the nearest value
of a 16-entry code book q (the NF4 values, in [-1, 1]):

    code[i]  = argmin_k | w[i] / c_b - q[k] |        (a 4-bit index, 0..15)
    w_hat[i] = q[code[i]] * c_b                      (dequantized; c_b: the block's absmax)

The code book: pretrained weights are close to normal, so the 16 values are quantiles of
N(0, 1), chosen so that each bin holds the same probability mass, scaled to [-1, 1]. With
8 quantiles on the positive side and 7 on the negative side, both halves share an exact 0
(a zero weight, and a padded one, stays exactly zero):

    q = sort( Phi^-1(linspace(0.9677, 0.5, 9)[:-1]) ,  0 ,  -Phi^-1(linspace(0.9677, 0.5, 8)[:-1]) )
    q = q / max(q)                      Phi^-1(p) = sqrt(2) * erfinv(2p - 1)

Double quantization: the absmax constants (one fp32 per 64 numbers, 0.5 bit per parameter)
are themselves quantized to 8 bits, in blocks of 256, with bitsandbytes' dynamic 8-bit map,
after subtracting their mean (they are all positive; centred they use the signed map well):

    absmax  = code8[q2] * c2_b + mean         q2: uint8 per block of 64, c2: fp32 per 256

Bits per parameter, with blocks of 64 (and 256 for the second level):

    plain NF4:     4 + 32/64               = 4.5    bits   (0.1406 of fp32's 32)
    double quant:  4 + 8/64 + 32/(64*256)  = 4.127  bits   (0.1290 of fp32)

Storage follows bitsandbytes (bitsandbytes.functional.quantize_4bit, quant_type="nf4",
compress_statistics=True), so the codes and constants are the same numbers:
    * two codes per byte, the first in the high nibble: byte = code[2i] << 4 | code[2i+1];
      an odd count gets one padding code for 0 (index 7) in the last low nibble;
    * the last block may be short (5,184 or 1,728 absmax values on the chat model are not
      multiples of 256): its absmax is taken over the numbers it has (as if padded with 0);
    * an all-zero block has absmax 0: its numbers get code 7 (the exact 0), never 0/0;
    * nearest value: w * (1 / c) clamped to [-1, 1], bucketed by the code book's midpoints
      (a number exactly on a midpoint takes the lower value), as bitsandbytes' CPU path;
      the 8-bit absmax codes: as bitsandbytes' compiled CPU kernel (quantize_blockwise,
      csrc/cpu_ops.cpp), a * (1 / c2) snapped to a uniform grid of 65,536 points on [-1, 1]
      and looked up in a table of the grid points' nearest map values (quantize_blockwise_8bit
      says why that is not nearest rounding); an all-zero block of 256 gets code 0. The codes,
      absmax2, the mean and the dequantized weights are bitsandbytes' exactly
      (tests/test_qlora.py).

Dequantization is the hot path (it runs in every forward and backward of a 4-bit layer), so
it reads each byte once through a 256-entry table of value pairs:

    PAIRS[byte] = (q[byte >> 4], q[byte & 15])                   (256, 2)
    w_hat = PAIRS[packed].view(n_blocks, 64) * absmax[:, None]    one gather, one multiply
    (the gather reads each pair as one 8-byte word: _PAIR_WORDS)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)   # what bitsandbytes accepts
ABSMAX_BLOCK = 256                                          # the second level (double quant)
ZERO_CODE = 7                                               # q[7] == 0.0 exactly


def _ppf(p: torch.Tensor) -> torch.Tensor:
    """The standard normal's inverse CDF, Phi^-1(p) = sqrt(2) erfinv(2p - 1), in float64."""
    return math.sqrt(2.0) * torch.special.erfinv(2.0 * p.double() - 1.0)


def normal_float_code(offset: float = 0.9677083) -> torch.Tensor:
    """The 16 NF4 values (16,), float32, ascending, q[0] = -1, q[7] = 0, q[15] = 1.

    offset: the outermost quantile, (1 - 1/(2*15) + 1 - 1/(2*16)) / 2 in the paper: the
    extreme values sit at Phi^-1(offset) instead of at infinity."""
    pos = _ppf(torch.linspace(offset, 0.5, 9)[:-1]).float()      # 8 positive quantiles
    neg = (-_ppf(torch.linspace(offset, 0.5, 8)[:-1])).float()   # 7 negative quantiles
    q = torch.cat([neg, torch.zeros(1), pos]).sort().values      # the shared exact zero
    return q / q.max()


def dynamic_code() -> torch.Tensor:
    """bitsandbytes' signed dynamic 8-bit map (256,), float32, ascending (Dettmers 2015).

    For each exponent e = 0..6: 2^e evenly spaced fractions in [0.1, 1] (bin centres) times
    10^(e - 6), with both signs; then 0 and 1.0: 254 + 2 = 256 values. Small magnitudes get
    few fractions, large ones many (entry 0 is -0.99297: the map does not reach -1)."""
    parts = []
    for e in range(7):
        edges = torch.linspace(0.1, 1, 2 ** e + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        parts += [10.0 ** (e - 6) * centres, -(10.0 ** (e - 6)) * centres]
    return torch.cat(parts + [torch.tensor([0.0, 1.0])]).sort().values


NF4 = normal_float_code()                                       # (16,)
DYNAMIC = dynamic_code()                                        # (256,)
_NF4_BOUNDS = (NF4[:-1] + NF4[1:]) / 2                          # (15,) midpoints
_DYNAMIC_BOUNDS = (DYNAMIC[:-1] + DYNAMIC[1:]) / 2              # (255,) midpoints
# bitsandbytes' CPU lookup table for the 8-bit codes (see quantize_blockwise_8bit): grid point
# g_i = -1 + 2i / 65535 (float32, as the C++ computes it) -> the number of map midpoints below
# it (a grid point exactly on a midpoint takes the lower value), (65536,) int64
_LUT_SIZE = 65536


@functools.cache
def _dynamic_lut() -> torch.Tensor:
    """Built on first use, not at import: a 65,536-element op at import time would start
    torch's OpenMP pool in whatever process imports this module, and a process forked from
    it afterwards (compare's forkserver preloads the method packages) deadlocks in its
    first parallel op."""
    grid = -1.0 + (2.0 * torch.arange(_LUT_SIZE, dtype=torch.float32)) / (_LUT_SIZE - 1)
    return torch.bucketize(grid, _DYNAMIC_BOUNDS)


# PAIRS[byte] = (q[byte >> 4], q[byte & 15]): the dequantization table, (256, 2)
_BYTES = torch.arange(256)
PAIRS = torch.stack([NF4[_BYTES >> 4], NF4[_BYTES & 15]], dim=1)
# the same table with each pair as one 8-byte word (256,): a 1-d gather of words is the
# cheapest lookup on a CPU; viewed back as float32 it is the pairs in order
_PAIR_WORDS = PAIRS.contiguous().view(torch.int64).view(-1)


@dataclass
class NF4Weight:
    """A weight in NF4: what a 4-bit layer stores (all tensors; shape and sizes are ints).

    packed: (ceil(n / 2),) uint8, two codes per byte. absmax: (n_blocks,) float32, or with
    double quantization (n_blocks,) uint8 codes into DYNAMIC, scaled by absmax2
    (ceil(n_blocks / 256),) float32 and shifted by offset () float32 (their mean).
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    shape: tuple[int, ...]
    block_size: int = 64
    absmax2: torch.Tensor | None = None
    offset: torch.Tensor | None = None

    @property
    def double_quant(self) -> bool:
        return self.absmax2 is not None

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"packed": self.packed, "absmax": self.absmax}
        if self.double_quant:
            out.update(absmax2=self.absmax2, offset=self.offset)
        return out

    def nbytes(self) -> dict[str, int]:
        """{"codes": bytes of the packed 4-bit codes, "constants": bytes of everything else}."""
        t = self.tensors()
        return {"codes": _bytes(t.pop("packed")), "constants": sum(map(_bytes, t.values()))}


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or block_size not in BLOCK_SIZES:
        raise ValueError(f"NF4 block_size must be one of {BLOCK_SIZES} (as in bitsandbytes), "
                         f"got {block_size!r}; QLoRA uses 64.")


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """x (n,) -> (ceil(n / size), size), the last block padded with zeros."""
    pad = -x.numel() % size
    return torch.nn.functional.pad(x, (0, pad)).view(-1, size)


def quantize_blockwise_8bit(x: torch.Tensor, block_size: int = ABSMAX_BLOCK
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (n,) uint8, absmax (n_blocks,) float32) of x in blocks of `block_size`, code for
    code bitsandbytes' compiled CPU quantize_blockwise with the dynamic map.

    Not plain nearest rounding. bitsandbytes 0.50 (csrc/cpu_ops.cpp: quantize_cpu_impl,
    build_quantize_lut, norm_to_lut_index) replaced the per-number binary search by one table
    read: v = x * (1 / absmax) clamped to [-1, 1] is first snapped to the nearest point of a
    uniform grid of 65,536 points on [-1, 1] (step 2 / 65535 = 3.05e-5),

        i = trunc((v + 1) * 0.5 * 65535 + 0.5)            (float32 throughout)

    and the code is the grid point's nearest map value, _dynamic_lut()[i] (computed exactly,
    from the midpoints). So a v within half a step (1.5e-5) of a midpoint of the map takes the
    side its grid point is on, not its own, and near 0, where the map's entries are closer
    than the grid's step (|v| < ~1e-4), the grid cannot tell them apart at all. Exact nearest
    rounding (the torch reference, argmin |v - map|) gives another code for ~0.2% of the
    absmax codes of a 576 x 576 weight (one step off; several near 0). Whether the compiler
    fuses `* 65535 + 0.5` into one FMA does not matter: both give the same i for every
    float32 in [0, 1] (checked exhaustively). An all-zero block has absmax 0 and codes 0
    (the map's -0.99297; times 0 it is 0)."""
    n = x.numel()
    blocks = _blocks(x.float().reshape(-1), block_size)               # (nb, 256)
    absmax = blocks.abs().amax(dim=1)                                  # (nb,)
    inv = 1.0 / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    v = (blocks * inv[:, None]).clamp(-1.0, 1.0)                       # (nb, 256)
    grid = ((v + 1.0) * 0.5 * (_LUT_SIZE - 1) + 0.5).long()            # trunc: >= 0.5 > 0
    codes = _dynamic_lut().to(x.device)[grid]                            # (nb, 256)
    codes = codes.masked_fill((absmax == 0)[:, None], 0)
    return codes.reshape(-1)[:n].to(torch.uint8), absmax


def quantize(w: torch.Tensor, block_size: int = 64, double_quant: bool = True,
             name: str = "the weight") -> NF4Weight:
    """NF4 of `w` (any shape, float): blockwise absmax, 4-bit codes, packed two per byte;
    the absmax constants 8-bit quantized when double_quant (see the module docstring).

    Raises ValueError for a bad block size or a weight with inf / nan (naming it by `name`)."""
    check_block_size(block_size)
    w = w.detach()
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"Cannot quantize {name} to NF4: it holds {bad} non-finite value(s) "
                         f"(inf or nan), which no 4-bit code represents. Fix the weights (or "
                         f"leave this layer out of the targets).")
    flat = w.float().reshape(-1)                                   # (n,)
    n = flat.numel()
    blocks = _blocks(flat, block_size)                             # (nb, B), zero padded
    absmax = blocks.abs().amax(dim=1)                              # (nb,)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1)
    codes = torch.bucketize(scaled.reshape(-1)[:n], _NF4_BOUNDS).to(torch.uint8)   # (n,)
    if n % 2:
        codes = torch.cat([codes, codes.new_full((1,), ZERO_CODE)])
    packed = (codes[0::2] << 4) | codes[1::2]                      # (ceil(n/2),)
    if not double_quant:
        return NF4Weight(packed, absmax, tuple(w.shape), block_size)
    offset = absmax.mean()
    q2, absmax2 = quantize_blockwise_8bit(absmax - offset)
    return NF4Weight(packed, q2, tuple(w.shape), block_size, absmax2, offset)


def dequantize_absmax(q2: torch.Tensor, absmax2: torch.Tensor, offset: torch.Tensor,
                      block_size: int = ABSMAX_BLOCK) -> torch.Tensor:
    """absmax (n_blocks,) float32 = DYNAMIC[q2] * absmax2[block] + offset."""
    n = q2.numel()
    vals = _blocks(DYNAMIC.to(q2.device)[q2.int()], block_size)   # (nb2, 256)
    return (vals * absmax2[:, None]).reshape(-1)[:n] + offset


def dequantize(packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...],
               block_size: int = 64, absmax2: torch.Tensor | None = None,
               offset: torch.Tensor | None = None) -> torch.Tensor:
    """w_hat (shape), float32 = q[code] * absmax of its block: one table lookup per byte."""
    if absmax2 is not None:
        absmax = dequantize_absmax(absmax, absmax2, offset)        # (nb,) float32
    n = math.prod(shape)
    words = _PAIR_WORDS.to(packed.device)
    per_block = block_size // 2                                    # bytes per block
    if packed.numel() % per_block:                                 # a short last block
        packed = torch.nn.functional.pad(packed, (0, -packed.numel() % per_block),
                                         value=ZERO_CODE * 17)     # 0x77: two zeros
    vals = words.index_select(0, packed.long()).view(torch.float32)  # (2 * n_bytes,)
    w = vals.view(-1, block_size) * absmax[:, None]                # (nb, B)
    w = w.view(-1)
    return (w if w.numel() == n else w[:n]).view(shape)


def dequantize_weight(q: NF4Weight) -> torch.Tensor:
    return dequantize(q.packed, q.absmax, q.shape, q.block_size, q.absmax2, q.offset)


def bits_per_parameter(block_size: int = 64, double_quant: bool = True) -> float:
    """4 + 32 / B, or 4 + 8 / B + 32 / (B * 256) with double quantization."""
    return 4 + (8 / block_size + 32 / (block_size * ABSMAX_BLOCK) if double_quant
                else 32 / block_size)

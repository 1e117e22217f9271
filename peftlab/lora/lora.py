"""The math of LoRA (Hu et al., 2021): layers that wrap (do not subclass) a frozen base layer.

    y = W x + b + scale * B (A (dropout(x)))        A: (r, d_in), B: (d_out, r)
    scale = alpha / r        (or alpha / sqrt(r) with rsLoRA, Kalajdzievski 2023)

    LoraLinear     nn.Linear and transformers' Conv1D (GPT-2; weight stored transposed); in
                   the common case one fused autograd step (core/lowrank.py: 3 matmuls forward)
    LoraConv2d     nn.Conv2d (groups=1): A is a conv with the base's kernel, B a 1x1 conv
    LoraEmbedding  nn.Embedding: A, B are plain parameters, as in Hugging Face PEFT

On fp16 / bf16 bases A and B stay fp32 and the update is cast back (as HF PEFT does).

The pieces beside this file: the fused fast path (lora/fused.py), named adapters and mixed
batches (lora/routing.py), variants of LoRA such as DoRA (lora/variants.py: how the update is
parametrised, added, merged and saved), and the base layers LoRA can wrap, read and merge into
(peftlab/core/base.py: nn.Linear, Conv1D, Conv2d, Embedding, and any kind registered there).

Names and initialisation follow Hugging Face PEFT (lora_A / lora_B, lora_embedding_A / _B,
`base_layer`): state dicts map one to one, adapters load there (and back) with equal outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.base import base_kind, base_weight
from peftlab.core.layers import AdapterLayer, Conv1D, adapter_dtype, is_conv1d
from peftlab.lora import variants
from peftlab.lora.fused import fused
from peftlab.lora.routing import LoraParts, NamedAdapters, routed  # noqa: F401 (LoraParts: API)
from peftlab.lora.variants import lora_scale

# the built-in base layers; any kind registered in peftlab/core/base.py is wrapped as well
SUPPORTED: tuple[type, ...] = tuple(t for t in (nn.Linear, nn.Conv2d, nn.Embedding, Conv1D) if t)
WRAPS = {"linear": "LoraLinear", "conv2d": "LoraConv2d", "embedding": "LoraEmbedding"}


def dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a supported layer; for Conv2d d_in counts the kernel: in * kh * kw."""
    kind = base_kind(module)
    if kind is None:
        raise TypeError(f"LoRA cannot wrap {type(module).__name__}.")
    if kind.family == "conv2d":
        return module.in_channels * math.prod(module.kernel_size), module.out_channels
    return kind.dims(module)


def max_rank(module: nn.Module) -> int:
    """The largest useful rank: an update of shape (d_out, d_in) has rank <= min(d_out, d_in)."""
    return min(dims(module))


class LoraLayer(NamedAdapters, AdapterLayer):
    """Common part: r, alpha, scale, the variant, the `merged` flag, merge/unmerge on the
    base weight (through the base-layer seam, peftlab/core/base.py), and the named adapters
    (peftlab/lora/routing.py). Each layer defines the formula: _build(p, r, dropout),
    _update(p, x) = scale * B(A(dropout(x))) and _delta(p) = scale * B @ A (canonical layout)."""

    method = "lora"

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, rslora: bool = False,
                 variant: str = "lora"):
        super().__init__()
        variants.get(variant)                   # an unknown name raises before anything
        self.base_layer = base_layer
        self.r, self.alpha, self.scale = r, alpha, lora_scale(alpha, r, rslora)
        self.variant = variant                  # a name in peftlab/lora/variants.py
        self.merged = False   # True while the update sits inside the base weight
        self.primary = "default"       # the name of the adapter held on the layer itself
        self.active: str | None = "default"   # the adapter forward adds; None: base only
        self.rows: list | None = None  # one adapter name per batch row (mixed batches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = base(x) + scale * B(A(dropout(x))), the formula of _update, as the variant adds
        it; named adapters routed per row (LoraLinear first tries the fused step)."""
        y = self.base_layer(x)                                      # (..., d_out)
        if self.merged:
            self._check_merged_forward()
            return y
        if self.rows is not None or self.active != self.primary:
            return routed(self, x, y)                               # lora/routing.py
        return self.add_update(self, x, y)                          # y + scale * B A x

    def add_update(self, p: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The output with adapter `p` (the layer or a LoraParts) added to y = base(x), as this
        layer's variant adds it (plain LoRA: y + _update(p, x))."""
        return variants.get(self.variant).update(self, p, x, y)

    def _check_merged_forward(self) -> None:
        if self.rows is not None:
            raise RuntimeError("A merged LoRA layer cannot serve a mixed-adapter batch (its "
                               "weight holds one adapter): call pl.lora.unmerge(model) first.")

    @staticmethod
    def count(module: nn.Module, r: int) -> int:
        """Adapter parameters for `module` at rank r: r * (d_in + d_out) (conv: B is 1x1)."""
        d_in, d_out = dims(module)
        return r * (d_in + d_out)

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """W' - W of adapter `name` (default: the first; plain LoRA: scale * B @ A), in the
        layout the base layer stores its weight (Conv1D: (d_in, d_out))."""
        d = variants.get(self.variant).delta(self, self.parts(name or self.primary))
        return d.T if base_kind(self.base_layer).transposed else d

    def _merge_delta(self, unmerge: bool = False) -> torch.Tensor:
        """The canonical W' - W of the adapter being merged (zeros where it has no tensors);
        unmerge=True: computed from the merged weight (variants.py unmerge_delta)."""
        name = self.__dict__.get("_merged_name", self.primary)
        if name not in self.adapter_names():     # the adapter does not target this layer
            return torch.zeros_like(base_weight(self.base_layer))
        v = variants.get(self.variant)
        return (v.unmerge_delta if unmerge else v.delta)(self, self.parts(name))

    @torch.no_grad()
    def merge(self, untie: bool = False) -> None:
        """W <- W + delta of the active adapter; forward then skips A and B. A no-op when
        merged. untie=True (W tied to another module, e.g. GPT-2's wte and lm_head): the layer
        gets its own merged copy and the shared W stays as it was for the other module;
        unmerge() puts the shared tensor back (tie restored, bit for bit)."""
        if self.merged:
            return
        if self.active is None:
            raise RuntimeError("Adapters are disabled (pl.disable_adapters): there is no "
                               "adapter to merge. Merge outside the `with` block.")
        self.__dict__["_merged_name"] = self.active
        kind = base_kind(self.base_layer)
        if untie:                                 # tied weights are dense: a merged copy
            w = self.base_layer.weight
            d = self._merge_delta()
            self.__dict__["_tied_weight"] = w     # a plain attribute: not registered twice
            self.base_layer.weight = nn.Parameter(
                w.detach() + (d.T if kind.transposed else d).to(w.dtype), requires_grad=False)
        else:
            kind.add_(self.base_layer, self._merge_delta())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - delta (or the tied tensor back after an untying merge); a no-op when not
        merged."""
        if not self.merged:
            return
        tied = self.__dict__.pop("_tied_weight", None)
        if tied is not None:
            self.base_layer.weight = tied
        else:
            base_kind(self.base_layer).add_(self.base_layer, -self._merge_delta(unmerge=True))
        self.__dict__.pop("_merged_name", None)
        self.merged = False

    # True while merged into an own copy of a tied weight (see merge(untie=True))
    untied = property(lambda self: "_tied_weight" in self.__dict__)

    def extra_repr(self) -> str:
        v = "" if self.variant == "lora" else f", variant={self.variant}"
        return f"r={self.r}, alpha={self.alpha}, scale={self.scale:g}{v}, merged={self.merged}"


def _kaiming(weight: torch.Tensor) -> None:
    # what nn.Linear does to its weight (and loralib / HF PEFT to A)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


class LoraLinear(LoraLayer):
    """y = base(x) + scale * B(A(dropout(x)))

    x: (..., d_in) -> y: (..., d_out); A: (r, d_in), B: (d_out, r).
    delta = scale * B @ A, (d_out, d_in) (delta_weight: transposed to (d_in, d_out) for Conv1D).
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False, variant: str = "lora"):
        super().__init__(base_layer, r, alpha, rslora, variant)
        self.fan_in_fan_out = is_conv1d(base_layer)
        self._build(self, r, dropout)
        variants.get(variant).build(self, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused step (lora/fused.py) when that is all there is to do; else the formula."""
        fast = fused(self, x)
        return fast if fast is not None else super().forward(x)

    def _build(self, p: nn.Module, r: int, dropout: float) -> None:
        d_in, d_out = dims(self.base_layer)
        w = base_weight(self.base_layer)
        p.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dt = adapter_dtype(w)
        p.lora_A = nn.Linear(d_in, r, bias=False, device=w.device, dtype=dt)
        p.lora_B = nn.Linear(r, d_out, bias=False, device=w.device, dtype=dt)
        _kaiming(p.lora_A.weight)
        nn.init.zeros_(p.lora_B.weight)        # the update starts at exactly zero

    def _update(self, p: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.to(p.lora_A.weight.dtype)
        return p.lora_B(p.lora_A(p.lora_dropout(x))) * p.scale      # (..., d_out)

    def _delta(self, p: nn.Module) -> torch.Tensor:
        return (p.lora_B.weight.float() @ p.lora_A.weight.float()) * p.scale   # (d_out, d_in)


class LoraConv2d(LoraLayer):
    """y = base(x) + scale * B(A(dropout(x)))

    x: (N, C_in, H, W) -> y: (N, C_out, H', W'). A: a Conv2d C_in -> r with the base's kernel,
    stride, padding and dilation, weight (r, C_in, kh, kw); B: a 1x1 Conv2d r -> C_out, weight
    (C_out, r, 1, 1). delta_weight[o, i, u, v] = scale * sum_k B[o, k] A[k, i, u, v]."""

    def __init__(self, base_layer: nn.Conv2d, r: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False, variant: str = "lora"):
        super().__init__(base_layer, r, alpha, rslora, variant)
        self._build(self, r, dropout)
        variants.get(variant).build(self, self)

    def _build(self, p: nn.Module, r: int, dropout: float) -> None:
        b, w = self.base_layer, base_weight(self.base_layer)
        p.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dt = adapter_dtype(w)
        p.lora_A = nn.Conv2d(b.in_channels, r, b.kernel_size, b.stride, b.padding, b.dilation,
                             bias=False, padding_mode=b.padding_mode, device=w.device, dtype=dt)
        p.lora_B = nn.Conv2d(r, b.out_channels, 1, 1, bias=False, device=w.device, dtype=dt)
        _kaiming(p.lora_A.weight)
        nn.init.zeros_(p.lora_B.weight)

    def _update(self, p: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.to(p.lora_A.weight.dtype)
        return p.lora_B(p.lora_A(p.lora_dropout(x))) * p.scale

    def _delta(self, p: nn.Module) -> torch.Tensor:
        b = p.lora_B.weight.float()[:, :, 0, 0]                      # (C_out, r)
        return torch.einsum("ok,kiuv->oiuv", b, p.lora_A.weight.float()) * p.scale


class LoraEmbedding(LoraLayer):
    """y = base(ids) + scale * A.T[ids] @ B.T

    ids: (...) ints -> y: (..., dim). A: (r, num_embeddings), B: (dim, r), so A.T is a small
    (num_embeddings, r) embedding table. delta_weight = scale * (B @ A).T, (num_embeddings, dim).
    Following HF PEFT, A starts at zero and B normal (the reverse of Linear: a zero A still
    lets B get gradients), and there is no dropout (the inputs are token ids).
    max_norm (the base renormalises looked-up rows to norm <= max_norm) applies to the adapted
    rows W[ids] + delta[ids], exactly what the merged layer looks up, so merged and unmerged
    outputs agree (HF PEFT renormalises the rows of A instead); as in the base layer, a merged
    lookup then renormalises those rows of W in place.
    """

    def __init__(self, base_layer: nn.Embedding, r: int, alpha: float, rslora: bool = False,
                 variant: str = "lora"):
        super().__init__(base_layer, r, alpha, rslora, variant)
        self._build(self, r, 0.0)
        variants.get(variant).build(self, self)

    def _build(self, p: nn.Module, r: int, dropout: float) -> None:
        w = base_weight(self.base_layer)
        n, dim = self.base_layer.num_embeddings, self.base_layer.embedding_dim
        dt = adapter_dtype(w)
        p.lora_embedding_A = nn.Parameter(torch.zeros(r, n, device=w.device, dtype=dt))
        p.lora_embedding_B = nn.Parameter(torch.empty(dim, r, device=w.device, dtype=dt))
        nn.init.normal_(p.lora_embedding_B)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b = self.base_layer
        if self.merged:
            self._check_merged_forward()
            return b(ids)
        if b.max_norm is None:
            y = b(ids)                                              # (..., dim)
        else:                        # look up without the in-place renorm; renorm the sum below
            y = F.embedding(ids, b.weight, b.padding_idx, None, b.norm_type,
                            b.scale_grad_by_freq, b.sparse)
        out = routed(self, ids, y)            # y + scale * A.T[ids] B.T (or each row's adapter)
        if b.max_norm is not None:   # as torch.embedding_renorm_: rows above max_norm scaled down
            norm = out.norm(p=b.norm_type, dim=-1, keepdim=True)
            out = out * torch.where(norm > b.max_norm, b.max_norm / (norm + 1e-7), 1.0)
        return out

    def _update(self, p: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        b = self.base_layer
        after_a = F.embedding(ids, p.lora_embedding_A.T, padding_idx=b.padding_idx,
                              scale_grad_by_freq=b.scale_grad_by_freq, sparse=b.sparse)  # (..., r)
        return (after_a @ p.lora_embedding_B.T) * p.scale                               # (..., dim)

    def _delta(self, p: nn.Module) -> torch.Tensor:
        d = p.lora_embedding_B.float() @ p.lora_embedding_A.float()          # (dim, n)
        return d.T * p.scale

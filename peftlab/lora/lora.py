"""The math of LoRA (Hu et al., 2021): layers that wrap (do not subclass) a frozen base layer.

    y = W x + b + scale * B (A (dropout(x)))        A: (r, d_in), B: (d_out, r)
    scale = alpha / r        (or alpha / sqrt(r) with rsLoRA, Kalajdzievski 2023)

    LoraLinear     nn.Linear and transformers' Conv1D (GPT-2; weight stored transposed); in
                   the common case one fused autograd step (core/lowrank.py: 3 matmuls forward)
    LoraConv2d     nn.Conv2d (groups=1): A is a conv with the base's kernel, B a 1x1 conv
    LoraEmbedding  nn.Embedding: A, B are plain parameters, as in Hugging Face PEFT

On fp16 / bf16 bases A and B stay fp32 and the update is cast back (as HF PEFT does).

Named adapters on one base (pl.load_adapter(model, path, name=...)): the first adapter keeps
its tensors on the layer itself (lora_A / lora_B: state_dict keys, saved files and the HF PEFT
layout exactly as with one adapter); each further one is a LoraParts in the ModuleDict
`others`. `active` names the adapter forward adds (None: base only); `rows` (set by
pl.lora.named.route) names one per batch row: one forward pass serves mixed adapters.

Names and initialisation follow Hugging Face PEFT (lora_A / lora_B, lora_embedding_A / _B,
`base_layer`): state dicts map one to one, adapters load there (and back) with equal outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.layers import AdapterLayer, Conv1D, adapter_dtype, is_conv1d
from peftlab.core.lowrank import can_fuse, lowrank_linear

SUPPORTED: tuple[type, ...] = tuple(t for t in (nn.Linear, nn.Conv2d, nn.Embedding, Conv1D) if t)


def lora_scale(alpha: float, r: int, rslora: bool = False) -> float:
    """alpha / r (Hu et al.), or alpha / sqrt(r) (rsLoRA: keeps large-r updates from fading)."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a supported layer; for Conv2d d_in counts the kernel: in * kh * kw."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels * math.prod(module.kernel_size), module.out_channels
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if is_conv1d(module):                      # GPT-2: weight stored as (d_in, d_out)
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"LoRA cannot wrap {type(module).__name__}.")


def max_rank(module: nn.Module) -> int:
    """The largest useful rank: an update of shape (d_out, d_in) has rank <= min(d_out, d_in)."""
    return min(dims(module))


class LoraParts(nn.Module):
    """The tensors of one named adapter beside the first: lora_A, lora_B (and lora_dropout)
    with its own r, alpha and scale. The first adapter keeps the same attributes on the layer
    itself, so each layer's math reads `p.lora_A`, `p.scale` with p = the layer or a LoraParts."""

    def __init__(self, r: int, alpha: float, rslora: bool = False):
        super().__init__()
        self.r, self.alpha, self.scale = r, alpha, lora_scale(alpha, r, rslora)

    extra_repr = lambda self: f"r={self.r}, alpha={self.alpha}, scale={self.scale:g}"


class LoraLayer(AdapterLayer):
    """Common part: r, alpha, scale, the `merged` flag, merge/unmerge on the base weight, and
    the named adapters (see the module docstring)."""

    method = "lora"

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, rslora: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.r, self.alpha, self.scale = r, alpha, lora_scale(alpha, r, rslora)
        self.merged = False   # True while scale * B @ A sits inside base_layer.weight
        self.primary = "default"       # the name of the adapter held on the layer itself
        self.active: str | None = "default"   # the adapter forward adds; None: base only
        self.rows: list | None = None  # one adapter name per batch row (mixed batches)

    # --- named adapters ------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        others = self._modules.get("others")
        return [self.primary, *(others.keys() if others is not None else [])]

    def parts(self, name: str) -> nn.Module:
        """The holder of adapter `name`'s tensors: the layer itself for the first adapter."""
        if name == self.primary:
            return self
        others = self._modules.get("others")
        if others is None or name not in others:
            raise KeyError(f"{name!r} is not an adapter of this layer "
                           f"(it has {self.adapter_names()}).")
        return others[name]

    def make_parts(self, r: int, alpha: float, dropout: float = 0.0,
                   rslora: bool = False) -> LoraParts:
        """A new holder of A, B (frozen: for inference); add_adapter(name, parts) puts it in."""
        p = LoraParts(r, alpha, rslora)
        self._build(p, r, dropout)
        return p.requires_grad_(False)

    def add_adapter(self, name: str, parts: LoraParts) -> None:
        if name == self.primary:
            raise ValueError(f"{name!r} is the adapter held on the layer itself.")
        if "others" not in self._modules:
            self.others = nn.ModuleDict()
        self.others[name] = parts              # replaces an adapter of that name

    def remove_adapter(self, name: str) -> None:
        if name == self.primary:
            raise ValueError(f"{name!r} is held on the layer itself and cannot be removed alone.")
        self.parts(name)                          # KeyError naming the adapters if unknown
        del self.others[name]
        if not len(self.others):
            del self.others

    def _added(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """What the adapters add to y = base(x): the active adapter's update, or with `rows` set
        row i gets adapter rows[i]'s (None / an adapter not on this layer: nothing). Rows are
        gathered per adapter, so each row's numbers are those it would get alone."""
        names = self.adapter_names()
        if self.rows is None:
            if self.active not in names:
                return None
            return self._update(self.parts(self.active), x).to(y.dtype)
        if len(self.rows) != x.shape[0]:
            raise ValueError(f"{len(self.rows)} adapter names for a batch of {x.shape[0]} rows: "
                             f"give one adapter name per input.")
        out = torch.zeros_like(y)
        for name in dict.fromkeys(self.rows):
            if name not in names:
                continue
            idx = torch.tensor([i for i, n in enumerate(self.rows) if n == name],
                               device=x.device)
            upd = self._update(self.parts(name), x.index_select(0, idx))
            out = out.index_copy(0, idx, upd.to(y.dtype))
        return out

    def _check_merged_forward(self) -> None:
        if self.rows is not None:
            raise RuntimeError("A merged LoRA layer cannot serve a mixed-adapter batch (its "
                               "weight holds one adapter): call pl.lora.unmerge(model) first.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Linear and Conv2d: y = base(x) + what the adapters add (nothing once merged)."""
        y = self.base_layer(x)                                      # (..., d_out)
        if self.merged:
            self._check_merged_forward()
            return y
        add = self._added(x, y)
        return y if add is None else y + add

    @staticmethod
    def count(module: nn.Module, r: int) -> int:
        """Adapter parameters for `module` at rank r: r * (d_in + d_out) (conv: B is 1x1)."""
        d_in, d_out = dims(module)
        return r * (d_in + d_out)

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """scale * B @ A of adapter `name` (default: the first), in the base weight's shape."""
        return self._delta(self.parts(name or self.primary))

    # each layer defines _build(p, r, dropout), _update(p, x) and _delta(p)

    def _delta_for_merge(self) -> torch.Tensor:
        w = self.base_layer.weight
        name = self.__dict__.get("_merged_name", self.primary)
        if name not in self.adapter_names():     # the adapter does not target this layer
            return torch.zeros_like(w)
        return self.delta_weight(name).to(w.dtype)

    @torch.no_grad()
    def merge(self, untie: bool = False) -> None:
        """W <- W + scale * B @ A of the active adapter; forward then skips A and B. A no-op
        when merged. untie=True (W tied to another module, e.g. GPT-2's wte and lm_head): the
        layer gets its own merged copy and the shared W stays as it was for the other module;
        unmerge() puts the shared tensor back (tie restored, bit for bit)."""
        if self.merged:
            return
        if self.active is None:
            raise RuntimeError("Adapters are disabled (pl.disable_adapters): there is no "
                               "adapter to merge. Merge outside the `with` block.")
        self.__dict__["_merged_name"] = self.active
        w = self.base_layer.weight
        if untie:
            self.__dict__["_tied_weight"] = w     # a plain attribute: not registered twice
            self.base_layer.weight = nn.Parameter(w.detach() + self._delta_for_merge(),
                                                  requires_grad=False)
        else:
            w.add_(self._delta_for_merge())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - scale * B @ A (or the tied tensor back after an untying merge); a no-op
        when not merged."""
        if not self.merged:
            return
        tied = self.__dict__.pop("_tied_weight", None)
        if tied is not None:
            self.base_layer.weight = tied
        else:
            self.base_layer.weight.sub_(self._delta_for_merge())
        self.__dict__.pop("_merged_name", None)
        self.merged = False

    # True while merged into an own copy of a tied weight (see merge(untie=True))
    untied = property(lambda self: "_tied_weight" in self.__dict__)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scale={self.scale:g}, merged={self.merged}"


def _kaiming(weight: torch.Tensor) -> None:
    # what nn.Linear does to its weight (and loralib / HF PEFT to A)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


class LoraLinear(LoraLayer):
    """y = base(x) + scale * B(A(dropout(x)))

    x: (..., d_in) -> y: (..., d_out); A: (r, d_in), B: (d_out, r).
    delta_weight = scale * B @ A, (d_out, d_in); transposed to (d_in, d_out) for Conv1D.
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False):
        super().__init__(base_layer, r, alpha, rslora)
        self.fan_in_fan_out = is_conv1d(base_layer)
        self._build(self, r, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused step (core/lowrank.py) when that is all there is to do: the first
        adapter active, no dropout to apply, nothing to cast; LoraLayer.forward otherwise."""
        b = self.base_layer
        if self.active != self.primary or self.merged or self.rows is not None or \
                (self.training and isinstance(self.lora_dropout, nn.Dropout)) or \
                not can_fuse(b, x, self.lora_A.weight):
            return super().forward(x)
        return lowrank_linear(x, b.weight, b.bias, self.lora_A.weight, self.lora_B.weight,
                              self.scale, self.fan_in_fan_out)

    def _build(self, p: nn.Module, r: int, dropout: float) -> None:
        d_in, d_out = dims(self.base_layer)
        w = self.base_layer.weight
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
        d = (p.lora_B.weight.float() @ p.lora_A.weight.float()) * p.scale   # (d_out, d_in)
        return d.T if self.fan_in_fan_out else d


class LoraConv2d(LoraLayer):
    """y = base(x) + scale * B(A(dropout(x)))

    x: (N, C_in, H, W) -> y: (N, C_out, H', W'). A: a Conv2d C_in -> r with the base's kernel,
    stride, padding and dilation, weight (r, C_in, kh, kw); B: a 1x1 Conv2d r -> C_out, weight
    (C_out, r, 1, 1). delta_weight[o, i, u, v] = scale * sum_k B[o, k] A[k, i, u, v]."""

    def __init__(self, base_layer: nn.Conv2d, r: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False):
        super().__init__(base_layer, r, alpha, rslora)
        self._build(self, r, dropout)

    def _build(self, p: nn.Module, r: int, dropout: float) -> None:
        b, w = self.base_layer, self.base_layer.weight
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

    def __init__(self, base_layer: nn.Embedding, r: int, alpha: float, rslora: bool = False):
        super().__init__(base_layer, r, alpha, rslora)
        self._build(self, r, 0.0)

    def _build(self, p: nn.Module, r: int, dropout: float) -> None:
        w = self.base_layer.weight
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
        add = self._added(ids, y)
        out = y if add is None else y + add
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

"""The base-layer seam: how a method reads and changes the layer it adapts.

Every method that wraps or edits a base layer (LoRA and its variants, AdaLoRA, selection) and
everything that looks at one (merge, measure) asks this dispatch instead of assuming a dense
float `.weight`:

    kind = base_kind(module)        # the BaseKind of nn.Linear, Conv1D, Conv2d, Embedding, ...
    kind.family                     # "linear", "conv2d" or "embedding": which wrapper fits
    kind.dims(module)               # (d_in, d_out) of the update
    kind.weight(module)             # the dense float weight, canonical layout (below)
    kind.add_(module, delta)        # W <- W + delta, delta in the canonical layout
    kind.nbytes(module)             # bytes its stored weight takes (4-bit: about d_in*d_out/2)

Canonical layout: (d_out, d_in) for the linear family (GPT-2's Conv1D stores (d_in, d_out):
its weight() is the transpose, its add_ transposes back), the layer's own layout for Conv2d
(C_out, C_in, kh, kw) and Embedding (num_embeddings, dim). A new kind of base layer (a 4-bit
quantized Linear, a Linear that stores its weight transposed) is one `register(BaseKind(...))`
entry; it is asked before the built-in kinds, so it may also refine one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.layers import Conv1D, is_conv1d


@dataclass(frozen=True)
class BaseKind:
    """One kind of base layer.

    name: for messages ("nn.Linear"). family: "linear", "conv2d" or "embedding": the wrapper
    a method uses (LoRA: LoraLinear, LoraConv2d, LoraEmbedding). matches(module): whether a
    module is of this kind. dims(module): (d_in, d_out). weight(module): the dense weight in the
    canonical layout (a view where it can be; dequantized for quantized kinds). add_(module,
    delta): add delta (canonical layout) to the stored weight in place. nbytes(module): bytes of
    the stored weight. transposed: the layer keeps a dense `.weight` stored as (d_in, d_out)
    (GPT-2's Conv1D), so a delta shown "in the shape of its weight" is transposed.
    """

    name: str
    family: str
    matches: Callable[[nn.Module], bool]
    dims: Callable[[nn.Module], tuple[int, int]]
    weight: Callable[[nn.Module], torch.Tensor]
    add_: Callable[[nn.Module, torch.Tensor], None]
    nbytes: Callable[[nn.Module], int]
    transposed: bool = False


def _stored_bytes(module: nn.Module) -> int:
    return module.weight.numel() * module.weight.element_size()


def _add_same(module: nn.Module, delta: torch.Tensor) -> None:
    with torch.no_grad():
        module.weight.add_(delta.to(module.weight.dtype))


def _add_transposed(module: nn.Module, delta: torch.Tensor) -> None:
    with torch.no_grad():
        module.weight.add_(delta.T.to(module.weight.dtype))


BUILTIN: tuple[BaseKind, ...] = tuple(k for k in (
    BaseKind("nn.Linear", "linear", lambda m: isinstance(m, nn.Linear),
             lambda m: (m.in_features, m.out_features), lambda m: m.weight, _add_same,
             _stored_bytes),
    BaseKind("Conv1D", "linear", is_conv1d,
             lambda m: (m.weight.shape[0], m.weight.shape[1]), lambda m: m.weight.T,
             _add_transposed, _stored_bytes, transposed=True) if Conv1D is not None else None,
    BaseKind("nn.Conv2d", "conv2d", lambda m: isinstance(m, nn.Conv2d),
             lambda m: (m.in_channels, m.out_channels), lambda m: m.weight, _add_same,
             _stored_bytes),
    BaseKind("nn.Embedding", "embedding", lambda m: isinstance(m, nn.Embedding),
             lambda m: (m.num_embeddings, m.embedding_dim), lambda m: m.weight, _add_same,
             _stored_bytes),
) if k is not None)

# the registry of extra kinds (asked first, newest first); register() adds to it
_EXTRA: list[BaseKind] = []


def register(kind: BaseKind) -> BaseKind:
    """Add a kind of base layer (asked before the built-in ones); returns it. Registering a
    kind with the name of one already registered replaces that one."""
    if kind.family not in ("linear", "conv2d", "embedding"):
        raise ValueError(f"BaseKind.family must be 'linear', 'conv2d' or 'embedding', got "
                         f"{kind.family!r}.")
    _EXTRA[:] = [k for k in _EXTRA if k.name != kind.name]
    _EXTRA.insert(0, kind)
    return kind


def unregister(name: str) -> None:
    """Remove the extra kind `name` (tests that register a toy kind clean up with this)."""
    _EXTRA[:] = [k for k in _EXTRA if k.name != name]


def base_kind(module: nn.Module) -> BaseKind | None:
    """The BaseKind of `module`, or None when no kind matches (not a layer methods adapt)."""
    return next((k for k in (*_EXTRA, *BUILTIN) if k.matches(module)), None)


def is_base(module: nn.Module, family: str | None = None) -> bool:
    """Whether `module` is a known base layer (of `family`, when given)."""
    k = base_kind(module)
    return k is not None and (family is None or k.family == family)


def base_weight(module: nn.Module) -> torch.Tensor:
    """The dense weight of a base layer in the canonical layout (module docstring)."""
    k = base_kind(module)
    if k is None:
        raise TypeError(f"{type(module).__name__} is not a base layer peftlab knows (known: "
                        f"{', '.join(x.name for x in (*_EXTRA, *BUILTIN))}); register its kind "
                        f"with peftlab.core.base.register(BaseKind(...)).")
    return k.weight(module)


def weight_bytes(module: nn.Module) -> int:
    """Bytes the base layer's stored weight takes (dense: numel * element size)."""
    k = base_kind(module)
    return k.nbytes(module) if k is not None else _stored_bytes(module)

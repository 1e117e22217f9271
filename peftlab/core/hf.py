"""Helpers for transformers models that prefix and prompt tuning share: what counts as a
model they can wire, switching the attention implementation for a block, and registering
attention functions with transformers only for as long as they are needed."""

from __future__ import annotations

import contextlib

from torch import nn


def check_supported(model: nn.Module, who: str = "prefix tuning") -> None:
    """Raise (changing nothing) if `model` is not a transformers model we can wire."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "get_input_embeddings"):
        raise TypeError(f"{who} needs a Hugging Face transformers model (it edits attention and "
                        f"token embeddings); got {type(model).__name__}. For other modules use "
                        f"pl.lora or pl.full.")
    if getattr(cfg, "is_encoder_decoder", False):
        raise TypeError(f"{who} in peftlab supports encoder-only and decoder-only models; "
                        f"{type(model).__name__} is an encoder-decoder. Use pl.lora instead.")


@contextlib.contextmanager
def attn_implementation(model: nn.Module, name: str):
    """Run a block with `model.config._attn_implementation` set to `name`."""
    old = model.config._attn_implementation
    model.config._attn_implementation_internal = name
    try:
        yield
    finally:
        model.config._attn_implementation_internal = old


def register_attention(name: str, attention_fn, mask_fn) -> None:
    """Register an attention function and its mask function with transformers under `name`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, attention_fn)
    AttentionMaskInterface.register(name, mask_fn)


def unregister_attention(name: str) -> None:
    """Remove what register_attention added (a no-op for names never registered)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for interface in (AttentionInterface, AttentionMaskInterface):
        interface._global_mapping.pop(name, None)


def is_registered(name: str) -> bool:
    from transformers import AttentionInterface

    return name in AttentionInterface._global_mapping


@contextlib.contextmanager
def temporary_attention(model: nn.Module, name: str, attention_fn, mask_fn):
    """Register `attention_fn` under `name`, run the block with the model using it, then put
    the model's implementation back and unregister the name."""
    register_attention(name, attention_fn, mask_fn)
    try:
        with attn_implementation(model, name):
            yield
    finally:
        unregister_attention(name)


def check_num_virtual_tokens(p, who: str) -> None:
    """Raise ValueError unless `p` (a config's num_virtual_tokens) is a positive int."""
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"{who}.num_virtual_tokens must be a positive int (the number of virtual "
                         f"tokens), got {p!r}.")

"""Helpers for transformers models that prefix and prompt tuning share: what counts as a
model they can wire, switching the attention implementation (for good or for a block), and
registering attention functions with transformers.

Only transformers' public API is used: `model.set_attn_implementation(name)` switches a
model's attention (it checks the name and the model's support), and the class methods
`AttentionInterface.register` / `AttentionMaskInterface.register` add a function to
transformers' registries, where it stays: peftlab registers its few names once per process
and never takes them out, so any model or copy of one that names them keeps working.
"""

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
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):     # e.g. a CNN: its inputs are pixels
        emb = None
    if not isinstance(emb, nn.Embedding):
        what = "does not implement get_input_embeddings()" if emb is None else \
            f"takes its inputs through a {type(emb).__name__}"
        needs = ("joins learned keys and values to the attention of a model that reads token "
                 "ids" if who.startswith("prefix") else "prepends learned vectors to the token "
                 "embeddings")
        raise TypeError(f"{who} {needs}, but {type(model).__name__} has no token embedding "
                        f"table (nn.Embedding): it {what}, so there are no input tokens "
                        f"to extend (image and audio models take pixel or signal values). Use "
                        f"pl.lora (e.g. targets='all-linear' or [nn.Conv2d]) or pl.full.")


def attention_of(model: nn.Module) -> str | None:
    """The name of the attention function `model` calls (its config's attention setting)."""
    return model.config._attn_implementation


def _switcher(model: nn.Module):
    """What switches `model`'s attention: the model itself when it is a transformers model,
    else (a wrapper such as pl.models.MeanPoolClassifier) the first transformers model inside
    it that shares its config."""
    if hasattr(model, "set_attn_implementation"):
        return model
    return next((m for m in model.modules() if hasattr(m, "set_attn_implementation")
                 and getattr(m, "config", None) is model.config), None)


def set_attention(model: nn.Module, name: str) -> None:
    """Make `model` call the attention function `name`, through transformers'
    `set_attn_implementation`; raise TypeError if the model did not take it (a model whose
    attention does not go through transformers' AttentionInterface)."""
    if attention_of(model) == name:
        return
    owner = _switcher(model)
    if owner is not None:
        owner.set_attn_implementation(name)
    if attention_of(model) != name:
        raise TypeError(f"{type(model).__name__} does not route attention through transformers' "
                        f"AttentionInterface (model.set_attn_implementation({name!r}) left it "
                        f"on {attention_of(model)!r}), so peftlab cannot switch its attention "
                        f"(where prefix tuning joins its keys); for this model use "
                        f"pl.prompt.PromptConfig (input-level) or pl.lora.")


@contextlib.contextmanager
def attn_implementation(model: nn.Module, name: str):
    """Run a block with `model` calling the attention function `name`, then switch it back."""
    old = attention_of(model)
    set_attention(model, name)
    try:
        yield
    finally:
        set_attention(model, old)


def is_registered(name: str) -> bool:
    """Whether transformers knows an attention function and a mask function called `name`."""
    from transformers import AttentionInterface, AttentionMaskInterface

    return name in AttentionInterface() and name in AttentionMaskInterface()


def register_attention(name: str, attention_fn, mask_fn) -> None:
    """Register an attention function and its mask function with transformers under `name`,
    unless that name is registered already (the first registration stays)."""
    from transformers import AttentionInterface, AttentionMaskInterface

    if not is_registered(name):
        AttentionInterface.register(name, attention_fn)
        AttentionMaskInterface.register(name, mask_fn)


def check_num_virtual_tokens(p, who: str) -> None:
    """Raise ValueError unless `p` (a config's num_virtual_tokens) is a positive int."""
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"{who}.num_virtual_tokens must be a positive int (the number of virtual "
                         f"tokens), got {p!r}.")


def check_virtual_tokens_fit(model, p: int, who: str, trainable: int) -> None:
    """Raise ValueError (before anything changes) when `p` virtual tokens cannot work on
    `model`: more than its context holds (max_position_embeddings / n_positions, when the
    config says), or more trainable numbers (`trainable`) than the whole base model has, which
    no parameter-efficient method means (the papers use 1 to a few hundred tokens: Li & Liang
    2021, Lester et al. 2021)."""
    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions",
                                                                          None)
    if isinstance(context, int) and p >= context:
        raise ValueError(f"{who}.num_virtual_tokens={p:,} does not fit the model's context of "
                         f"{context:,} positions (the virtual tokens and the text share it); "
                         f"use a few to a few hundred (Li & Liang 2021; Lester et al. 2021).")
    total = sum(t.numel() for t in model.parameters())
    if trainable > total:
        raise ValueError(f"{who}.num_virtual_tokens={p:,} would train {trainable:,} numbers, "
                         f"more than the whole model's {total:,}; use a few to a few hundred "
                         f"virtual tokens (Li & Liang 2021; Lester et al. 2021).")

"""How the prompt reaches a transformers model: three hooks that call peftlab/prompt/prompt.py.

    1. a forward pre-hook on the model inserts P placeholder token ids at `start` (a non-pad
       id, so GPT-2's classifier still finds the last real token) and extends attention_mask
       (prompt_mask), token_type_ids, position_ids and token-level labels;
    2. a forward hook on the input-embedding layer swaps the placeholders' embeddings for the
       prompt Z (remove, then insert_prompt);
    3. a forward hook on the model drops the P virtual positions from token-level logits, so
       outputs line up with the caller's tokens (hidden states and attentions keep them).

Placeholders rather than inputs_embeds keep every model feature that reads input_ids working.
In cached generation the prompt is in the cache after the first step; later steps only extend
the mask and shift position ids. A static cache (generate(cache_implementation="static"))
is sized by generate for the caller's tokens: the first step grows its layers by P before
they allocate. Masks may be 2-D (B, T) or 4-D (B, 1|H, Tq, Tk) (bool or additive float, what
generate builds for a static cache): extend_mask_4d adds the prompt's rows and columns.

The state of one forward pass is one record, `pe.call` (a PromptCall), set by hook 1 and
cleared by hook 3, which runs even when the forward pass raises (always_call): it tells the
embedding hook whether this pass inserted placeholders (a cached step, an inputs_embeds call
and a direct call of the embedding layer did not) and hook 3 how long the outputs are.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.prompt.prompt import PromptEmbedding, insert, insert_prompt, prompt_mask, remove


@dataclass
class PromptCall:
    """One forward pass of a prompt-tuned model, from before_model to after_model.

    swap: the embedding hook has still to swap the placeholders for the prompt (True once
        before_model inserted them; the hook sets it False when done).
    length: T + P, the length of this pass's token-level outputs; None for a cached step
        (its outputs are the caller's tokens only).
    """

    swap: bool
    length: int | None


def _cache_length(kw: dict) -> int:
    cache = kw.get("cache", kw.get("past_key_values"))
    return cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0


def _cache(kw: dict):
    return kw.get("cache", kw.get("past_key_values"))


def _static_layers(cache) -> list:
    from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

    return [layer for layer in getattr(cache, "layers", [])
            if isinstance(layer, StaticLayer) and not isinstance(layer, StaticSlidingWindowLayer)]


def grow_static_cache(cache, P: int) -> None:
    """Give every full-attention static layer of `cache` P more slots, before it allocates."""
    for layer in _static_layers(cache):
        if layer.is_initialized:
            raise ValueError("This static cache was allocated before the prompt was added "
                             "(it has no room for the prompt's positions); pass a fresh "
                             "cache, or let generate() create it.")
        layer.max_cache_len += P


def extend_mask_4d(mask: torch.Tensor, P: int, s: int, causal: bool,
                   first: bool) -> torch.Tensor:
    """A 4-D attention mask (B, 1|H, Tq, Tk), bool (True = attend) or additive float, with the
    prompt's P key columns inserted at `s` (visible to every query, as prompt_mask does) and,
    on the first pass (the prompt's queries are in it), its P query rows: a prompt position
    sees the prompt causally in a decoder (all of it in an encoder) and the real keys that the
    token before it sees (in a decoder that is those before `s`; none when s = 0)."""
    yes = torch.ones((), dtype=torch.bool) if mask.dtype == torch.bool else \
        torch.zeros((), dtype=mask.dtype)
    no = torch.zeros((), dtype=torch.bool) if mask.dtype == torch.bool else \
        torch.tensor(torch.finfo(mask.dtype).min, dtype=mask.dtype)
    yes, no = yes.to(mask.device), no.to(mask.device)
    lead, Tq = mask.shape[:2], mask.shape[2]
    cols = yes.expand(*lead, Tq, P)
    out = torch.cat([mask[..., :s], cols, mask[..., s:]], dim=-1)          # (B, h, Tq, Tk + P)
    if not first:
        return out
    Tk = out.shape[-1]
    i = torch.arange(P, device=mask.device)[:, None]
    j = torch.arange(P, device=mask.device)[None, :]
    to_prompt = torch.where((j <= i) if causal else torch.ones_like(j <= i), yes, no)  # (P, P)
    if causal and s == 0:
        to_real = no.expand(*lead, P, Tk - P)
    else:
        row = max(s - 1, 0)
        to_real = out[..., row:row + 1, :].expand(*lead, P, Tk)
        to_real = torch.cat([to_real[..., :s], to_real[..., s + P:]], dim=-1)
    rows = torch.cat([to_real[..., :s], to_prompt.expand(*lead, P, P), to_real[..., s:]], dim=-1)
    return torch.cat([out[..., :s, :], rows, out[..., s:, :]], dim=-2)   # (B, h, Tq + P, Tk + P)


def before_model(pe: PromptEmbedding, model: nn.Module, args, kwargs):
    """Forward pre-hook (with kwargs): make room for the prompt in every sequence input."""
    kw = inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments
    kw.update(kw.pop("kwargs", {}))
    P, s = pe.num_virtual_tokens, pe.start
    ids, embeds, mask = kw.get("input_ids"), kw.get("inputs_embeds"), kw.get("attention_mask")
    B, T = (ids if ids is not None else embeds).shape[:2]
    cached = _cache_length(kw) > 0      # a cached generation step: the prompt is in the cache
    if not cached and _cache(kw) is not None:
        grow_static_cache(_cache(kw), P)
    if mask is not None and mask.ndim == 2:
        kw["attention_mask"] = prompt_mask(mask, P, s)
    elif mask is not None and mask.ndim == 4:
        mask = extend_mask_4d(mask, P, s, pe.causal, first=not cached)
        # a static cache's mask spans the whole (grown) cache: generate pads it to that size,
        # so after a cached step's P new columns its last P (unfilled slots) go again
        sizes = [layer.max_cache_len for layer in _static_layers(_cache(kw))]
        kw["attention_mask"] = mask[..., :max(sizes)] if sizes else mask
    pos = kw.get("position_ids")
    if cached:
        if pos is not None:
            kw["position_ids"] = pos + P
        pe.call = PromptCall(swap=False, length=None)
        return (), kw
    if ids is not None:
        kw["input_ids"] = insert(ids, s, torch.full((B, P), pe.placeholder, dtype=ids.dtype,
                                                    device=ids.device))
    else:
        kw["inputs_embeds"] = insert_prompt(embeds, pe.weight, start=s)[0]
    if kw.get("token_type_ids") is not None:
        tt = kw["token_type_ids"]
        kw["token_type_ids"] = insert(tt, s, torch.zeros(B, P, dtype=tt.dtype, device=tt.device))
    if pos is not None:
        prompt_pos = torch.arange(P, device=pos.device) + (pos[:, s - 1:s] + 1 if s else 0)
        kw["position_ids"] = torch.cat([pos[:, :s], prompt_pos.expand(pos.shape[0], -1),
                                        pos[:, s:] + P], dim=1)
    labels = kw.get("labels")
    if labels is not None and labels.ndim == 2 and labels.shape[1] == T:  # token-level labels
        kw["labels"] = insert(labels, s, torch.full((B, P), -100, dtype=labels.dtype,
                                                     device=labels.device))
    pe.call = PromptCall(swap=ids is not None, length=T + P)   # swap: the embedding hook
    return (), kw


def after_embedding(pe: PromptEmbedding, emb: nn.Module, args, out):
    """Forward hook of the input embeddings: placeholders' embeddings -> the prompt Z, once
    per forward pass that inserted placeholders (pe.call.swap)."""
    if pe.call is None or not pe.call.swap:
        return out
    pe.call.swap = False
    s, P = pe.start, pe.num_virtual_tokens
    return insert_prompt(remove(out, s, P), pe.weight, start=s)[0]


def after_model(pe: PromptEmbedding, model: nn.Module, args, kwargs, out):
    """Forward hook (with kwargs, always called): end the pass's record; drop the P virtual
    positions from token-level logits (B, T + P, C) -> (B, T, C). `out` is None when the
    forward pass raised."""
    call, pe.call = pe.call, None
    full = call.length if call is not None else None
    logits = getattr(out, "logits", None)
    if full is None or logits is None or logits.ndim != 3 or logits.shape[1] != full:
        return out
    out.logits = remove(logits, pe.start, pe.num_virtual_tokens)
    return out

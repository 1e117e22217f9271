"""How a prefix reaches the attention of a transformers model (transformers >= 5).

Every attention module calls the function that `config._attn_implementation` names in
transformers' AttentionInterface. We register "peftlab_prefix_sdpa" / "peftlab_prefix_eager":
each finds the module's prefix (the `PrefixSlot` that apply() puts on the module as
`module.peftlab_prefix`) and calls the pure `prefix_attention` of peftlab/prefix/prefix.py
with the model's own sdpa / eager kernel. A matching mask function (AttentionMaskInterface)
keeps the causal mask explicit so that it can be extended. The prefix is never written into
the KV cache: it is joined afresh at every step, so cached generation sees exactly the prefix
a full forward pass sees.

The two names stay registered while a model uses them: unload() unregisters them when the
last registered model lets go, and a forward pre-hook re-registers them (a dictionary lookup)
so that a copy of a prefix model keeps working on its own.

`probe` finds the self-attention modules by running one tiny forward pass with a recording
attention function (registered only for that pass), so no model-specific names are needed.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.hf import (
    attn_implementation,
    check_supported,
    is_registered,
    register_attention,
    temporary_attention,
    unregister_attention,
)
from peftlab.core.state import eval_mode
from peftlab.prefix.prefix import PrefixEncoder, prefix_attention

ATTN_PREFIX = "peftlab_prefix_"   # registered names: peftlab_prefix_sdpa, peftlab_prefix_eager
BASES = ("sdpa", "eager")
_USERS: weakref.WeakSet = weakref.WeakSet()   # models whose forward uses the names above


@dataclass(eq=False)
class PrefixSlot:
    """What an attention module needs to find its prefix: the encoder and its layer index.
    A plain attribute (not a submodule), so the encoder's parameters are not registered twice."""

    encoder: PrefixEncoder
    layer: int


# --- the attention function transformers calls ----------------------------------------------

def base_attention(module: nn.Module, base: str):
    """The model's own attention kernel for `base` ("sdpa" or "eager")."""
    if base == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward
    # the model's own eager function (GPT-2 casts dtypes, others soft-cap...), else BERT's
    own = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if own is None:
        from transformers.models.bert.modeling_bert import eager_attention_forward as own
    return own


def make_attention(base: str):
    """The function registered as peftlab_prefix_<base>: prefix_attention inside the model."""
    def attention_with_prefix(module, query, key, value, attention_mask, **kwargs):
        fn = base_attention(module, base)
        slot = getattr(module, "peftlab_prefix", None)
        if slot is None:                   # a layer without prefix (e.g. cross-attention)
            return fn(module, query, key, value, attention_mask, **kwargs)
        if base == "sdpa":
            kwargs["is_causal"] = False    # the extended mask already says everything
        weights = []

        def attend(q, k, v, mask):         # the model's own kernel, on [prefix ; text]
            out, w = fn(module, q, k, v, mask, **kwargs)
            weights.append(w)
            return out

        pk, pv = slot.encoder.layer_kv(slot.layer)                     # (Hkv, P, D)
        out = prefix_attention(query, key, value, pk, pv, attention_mask,
                               causal=bool(getattr(module, "is_causal", False)),
                               mask_dtype=None if base == "sdpa" else query.dtype,
                               attend=attend)
        record = slot.encoder.record
        if record is not None and weights[0] is not None:
            record[slot.layer] = weights[0].detach()                    # (B, H, Tq, P+Tk)
        return out, weights[0]
    return attention_with_prefix


def make_mask(base: str):
    from transformers.masking_utils import eager_mask, sdpa_mask

    def prefix_mask(*args, **kwargs):
        kwargs["allow_is_causal_skip"] = False    # always a real causal mask, to extend
        return (sdpa_mask if base == "sdpa" else eager_mask)(*args, **kwargs)
    return prefix_mask


def register(model: nn.Module | None = None) -> None:
    """Register peftlab_prefix_{sdpa,eager} with transformers (idempotent); remember `model`."""
    for base in BASES:
        if not is_registered(ATTN_PREFIX + base):
            register_attention(ATTN_PREFIX + base, make_attention(base), make_mask(base))
    if model is not None:
        _USERS.add(model)


def release(model: nn.Module) -> None:
    """`model` no longer uses the prefix functions; unregister them if no other model does."""
    _USERS.discard(model)
    if len(_USERS) == 0:
        for base in BASES:
            unregister_attention(ATTN_PREFIX + base)


def ensure_registered(model: nn.Module, args, kwargs):
    """Forward pre-hook of a prefix model: make sure its attention functions exist, and that
    the model still calls them: after model.set_attn_implementation("eager" / "sdpa") the
    prefix follows the new kernel; another implementation raises instead of silently
    dropping the prefix."""
    if not all(is_registered(ATTN_PREFIX + base) for base in BASES):
        register(model)
    impl = model.config._attn_implementation
    if impl.startswith(ATTN_PREFIX):
        return
    if impl not in BASES:
        raise ValueError(f"This model carries a peftlab prefix, but its attention "
                         f"implementation was set to {impl!r}, which cannot take a prefix; "
                         f"call model.set_attn_implementation('sdpa') (or 'eager').")
    model.config._attn_implementation_internal = ATTN_PREFIX + impl


# --- finding the attention layers: one probing forward pass --------------------------------

def probe(model: nn.Module) -> list[tuple[nn.Module, tuple]]:
    """Run one tiny forward pass and record which modules call the attention interface, in
    order, with their key shape (B, Hkv, T, D). Nothing in the model changes."""
    check_supported(model)
    impl = model.config._attn_implementation
    if impl not in BASES:
        raise ValueError(f"prefix tuning needs attn_implementation 'sdpa' or 'eager', the model "
                         f"uses {impl!r}; call model.set_attn_implementation('sdpa') first.")
    if not type(model)._can_set_attn_implementation():
        raise TypeError(f"{type(model).__name__} does not route attention through transformers' "
                        f"AttentionInterface, so peftlab cannot join a prefix to its keys. Use "
                        f"pl.prefix.PromptConfig (input-level) or pl.lora instead.")
    calls = []
    base_fn = make_attention(impl)

    def recorder(module, query, key, value, attention_mask, **kwargs):
        calls.append((module, tuple(query.shape), tuple(key.shape)))
        return base_fn(module, query, key, value, attention_mask, **kwargs)

    vocab = model.get_input_embeddings().num_embeddings
    device = model.get_input_embeddings().weight.device
    ids = torch.arange(1, 4).clamp(max=vocab - 1)[None].to(device)
    with eval_mode(model), torch.no_grad(), \
            temporary_attention(model, "peftlab_probe", recorder, make_mask(impl)):
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    modules = [m for m, _, _ in calls]
    if not calls:
        raise TypeError(f"{type(model).__name__} made no call to the attention interface in a "
                        f"forward pass; peftlab cannot place a prefix in it.")
    if len(set(map(id, modules))) != len(modules):
        raise TypeError(f"{type(model).__name__} calls the same attention module more than once "
                        f"per forward (shared layers, as in ALBERT): a per-layer prefix is not "
                        f"defined there. Use pl.prefix.PromptConfig or pl.lora.")
    shapes = {(k[1], k[3]) for _, _, k in calls}
    if len(shapes) > 1 or any(q[2] != k[2] for _, q, k in calls):
        raise TypeError(f"{type(model).__name__}'s attention layers differ in heads/head size or "
                        f"attend to other lengths than the input ({sorted(shapes)}); peftlab's "
                        f"prefix expects uniform self-attention layers.")
    return [(m, k) for m, _, k in calls]


@torch.no_grad()
def text_activations(model, tokenizer, text: str, P: int) -> torch.Tensor:
    """Keys and values the frozen model computes for `text`'s first P tokens (cycled if
    shorter), (L, 2, Hkv, P, D): Li & Liang's "initialise with real words' activations"."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise ValueError(f"init_text {text!r} gives no tokens.")
    ids = ids[:, torch.arange(P) % ids.shape[1]].to(next(model.parameters()).device)
    impl, kv = model.config._attn_implementation, []

    def grab(module, query, key, value, mask, **kw):
        kv.append(torch.stack([key[0], value[0]]))                     # (2, Hkv, P, D)
        return base_attention(module, impl)(module, query, key, value, mask, **kw)

    with eval_mode(model), temporary_attention(model, "peftlab_grab", grab, make_mask(impl)):
        model(input_ids=ids)
    return torch.stack(kv)


__all__ = ["ATTN_PREFIX", "BASES", "PrefixSlot", "attn_implementation", "base_attention",
           "ensure_registered", "make_attention", "make_mask", "probe", "register", "release",
           "text_activations"]

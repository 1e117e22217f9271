"""How a prefix reaches the attention of a transformers model (the wiring behind prefix.py).

Every attention module in transformers >= 5 calls the function that
`config._attn_implementation` names in AttentionInterface. We register
"peftlab_prefix_sdpa" / "peftlab_prefix_eager": each joins the module's prefix (found in
`module.__dict__["peftlab_prefix"] = (PrefixEncoder, layer index)`) to the keys and values,
opens P mask columns, and calls the ordinary sdpa / eager attention. A matching mask function
(AttentionMaskInterface) keeps the causal mask explicit so that it can be extended.

`probe` finds the self-attention modules by running one tiny forward pass with a recording
attention function, so no model-specific module names are needed.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn

ATTN_PREFIX = "peftlab_prefix_"   # registered names: peftlab_prefix_sdpa, peftlab_prefix_eager
BASES = ("sdpa", "eager")

# --- the attention function transformers calls ----------------------------------------------

def base_attention(module: nn.Module, base: str):
    if base == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward
    # the model's own eager function (GPT-2 casts dtypes, others soft-cap...), else BERT's
    own = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if own is None:
        from transformers.models.bert.modeling_bert import eager_attention_forward as own
    return own


def extend_mask(mask, P: int, q_len: int, kv_len: int, causal: bool, dtype, device):
    """Join P always-visible columns on the left of an attention mask (B|1, 1|H, Tq, Tk).

    bool masks (sdpa) get True, additive float masks (eager) get 0. A None mask means "no
    padding": it stays None for bidirectional attention; a causal layer gets its causal mask
    spelled out (query i sees keys j <= i + Tk - Tq) because the is_causal shortcut of sdpa
    would misalign once the keys are longer than the queries."""
    if mask is None:
        if not (causal and q_len > 1):
            return None
        q = torch.arange(q_len, device=device)[:, None]
        k = torch.arange(kv_len, device=device)[None, :]
        mask = (k <= q + kv_len - q_len)[None, None]                  # (1, 1, Tq, Tk)
        if dtype is not None:
            mask = torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)
    if mask.dtype == torch.bool:
        pad = torch.ones(*mask.shape[:-1], P, dtype=torch.bool, device=mask.device)
    else:
        pad = torch.zeros(*mask.shape[:-1], P, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)


def make_attention(base: str):
    def prefix_attention(module, query, key, value, attention_mask, **kwargs):
        fn = base_attention(module, base)
        source = module.__dict__.get("peftlab_prefix")
        if source is None:                 # a layer without prefix (e.g. cross-attention)
            return fn(module, query, key, value, attention_mask, **kwargs)
        encoder, layer = source
        pk, pv = encoder.layer_kv(layer)                                # (Hkv, P, D)
        B, P = key.shape[0], pk.shape[1]
        causal = bool(getattr(module, "is_causal", False))
        mask_dtype = None if base == "sdpa" else query.dtype
        attention_mask = extend_mask(attention_mask, P, query.shape[2], key.shape[2], causal,
                                     mask_dtype, query.device)
        key = torch.cat([pk.to(key.dtype).expand(B, -1, -1, -1), key], dim=2)     # (B, Hkv, P+T, D)
        value = torch.cat([pv.to(value.dtype).expand(B, -1, -1, -1), value], dim=2)
        if base == "sdpa":
            kwargs["is_causal"] = False        # the mask above already says everything
        out, weights = fn(module, query, key, value, attention_mask, **kwargs)
        record = encoder.__dict__.get("record")
        if record is not None and weights is not None:
            record[layer] = weights.detach()                            # (B, H, Tq, P+Tk)
        return out, weights
    return prefix_attention


def make_mask(base: str):
    from transformers.masking_utils import eager_mask, sdpa_mask

    def prefix_mask(*args, **kwargs):
        kwargs["allow_is_causal_skip"] = False    # always a real causal mask, to extend
        return (sdpa_mask if base == "sdpa" else eager_mask)(*args, **kwargs)
    return prefix_mask


def register() -> None:
    """Register peftlab_prefix_{sdpa,eager} with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for base in BASES:
        if ATTN_PREFIX + base not in AttentionInterface._global_mapping:
            AttentionInterface.register(ATTN_PREFIX + base, make_attention(base))
            AttentionMaskInterface.register(ATTN_PREFIX + base, make_mask(base))


# --- finding the attention layers: one probing forward pass --------------------------------

@contextlib.contextmanager
def attn_implementation(model: nn.Module, name: str):
    old = model.config._attn_implementation
    model.config._attn_implementation_internal = name
    try:
        yield
    finally:
        model.config._attn_implementation_internal = old


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


def probe(model: nn.Module) -> list[tuple[nn.Module, tuple]]:
    """Run one tiny forward pass and record which modules call the attention interface, in
    order, with their key shape (B, Hkv, T, D). Nothing in the model changes."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

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

    def recorder(module, query, key, value, attention_mask, **kwargs):
        calls.append((module, tuple(query.shape), tuple(key.shape)))
        return make_attention(impl)(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("peftlab_probe", recorder)
    AttentionMaskInterface.register("peftlab_probe", make_mask(impl))
    vocab = model.get_input_embeddings().num_embeddings
    device = model.get_input_embeddings().weight.device
    ids = torch.arange(1, 4).clamp(max=vocab - 1)[None].to(device)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), attn_implementation(model, "peftlab_probe"):
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        model.train(was_training)
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

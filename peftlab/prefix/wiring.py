"""How a prefix reaches the attention of a transformers model (transformers >= 5).

Every attention module calls the function that its config's attention setting names in
transformers' AttentionInterface. We register "peftlab_prefix_sdpa" / "peftlab_prefix_eager":
each finds the module's prefix (the `PrefixSlot` that apply() puts on the module as
`module.peftlab_prefix`) and calls the pure `prefix_attention` of peftlab/prefix/prefix.py
with the model's own sdpa / eager kernel. A matching mask function (AttentionMaskInterface)
keeps the causal mask explicit so that it can be extended. The prefix is never written into
the KV cache: it is joined afresh at every step, so cached generation sees exactly the prefix
a full forward pass sees.

The names are registered once (`register`, the first time a prefix is applied or probed) and
never taken out: a module without a slot just runs the model's own kernel, so any model, copy
or unloaded original that names them keeps working. A forward pre-hook of a prefix model
registers them in a fresh process (a dictionary lookup otherwise) and follows a later
model.set_attn_implementation("eager" / "sdpa").

`probe` finds the self-attention modules by running one tiny forward pass with the permanent
"peftlab_probe_sdpa" / "peftlab_probe_eager" functions: they run the model's own kernel and,
while `recording(model)` has put a `ProbeRecord` on the model's modules, note each call.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.core.hf import (
    attention_of,
    attn_implementation,
    check_supported,
    is_registered,
    register_attention,
    set_attention,
)
from peftlab.core.state import eval_mode
from peftlab.prefix.prefix import PrefixEncoder, prefix_attention

ATTN_PREFIX = "peftlab_prefix_"   # registered names: peftlab_prefix_sdpa, peftlab_prefix_eager
ATTN_PROBE = "peftlab_probe_"     # and peftlab_probe_sdpa, peftlab_probe_eager
BASES = ("sdpa", "eager")


@dataclass(eq=False)
class PrefixSlot:
    """What an attention module needs to find its prefix: the encoder and its layer index.
    A plain attribute (not a submodule), so the encoder's parameters are not registered twice."""

    encoder: PrefixEncoder
    layer: int


@dataclass(eq=False)
class ProbeRecord:
    """What the probe attention function notes while `recording` runs: one (module, query
    shape (B, H, T, D), key, value) per call, in call order."""

    calls: list = field(default_factory=list)


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
    """The mask function registered beside peftlab_prefix_<base> / peftlab_probe_<base>:
    transformers' own sdpa / eager mask, always spelled out (never the is_causal shortcut)."""
    from transformers.masking_utils import eager_mask, sdpa_mask

    def prefix_mask(*args, **kwargs):
        kwargs["allow_is_causal_skip"] = False    # always a real causal mask, to extend
        return (sdpa_mask if base == "sdpa" else eager_mask)(*args, **kwargs)
    return prefix_mask


def make_probe(base: str):
    """The function registered as peftlab_probe_<base>: the model's own kernel, noting the
    call in the module's ProbeRecord while `recording` has put one there."""
    def probe_attention(module, query, key, value, attention_mask, **kwargs):
        record = getattr(module, "peftlab_probe", None)
        if isinstance(record, ProbeRecord):
            record.calls.append((module, tuple(query.shape), key.detach(), value.detach()))
        return base_attention(module, base)(module, query, key, value, attention_mask, **kwargs)
    return probe_attention


def register() -> None:
    """Register peftlab_prefix_{sdpa,eager} and peftlab_probe_{sdpa,eager} with transformers:
    the first call registers them for good, later calls find them there and return."""
    for base in BASES:
        for name, make in ((ATTN_PREFIX + base, make_attention), (ATTN_PROBE + base, make_probe)):
            if not is_registered(name):
                register_attention(name, make(base), make_mask(base))


def ensure_registered(model: nn.Module, args, kwargs):
    """Forward pre-hook of a prefix model: make sure its attention functions exist (a model
    loaded in a fresh process), and that the model still calls them: after
    model.set_attn_implementation("eager" / "sdpa") the prefix follows the new kernel; another
    implementation raises instead of silently dropping the prefix."""
    register()
    impl = attention_of(model)
    if impl.startswith(ATTN_PREFIX):
        return
    if impl not in BASES:
        raise ValueError(f"This model carries a peftlab prefix, but its attention "
                         f"implementation was set to {impl!r}, which cannot take a prefix; "
                         f"call model.set_attn_implementation('sdpa') (or 'eager').")
    set_attention(model, ATTN_PREFIX + impl)


# --- finding the attention layers: one probing forward pass --------------------------------

@contextlib.contextmanager
def recording(model: nn.Module):
    """Run a block with `model` on the probe attention function and a fresh ProbeRecord on
    every module (yielded); afterwards the record and the model's own attention are back."""
    register()
    record, modules = ProbeRecord(), list(model.modules())
    for m in modules:
        m.peftlab_probe = record
    try:
        with eval_mode(model), torch.no_grad(), \
                attn_implementation(model, ATTN_PROBE + attention_of(model)):
            yield record
    finally:
        for m in modules:
            del m.peftlab_probe


def probe(model: nn.Module) -> list[tuple[nn.Module, tuple]]:
    """Run one tiny forward pass and record which modules call the attention interface, in
    order, with their key shape (B, Hkv, T, D). Nothing in the model changes."""
    check_supported(model)
    impl = attention_of(model)
    if impl not in BASES:
        raise ValueError(f"prefix tuning needs attn_implementation 'sdpa' or 'eager', the model "
                         f"uses {impl!r}; call model.set_attn_implementation('sdpa') first.")
    vocab = model.get_input_embeddings().num_embeddings
    device = model.get_input_embeddings().weight.device
    ids = torch.arange(1, 4).clamp(max=vocab - 1)[None].to(device)
    with recording(model) as record:    # TypeError if the model cannot switch its attention
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    calls = [(m, q, tuple(k.shape)) for m, q, k, _ in record.calls]
    modules = [m for m, _, _ in calls]
    if not calls:
        raise TypeError(f"{type(model).__name__} made no call to the attention interface in a "
                        f"forward pass; peftlab cannot place a prefix in it.")
    if len(set(map(id, modules))) != len(modules):
        raise TypeError(f"{type(model).__name__} calls the same attention module more than once "
                        f"per forward (shared layers, as in ALBERT): a per-layer prefix is not "
                        f"defined there. Use pl.prompt.PromptConfig or pl.lora.")
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
    with recording(model) as record:
        model(input_ids=ids)
    return torch.stack([torch.stack([k[0], v[0]]) for _, _, k, v in record.calls])


__all__ = ["ATTN_PREFIX", "ATTN_PROBE", "BASES", "PrefixSlot", "ProbeRecord", "base_attention",
           "ensure_registered", "make_attention", "make_mask", "make_probe", "probe", "recording",
           "register", "text_activations"]

"""Prefix tuning (Li & Liang, 2021): trainable keys and values joined to every attention layer.

    pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=10))
    pl.prefix.apply(model, pl.prefix.PrefixConfig(10, projection_hidden=512))  # the paper's MLP
    pl.prefix.fold(model)                       # MLP -> plain prefix tensors, for saving/inference
    pl.prompt.apply(model, pl.prompt.PromptConfig(num_virtual_tokens=10))  # prompt tuning: pl.prompt

Each self-attention layer l gets P "virtual tokens" that exist only as a key prefix K_l and a
value prefix V_l, each (heads, P, head_dim). With the layer's own Q, K, V of shape (B, heads, T, D):

    K' = [K_l ; K]   V' = [V_l ; V]                       (B, heads, P + T, D)
    out = softmax(Q K'^T * scale + [0 ; mask]) V'          mask: padding (and causal) of the text

Every real token attends to all P prefix positions (also in a causal decoder: the prefix sits
"before" the text); padding stays masked; position ids of real tokens are unchanged; the base
model is frozen. The trainable count is layers * 2 * P * (kv_heads * head_dim), i.e.
layers * 2 * P * hidden for ordinary multi-head attention.

The math (prefix_attention, PrefixEncoder) is in peftlab/prefix/prefix.py, the transformers
wiring in peftlab/prefix/wiring.py; this file is the surgery: apply, fold, unload, and looking
at what the prefix attends to.
Differences from HF PEFT: PEFT passes the prefix as past_key_values, which shifts the real
tokens' position ids by P, and refuses BERT-family encoders under transformers 5.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.adapt import Plan, adapt, heads_for
from peftlab.core.errors import check_number
from peftlab.core.hf import (
    attention_of,
    attn_implementation,
    check_num_virtual_tokens,
    check_virtual_tokens_fit,
    set_attention,
)
from peftlab.core.layers import adapter_dtype
from peftlab.core.registry import cannot_merge
from peftlab.core.state import eval_mode, get_config, get_method, mark, restore, unmark
from peftlab.prefix.prefix import PrefixEncoder
from peftlab.prefix.wiring import (
    ATTN_PREFIX,
    PrefixSlot,
    ensure_registered,
    probe,
    text_activations,
)
from peftlab.prompt import surgery as prompt
from peftlab.prompt.surgery import PromptConfig


@dataclass
class PrefixConfig:
    """Prefix tuning: P trainable key/value vectors per layer that every token attends to.

    num_virtual_tokens: P, the prefix length per layer; more = more capacity and compute.
    projection_hidden: None trains the prefixes directly; an int trains them through
        embedding (P, hidden) -> Linear -> tanh -> Linear (the paper's stabilising MLP).
    init: "normal": N(0, init_std) (as HF PEFT); "text": the keys and values the frozen
        model computes for init_text (needs apply(..., tokenizer=)).
    init_text: words whose activations start the prefix (cycled to P).
    init_std: std of the "normal" init (HF PEFT's nn.Embedding default, 1.0).
    modules_to_save: extra modules to train; None: the classifier head ("classifier" /
        "score") when the model has a fresh one, nothing for LM heads; []: none (the one
        heads rule, peftlab/core/adapt.py).
    """

    method = "prefix"
    num_virtual_tokens: int = 10
    projection_hidden: int | None = None
    init: str = "normal"
    init_text: str | None = None
    init_std: float = 1.0
    modules_to_save: list[str] | None = None

    def __post_init__(self):
        check_num_virtual_tokens(self.num_virtual_tokens, "PrefixConfig")
        check_number("PrefixConfig", "projection_hidden", self.projection_hidden, int, low=1,
                     none=True, hint=" (the MLP's hidden size)")
        check_number("PrefixConfig", "init_std", self.init_std, low=0,
                     hint=" (the std of the normal init)")
        if self.init not in ("normal", "text"):
            raise ValueError(f"PrefixConfig.init must be 'normal' or 'text', got {self.init!r}.")
        if self.init == "text" and not self.init_text:
            raise ValueError("PrefixConfig(init='text') needs init_text='some words'.")
        if self.init == "text" and self.projection_hidden is not None:
            raise ValueError("init='text' sets the prefix tensors directly; it cannot be combined "
                             "with projection_hidden (the MLP's output is not free to set).")


# --- apply / fold / save --------------------------------------------------------------------

def apply(model: nn.Module, config: PrefixConfig | PromptConfig | None = None, tokenizer=None):
    """Freeze `model` and give each self-attention layer a trainable prefix; returns the model.

    A PromptConfig still works here (deprecated): it is handed to pl.prompt.apply, the one door
    of input-level prompt tuning, with a DeprecationWarning."""
    config = config or PrefixConfig()
    if isinstance(config, PromptConfig):
        _deprecated("pl.prefix.apply(model, PromptConfig)", stacklevel=3)
        return prompt.apply(model, config, tokenizer=tokenizer)
    if not isinstance(config, PrefixConfig):
        raise TypeError(f"pl.prefix.apply takes a PrefixConfig or PromptConfig, got "
                        f"{type(config).__name__}.")

    def plan() -> Plan:
        calls = probe(model)                                    # validates; changes nothing
        heads = heads_for(model, config.modules_to_save, label="a prefix")
        if config.init == "text" and tokenizer is None:
            raise ValueError("PrefixConfig(init='text') needs the tokenizer: "
                             "pl.prefix.apply(model, config, tokenizer=tokenizer).")
        if hasattr(model, "prefix_encoder"):
            raise ValueError(f"{type(model).__name__} already has an attribute "
                             f"'prefix_encoder'.")
        _, Hkv, _, D = calls[0][1]
        P, hidden = config.num_virtual_tokens, config.projection_hidden
        check_virtual_tokens_fit(model, P, "PrefixConfig", 2 * len(calls) * Hkv * D * P
                                 if hidden is None else P * hidden)
        p = next(model.parameters())
        encoder = PrefixEncoder(len(calls), Hkv, config.num_virtual_tokens, D,
                                config.projection_hidden, config.init_std).to(p.device,
                                                                              adapter_dtype(p))
        if config.init == "text":
            with torch.no_grad():
                kv = text_activations(model, tokenizer, config.init_text,
                                      config.num_virtual_tokens)
                encoder.key.copy_(kv[:, 0])
                encoder.value.copy_(kv[:, 1])
        return Plan(heads, heads, parts=(encoder, calls))

    def attach(p: Plan) -> list:
        encoder, calls = p.parts
        model.add_module("prefix_encoder", encoder)
        for i, (module, _) in enumerate(calls):
            module.peftlab_prefix = PrefixSlot(encoder, i)
        set_attention(model, ATTN_PREFIX + attention_of(model))   # registered by probe
        return [model.register_forward_pre_hook(ensure_registered, with_kwargs=True)]

    return adapt(model, "prefix", config, plan, attach)


def fold(model: nn.Module) -> nn.Module:
    """Replace the reparametrisation MLP by the prefixes it produces (plain key/value tensors);
    the config's projection_hidden becomes None. Outputs are unchanged. A no-op when plain."""
    if get_method(model) != "prefix":
        raise ValueError("fold() needs a model carrying a prefix adapter (pl.prefix.apply).")
    enc = model.prefix_encoder
    if enc.projection_hidden is None:
        return model
    with torch.no_grad():
        kv = enc.all_kv()                                               # (L, 2, H, P, D)
    plain = PrefixEncoder(*enc.shape).to(kv.device, kv.dtype)
    with torch.no_grad():
        plain.key.copy_(kv[:, 0])
        plain.value.copy_(kv[:, 1])
    model.prefix_encoder = plain
    for m in model.modules():
        slot = getattr(m, "peftlab_prefix", None)
        if isinstance(slot, PrefixSlot):
            m.peftlab_prefix = PrefixSlot(plain, slot.layer)
    cfg = get_config(model)
    mark(model, "prefix", dataclasses.replace(cfg, projection_hidden=None),
         list(cfg.modules_to_save))
    return model


@torch.no_grad()
def attention_to_prefix(model: nn.Module, tokenizer, text: str) -> dict:
    """Attention probabilities from the real tokens of `text` to the virtual tokens.

    Returns {"attention": (L, H, T, P), "prefix_mass": (L, H, T) (summed over P),
    "tokens": T token strings, "num_virtual_tokens": P}. Runs once with eager attention."""
    method = get_method(model)
    if method == "prompt":
        return prompt.attention_to_prompt(model, tokenizer, text)
    if method != "prefix":
        raise ValueError("attention_to_prefix needs a model with pl.prefix.apply(...) applied.")
    enc = model.prefix_encoder
    P = enc.shape[2]
    enc_device = next(model.parameters()).device
    batch = tokenizer(text, return_tensors="pt").to(enc_device)
    enc.record = {}
    try:
        with eval_mode(model), attn_implementation(model, ATTN_PREFIX + "eager"):
            model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                               "token_type_ids")})
        rec = enc.record
    finally:
        enc.record = None
    att = torch.stack([rec[i][0, :, :, :P] for i in sorted(rec)]).float().cpu()  # (L, H, T, P)
    return {"attention": att, "prefix_mass": att.sum(-1),
            "tokens": tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()),
            "num_virtual_tokens": P}


def unload(model: nn.Module, merge: bool = False) -> nn.Module:
    """Take the prefix out: the encoder, the attention modules' slots and the hook go, the
    attention implementation comes back, and the modules_to_save weights recorded at apply
    are put back: the plain base model, bit for bit. Returns the model.

    merge=True is refused (raised before anything changes): a prefix is extra keys and
    values, not a weight update, so there is nothing to fold into the weights. A prompt model
    is handed to pl.prompt.unload (deprecated here, with a DeprecationWarning)."""
    if get_method(model) == "prompt":
        _deprecated("pl.prefix.unload on a prompt-tuned model", stacklevel=3)
        return prompt.unload(model, merge=merge)
    if get_method(model) != "prefix":
        raise ValueError("unload() needs a model carrying a prefix adapter (pl.prefix.apply).")
    if merge:
        raise ValueError(cannot_merge("prefix"))
    for m in model.modules():
        if isinstance(getattr(m, "peftlab_prefix", None), PrefixSlot):
            del m.peftlab_prefix
    del model.prefix_encoder
    restore(model)
    impl = attention_of(model)
    if impl.startswith(ATTN_PREFIX):
        set_attention(model, impl[len(ATTN_PREFIX):])
    unmark(model)
    return model


def _deprecated(what: str, stacklevel: int) -> None:
    """The DeprecationWarning of prompt tuning reached through pl.prefix."""
    warnings.warn(f"{what} is deprecated: use pl.prompt.PromptConfig / pl.prompt.apply "
                  f"(pl.prompt is prompt tuning's own package).", DeprecationWarning,
                  stacklevel=stacklevel)

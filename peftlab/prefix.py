"""Prefix tuning (Li & Liang, 2021): trainable keys and values joined to every attention layer.

    pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=10))
    pl.prefix.apply(model, pl.prefix.PrefixConfig(10, projection_hidden=512))  # the paper's MLP
    pl.prefix.fold(model)                       # MLP -> plain prefix tensors, for saving/inference
    pl.prefix.apply(model, pl.prefix.PromptConfig(num_virtual_tokens=10))  # prompt tuning

Each self-attention layer l gets P "virtual tokens" that exist only as a key prefix K_l and a
value prefix V_l, each (heads, P, head_dim). With the layer's own Q, K, V of shape (B, heads, T, D):

    K' = [K_l ; K]   V' = [V_l ; V]                       (B, heads, P + T, D)
    out = softmax(Q K'^T * scale + [0 ; mask]) V'          mask: padding (and causal) of the text

Every real token attends to all P prefix positions (also in a causal decoder: the prefix sits
"before" the text); padding stays masked; position ids of real tokens are unchanged; the base
model is frozen. The trainable count is layers * 2 * P * (kv_heads * head_dim), i.e.
layers * 2 * P * hidden for ordinary multi-head attention.

How it is wired (transformers >= 5; the code is in prefix_attention.py): every attention
module calls the function that `config._attn_implementation` names in transformers'
AttentionInterface. We register our own, "peftlab_prefix_sdpa" / "peftlab_prefix_eager": it
joins the layer's prefix to the keys and values and P open columns to the mask, then calls the
ordinary sdpa / eager attention. The prefix is never written into the KV cache: it is joined
afresh at every step, so cached generation sees exactly the prefix a full forward pass sees.
Differences from HF PEFT: PEFT passes the prefix as past_key_values, which shifts the real
tokens' position ids by P, and refuses BERT-family encoders under transformers 5.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.inject import (
    ensure_plain,
    find_targets,
    freeze,
    get_config,
    get_method,
    mark,
    unfreeze_modules,
)
from peftlab.prefix_attention import (
    ATTN_PREFIX,
    attn_implementation,
    base_attention,
    make_mask,
    probe,
    register,
)
from peftlab.prompt import PromptConfig

CLASSIFIER_HEADS = ("classifier", "score", "qa_outputs")


@dataclass
class PrefixConfig:
    method = "prefix"
    num_virtual_tokens: int = 10     # P: prefix length per layer; more = more capacity and compute
    projection_hidden: int | None = None  # None: train the prefixes directly; int: train them
    # through embedding (P, hidden) -> Linear -> tanh -> Linear (the paper's stabilising MLP)
    init: str = "normal"             # "normal": N(0, init_std) (as HF PEFT); "text": the keys and
    # values the frozen model computes for init_text (needs apply(..., tokenizer=))
    init_text: str | None = None     # words whose activations start the prefix (cycled to P)
    init_std: float = 1.0            # std of the "normal" init (HF PEFT's nn.Embedding default)
    modules_to_save: list[str] | None = None  # extra modules to train; None: the classifier
    # head ("classifier"/"score") when the model has a fresh one, nothing for LM heads

    def __post_init__(self):
        check_length(self.num_virtual_tokens, "PrefixConfig")
        if self.projection_hidden is not None and (not isinstance(self.projection_hidden, int)
                                                   or self.projection_hidden < 1):
            raise ValueError(f"PrefixConfig.projection_hidden must be None or a positive int, "
                             f"got {self.projection_hidden!r}.")
        if self.init not in ("normal", "text"):
            raise ValueError(f"PrefixConfig.init must be 'normal' or 'text', got {self.init!r}.")
        if self.init == "text" and not self.init_text:
            raise ValueError("PrefixConfig(init='text') needs init_text='some words'.")
        if self.init == "text" and self.projection_hidden is not None:
            raise ValueError("init='text' sets the prefix tensors directly; it cannot be combined "
                             "with projection_hidden (the MLP's output is not free to set).")


def check_length(p, who: str) -> None:
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"{who}.num_virtual_tokens must be a positive int (the number of virtual "
                         f"tokens), got {p!r}.")


class PrefixEncoder(nn.Module):
    """All layers' prefixes. Plain: `key`, `value` (L, H, P, D). Projected: `embedding` (P, E)
    and `mlp` E -> hidden -> L*2*H*D, read as (P, L, 2, H, D) (the HF PEFT layout)."""

    def __init__(self, layers: int, heads: int, P: int, head_dim: int,
                 projection_hidden: int | None = None, init_std: float = 1.0):
        super().__init__()
        self.shape = (layers, heads, P, head_dim)
        self.projection_hidden = projection_hidden
        if projection_hidden is None:
            self.key = nn.Parameter(torch.randn(layers, heads, P, head_dim) * init_std)
            self.value = nn.Parameter(torch.randn(layers, heads, P, head_dim) * init_std)
        else:
            E = heads * head_dim
            self.embedding = nn.Embedding(P, E)
            self.mlp = nn.Sequential(nn.Linear(E, projection_hidden), nn.Tanh(),
                                     nn.Linear(projection_hidden, layers * 2 * E))

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(key, value) prefixes of one layer, each (H, P, D)."""
        if self.projection_hidden is None:
            return self.key[layer], self.value[layer]
        _L, H, P, D = self.shape
        h = self.mlp[1](self.mlp[0](self.embedding.weight))            # (P, hidden)
        rows = slice(layer * 2 * H * D, (layer + 1) * 2 * H * D)       # only this layer's outputs
        out = F.linear(h, self.mlp[2].weight[rows], self.mlp[2].bias[rows])  # (P, 2*H*D)
        kv = out.view(P, 2, H, D).permute(1, 2, 0, 3)                  # (2, H, P, D)
        return kv[0], kv[1]

    def all_kv(self) -> torch.Tensor:
        """Every prefix, (L, 2, H, P, D)."""
        return torch.stack([torch.stack(self.layer_kv(i)) for i in range(self.shape[0])])


# --- apply / fold / save --------------------------------------------------------------------

def default_heads(model: nn.Module, names: list[str] | None) -> list[str]:
    """modules_to_save: the given names, or the model's classification head (a module named
    like CLASSIFIER_HEADS, e.g. RoBERTa's classifier.dense/out_proj); never an LM head."""
    if names is not None:
        return list(names)
    from peftlab.inject import head_names
    return [n for n in head_names(model) if set(n.split(".")[-2:]) & set(CLASSIFIER_HEADS)]


def apply(model: nn.Module, config: PrefixConfig | PromptConfig | None = None, tokenizer=None):
    """Freeze `model` and give each self-attention layer a trainable prefix; returns the model.

    A PromptConfig is handed to peftlab.prompt.apply (input-level prompt tuning)."""
    config = config or PrefixConfig()
    if isinstance(config, PromptConfig):
        from peftlab import prompt
        return prompt.apply(model, config, tokenizer=tokenizer)
    if not isinstance(config, PrefixConfig):
        raise TypeError(f"pl.prefix.apply takes a PrefixConfig or PromptConfig, got "
                        f"{type(config).__name__}.")
    ensure_plain(model, "prefix")
    calls = probe(model)                                        # validates; changes nothing
    heads = default_heads(model, config.modules_to_save)
    if heads:
        find_targets(model, heads, method="modules_to_save")
    if config.init == "text" and tokenizer is None:
        raise ValueError("PrefixConfig(init='text') needs the tokenizer: "
                         "pl.prefix.apply(model, config, tokenizer=tokenizer).")
    if hasattr(model, "prefix_encoder"):
        raise ValueError(f"{type(model).__name__} already has an attribute 'prefix_encoder'.")
    _, Hkv, _, D = calls[0][1]
    p = next(model.parameters())
    encoder = PrefixEncoder(len(calls), Hkv, config.num_virtual_tokens, D,
                            config.projection_hidden, config.init_std).to(p.device, p.dtype)
    if config.init == "text":
        with torch.no_grad():
            kv = text_activations(model, tokenizer, config.init_text, config.num_virtual_tokens)
            encoder.key.copy_(kv[:, 0])
            encoder.value.copy_(kv[:, 1])
    register()
    freeze(model)
    model.add_module("prefix_encoder", encoder)
    for i, (module, _) in enumerate(calls):
        module.__dict__["peftlab_prefix"] = (encoder, i)
    model.config._attn_implementation_internal = ATTN_PREFIX + model.config._attn_implementation
    unfreeze_modules(model, heads)
    mark(model, "prefix", config, heads)
    return model


@torch.no_grad()
def text_activations(model, tokenizer, text: str, P: int) -> torch.Tensor:
    """Keys and values the frozen model computes for `text`'s first P tokens (cycled if
    shorter), (L, 2, Hkv, P, D): Li & Liang's "initialise with real words' activations"."""
    from transformers import AttentionInterface

    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise ValueError(f"init_text {text!r} gives no tokens.")
    ids = ids[:, torch.arange(P) % ids.shape[1]].to(next(model.parameters()).device)
    impl, kv = model.config._attn_implementation, []

    def grab(module, query, key, value, mask, **kw):
        kv.append(torch.stack([key[0], value[0]]))                     # (2, Hkv, P, D)
        return base_attention(module, impl)(module, query, key, value, mask, **kw)

    AttentionInterface.register("peftlab_grab", grab)
    from transformers.masking_utils import AttentionMaskInterface
    AttentionMaskInterface.register("peftlab_grab", make_mask(impl))
    was_training = model.training
    try:
        with attn_implementation(model, "peftlab_grab"):
            model.eval()
            model(input_ids=ids)
    finally:
        model.train(was_training)
    return torch.stack(kv)


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
        if "peftlab_prefix" in m.__dict__:
            m.__dict__["peftlab_prefix"] = (plain, m.__dict__["peftlab_prefix"][1])
    mark(model, "prefix", dataclasses.replace(get_config(model), projection_hidden=None),
         default_heads(model, get_config(model).modules_to_save))
    return model


def prepare_load(model: nn.Module, config: PrefixConfig, tensors) -> None:
    """Loading needs the right structure only: the saved tensors replace any init."""
    apply(model, dataclasses.replace(config, init="normal"))


@torch.no_grad()
def attention_to_prefix(model: nn.Module, tokenizer, text: str) -> dict:
    """Attention probabilities from the real tokens of `text` to the virtual tokens.

    Returns {"attention": (L, H, T, P), "prefix_mass": (L, H, T) (summed over P),
    "tokens": T token strings, "num_virtual_tokens": P}. Runs once with eager attention."""
    method = get_method(model)
    if method == "prompt":
        from peftlab import prompt
        return prompt.attention_to_prompt(model, tokenizer, text)
    if method != "prefix":
        raise ValueError("attention_to_prefix needs a model with pl.prefix.apply(...) applied.")
    enc = model.prefix_encoder
    P = enc.shape[2]
    enc_device = next(model.parameters()).device
    batch = tokenizer(text, return_tensors="pt").to(enc_device)
    enc.__dict__["record"] = {}
    was_training = model.training
    try:
        model.eval()
        with attn_implementation(model, ATTN_PREFIX + "eager"):
            model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                               "token_type_ids")})
        rec = enc.__dict__["record"]
    finally:
        enc.__dict__.pop("record", None)
        model.train(was_training)
    att = torch.stack([rec[i][0, :, :, :P] for i in sorted(rec)]).float().cpu()  # (L, H, T, P)
    return {"attention": att, "prefix_mass": att.sum(-1),
            "tokens": tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()),
            "num_virtual_tokens": P}



def _no_hf(*_):
    from peftlab.adapters import AdapterError
    raise AdapterError("peftlab's prefix keeps the real tokens' position ids while Hugging Face "
                       "PEFT's prefix tuning shifts them by num_virtual_tokens (and refuses BERT "
                       "encoders), so the adapter would compute something else there. Use "
                       "format='peftlab' (and peft itself for PEFT's prefix adapters).")


to_hf_peft = from_hf_peft = _no_hf   # refused on purpose, with the reason

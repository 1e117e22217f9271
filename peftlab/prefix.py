"""Prefix tuning (Li & Liang, 2021): trainable keys and values joined to every attention layer.

    pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=10))
    pl.prefix.apply(model, pl.prefix.PrefixConfig(10, projection_hidden=512))  # the paper's MLP
    pl.prefix.fold(model)                       # MLP -> plain prefix tensors, for saving/inference
    pl.prefix.apply(model, pl.prefix.PromptConfig(num_virtual_tokens=10))  # prompt tuning (prompt.py)

Each self-attention layer l gets P "virtual tokens" that exist only as a key prefix K_l and a
value prefix V_l, each (heads, P, head_dim). With the layer's own Q, K, V of shape (B, heads, T, D):

    K' = [K_l ; K]   V' = [V_l ; V]                       (B, heads, P + T, D)
    out = softmax(Q K'^T * scale + [0 ; mask]) V'          mask: padding (and causal) of the text

Every real token attends to all P prefix positions (also in a causal decoder: the prefix sits
"before" the text); padding stays masked; position ids of real tokens are unchanged; the base
model is frozen. The trainable count is layers * 2 * P * (kv_heads * head_dim), i.e.
layers * 2 * P * hidden for ordinary multi-head attention.

How it is wired (transformers >= 5): every attention module calls the function that
`config._attn_implementation` names in transformers' AttentionInterface. We register our own,
"peftlab_prefix_sdpa" / "peftlab_prefix_eager": it joins the layer's prefix to the keys and values
and one column block to the mask, then calls the ordinary sdpa / eager attention. A matching
mask function (AttentionMaskInterface) makes the causal mask explicit so it can be extended.
The prefix is never written into the KV cache: it is joined afresh at every step, so cached
generation sees exactly the same prefix as a full forward pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.inject import ensure_plain, find_targets, freeze, get_config, get_method, mark, unfreeze_modules
from peftlab.prompt import PromptConfig  # noqa: F401  (pl.prefix.PromptConfig, the design's name)

ATTN_PREFIX = "peftlab_prefix_"          # registered names: peftlab_prefix_sdpa, peftlab_prefix_eager
BASES = ("sdpa", "eager")
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
        L, H, P, D = self.shape
        h = self.mlp[1](self.mlp[0](self.embedding.weight))            # (P, hidden)
        rows = slice(layer * 2 * H * D, (layer + 1) * 2 * H * D)       # only this layer's outputs
        out = F.linear(h, self.mlp[2].weight[rows], self.mlp[2].bias[rows])  # (P, 2*H*D)
        kv = out.view(P, 2, H, D).permute(1, 2, 0, 3)                  # (2, H, P, D)
        return kv[0], kv[1]

    def all_kv(self) -> torch.Tensor:
        """Every prefix, (L, 2, H, P, D)."""
        return torch.stack([torch.stack(self.layer_kv(i)) for i in range(self.shape[0])])


# --- the attention function transformers calls ----------------------------------------------

def _base_attention(module: nn.Module, base: str):
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


def _make_attention(base: str):
    def prefix_attention(module, query, key, value, attention_mask, **kwargs):
        fn = _base_attention(module, base)
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


def _make_mask(base: str):
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
            AttentionInterface.register(ATTN_PREFIX + base, _make_attention(base))
            AttentionMaskInterface.register(ATTN_PREFIX + base, _make_mask(base))


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
        return _make_attention(impl)(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("peftlab_probe", recorder)
    AttentionMaskInterface.register("peftlab_probe", _make_mask(impl))
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.arange(1, 4).clamp(max=vocab - 1)[None].to(model.get_input_embeddings().weight.device)
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


# --- apply / fold / save --------------------------------------------------------------------

def default_heads(model: nn.Module, names: list[str] | None) -> list[str]:
    if names is not None:
        return list(names)
    from peftlab.inject import head_names
    return [n for n in head_names(model) if n.rsplit(".", 1)[-1] in CLASSIFIER_HEADS]


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
        return _base_attention(module, impl)(module, query, key, value, mask, **kw)

    AttentionInterface.register("peftlab_grab", grab)
    from transformers.masking_utils import AttentionMaskInterface
    AttentionMaskInterface.register("peftlab_grab", _make_mask(impl))
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


def to_hf_peft(model: nn.Module):
    """Refused, with the reason: the two prefixes do not compute the same thing."""
    from peftlab.adapters import AdapterError
    raise AdapterError("peftlab's prefix keeps the real tokens' position ids (0, 1, ...) while "
                       "Hugging Face PEFT's prefix tuning shifts them by num_virtual_tokens, and "
                       "PEFT refuses BERT-family encoders; an exported prefix would give other "
                       "outputs there. Save it with format='peftlab'.")


def from_hf_peft(hf_cfg: dict, tensors):
    from peftlab.adapters import AdapterError
    raise AdapterError("peftlab does not import Hugging Face PREFIX_TUNING adapters: PEFT "
                       "shifts the real tokens' positions by num_virtual_tokens and peftlab "
                       "does not, so the adapter would compute something else. Load it with peft.")

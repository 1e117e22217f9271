"""Prompt tuning (Lester et al., 2021): P trainable input embeddings joined to every input.

    pl.prefix.apply(model, pl.prefix.PromptConfig(num_virtual_tokens=10))
    pl.prefix.apply(model, pl.prefix.PromptConfig(10, init="text", init_text="good or bad"),
                    tokenizer=tokenizer)

The input-level sibling of prefix tuning: instead of keys and values in every layer, only the
input sequence grows. With token embeddings X (B, T, E) and the trainable prompt Z (P, E):

    encoder (BERT):     [x_cls ; Z ; x_1 .. x_T-1]   the prompt goes after [CLS], so the pooler,
                                                     which reads position 0, still reads [CLS]
    decoder (GPT-2):    [Z ; x_0 .. x_T-1]           the prompt comes first, as in the paper

and the attention mask gets P ones at the same place (padding stays masked). Real tokens move P
positions to the right (as in HF PEFT). Trainable: P * E parameters (+ the classifier head).

How it is wired: a forward pre-hook on the model inserts P placeholder token ids (a non-pad id,
so GPT-2's classifier still finds the last real token) and extends attention_mask,
token_type_ids, position_ids and token-level labels; a forward hook on the input-embedding
layer swaps the placeholders' embeddings for the prompt Z. A forward hook on the model drops the
P virtual positions from token-level logits, so outputs line up with the caller's tokens
(hidden states and attentions keep them). In
cached generation the prompt is in the cache after the first step; later steps only extend the
mask and shift position ids.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.inject import ensure_plain, find_targets, freeze, get_method, mark, unfreeze_modules


@dataclass
class PromptConfig:
    method = "prompt"
    num_virtual_tokens: int = 10     # P: prompt length; Lester et al. find 20-100 best on T5
    init: str = "vocab"              # "vocab": embeddings of P random vocabulary tokens;
    # "text": embeddings of init_text's tokens (cycled to P); "normal": N(0, 1) (HF "RANDOM")
    init_text: str | None = None     # e.g. "Classify the sentiment:" (needs apply(..., tokenizer=))
    position: str = "auto"           # "auto": after the first token for encoders (keeps [CLS]
    # first for the pooler), at the start for decoders; or "start" / "after_first" explicitly
    seed: int = 0                    # seeds the "vocab"/"normal" init (same seed, same prompt)
    modules_to_save: list[str] | None = None  # extra modules to train; None: the classifier head

    def __post_init__(self):
        from peftlab.prefix import check_length
        check_length(self.num_virtual_tokens, "PromptConfig")
        if self.init not in ("vocab", "text", "normal"):
            raise ValueError(f"PromptConfig.init must be 'vocab', 'text' or 'normal', got "
                             f"{self.init!r}.")
        if self.init == "text" and not self.init_text:
            raise ValueError("PromptConfig(init='text') needs init_text='some words'.")
        if self.position not in ("auto", "start", "after_first"):
            raise ValueError(f"PromptConfig.position must be 'auto', 'start' or 'after_first', "
                             f"got {self.position!r}.")


class PromptEmbedding(nn.Module):
    """The trainable prompt `weight` (P, E) and where it goes (`start`: 0 or 1)."""

    def __init__(self, weight: torch.Tensor, start: int, placeholder: int):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.start = start               # insertion index in the sequence
        self.placeholder = placeholder   # token id used as a stand-in before the swap
        self.pending = False             # set by the model pre-hook, used by the embedding hook


def _insert(t: torch.Tensor, s: int, block: torch.Tensor) -> torch.Tensor:
    """t (B, T, ...) with `block` (B, P, ...) inserted at index s along dim 1."""
    return torch.cat([t[:, :s], block, t[:, s:]], dim=1)


def _cache_length(kw: dict) -> int:
    cache = kw.get("cache", kw.get("past_key_values"))
    return cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0


def _pre_hook(model: nn.Module, args, kwargs):
    pe: PromptEmbedding = model.prompt_encoder
    kw = inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments
    kw.update(kw.pop("kwargs", {}))
    P, s = pe.weight.shape[0], pe.start
    ids, embeds, mask = kw.get("input_ids"), kw.get("inputs_embeds"), kw.get("attention_mask")
    B = (ids if ids is not None else embeds).shape[0]
    T = (ids if ids is not None else embeds).shape[1]
    if mask is not None and mask.ndim == 2:
        ones = torch.ones(B, P, dtype=mask.dtype, device=mask.device)
        kw["attention_mask"] = _insert(mask, s, ones)
    pos = kw.get("position_ids")
    if _cache_length(kw) > 0:           # a cached generation step: the prompt is in the cache
        if pos is not None:
            kw["position_ids"] = pos + P
        pe.pending = False
        return (), kw
    if ids is not None:
        kw["input_ids"] = _insert(ids, s, torch.full((B, P), pe.placeholder, dtype=ids.dtype,
                                                     device=ids.device))
        pe.pending = True               # the embedding hook swaps in the prompt
    else:
        kw["inputs_embeds"] = _insert(embeds, s, pe.weight.to(embeds.dtype).expand(B, -1, -1))
    if kw.get("token_type_ids") is not None:
        tt = kw["token_type_ids"]
        kw["token_type_ids"] = _insert(tt, s, torch.zeros(B, P, dtype=tt.dtype, device=tt.device))
    if pos is not None:
        prompt_pos = torch.arange(P, device=pos.device) + (pos[:, s - 1:s] + 1 if s else 0)
        kw["position_ids"] = torch.cat([pos[:, :s], prompt_pos.expand(pos.shape[0], -1),
                                        pos[:, s:] + P], dim=1)
    labels = kw.get("labels")
    if labels is not None and labels.ndim == 2 and labels.shape[1] == T:  # token-level labels
        kw["labels"] = _insert(labels, s, torch.full((B, P), -100, dtype=labels.dtype,
                                                      device=labels.device))
    model.__dict__["_prompt_len"] = T + P
    return (), kw


def _embedding_hook(emb: nn.Module, args, out):
    pe: PromptEmbedding = emb.__dict__["peftlab_prompt"]
    if not pe.pending:
        return out
    pe.pending = False
    s, P = pe.start, pe.weight.shape[0]
    return _insert(torch.cat([out[:, :s], out[:, s + P:]], dim=1), s,
                   pe.weight.to(out.dtype).expand(out.shape[0], -1, -1))


def _post_hook(model: nn.Module, args, kwargs, out):
    """Drop the P virtual positions from token-level logits (B, T+P, C) -> (B, T, C)."""
    full = model.__dict__.pop("_prompt_len", None)
    model.prompt_encoder.pending = False
    logits = getattr(out, "logits", None)
    if full is None or logits is None or logits.ndim != 3 or logits.shape[1] != full:
        return out
    s, P = model.prompt_encoder.start, model.prompt_encoder.weight.shape[0]
    out.logits = torch.cat([logits[:, :s], logits[:, s + P:]], dim=1)
    return out


def _is_causal(model: nn.Module) -> bool:
    return any(getattr(m, "is_causal", False) for m in model.modules()) or \
        bool(getattr(model.config, "is_decoder", False))


def _init_weight(model, config: PromptConfig, tokenizer) -> torch.Tensor:
    emb = model.get_input_embeddings().weight.detach()
    P = config.num_virtual_tokens
    g = torch.Generator().manual_seed(config.seed)
    if config.init == "normal":
        return torch.randn(P, emb.shape[1], generator=g).to(emb.device, emb.dtype)
    if config.init == "vocab":
        rows = torch.randint(0, min(emb.shape[0], 5000), (P,), generator=g)
        return emb[rows.to(emb.device)].clone()
    if tokenizer is None:
        raise ValueError("PromptConfig(init='text') needs the tokenizer: "
                         "pl.prefix.apply(model, config, tokenizer=tokenizer).")
    ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"init_text {config.init_text!r} gives no tokens.")
    return emb[torch.tensor([ids[i % len(ids)] for i in range(P)], device=emb.device)].clone()


def apply(model: nn.Module, config: PromptConfig, tokenizer=None) -> nn.Module:
    """Freeze `model` and prepend a trainable prompt to its inputs; returns the model."""
    from peftlab.prefix import default_heads
    from peftlab.prefix_attention import check_supported

    ensure_plain(model, "prompt")
    check_supported(model, "prompt tuning")
    if hasattr(model, "prompt_encoder"):
        raise ValueError(f"{type(model).__name__} already has an attribute 'prompt_encoder'.")
    heads = default_heads(model, config.modules_to_save)
    if heads:
        find_targets(model, heads, method="modules_to_save")
    weight = _init_weight(model, config, tokenizer)                # validates init_text
    causal = _is_causal(model)
    position = config.position if config.position != "auto" else \
        ("start" if causal else "after_first")
    pad = getattr(model.config, "pad_token_id", None)
    placeholder = 1 if pad == 0 else 0
    pe = PromptEmbedding(weight, 0 if position == "start" else 1, placeholder)
    freeze(model)
    model.add_module("prompt_encoder", pe)
    emb = model.get_input_embeddings()
    emb.__dict__["peftlab_prompt"] = pe
    model.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    emb.register_forward_hook(_embedding_hook)
    model.register_forward_hook(_post_hook, with_kwargs=True)
    unfreeze_modules(model, heads)
    mark(model, "prompt", config, heads)
    return model


def prepare_load(model: nn.Module, config: PromptConfig, tensors) -> None:
    apply(model, dataclasses.replace(config, init="normal"))


@torch.no_grad()
def attention_to_prompt(model: nn.Module, tokenizer, text: str) -> dict:
    """Like prefix.attention_to_prefix for a prompt-tuned model: (L, H, T, P) probabilities
    from the real tokens to the P prompt positions (eager attention, output_attentions)."""
    from peftlab.prefix_attention import attn_implementation

    if get_method(model) != "prompt":
        raise ValueError("attention_to_prompt needs a model with a PromptConfig applied.")
    pe = model.prompt_encoder
    s, P = pe.start, pe.weight.shape[0]
    batch = tokenizer(text, return_tensors="pt").to(pe.weight.device)
    was_training = model.training
    try:
        model.eval()
        with attn_implementation(model, "eager"):
            out = model(**{k: v for k, v in batch.items()
                           if k in ("input_ids", "attention_mask", "token_type_ids")},
                        output_attentions=True)
    finally:
        model.train(was_training)
    att = torch.stack(out.attentions)[:, 0].float().cpu()              # (L, H, T+P, T+P)
    real = [i for i in range(att.shape[-1]) if not s <= i < s + P]
    att = att[:, :, real][..., s:s + P]                                 # (L, H, T, P)
    return {"attention": att, "prefix_mass": att.sum(-1),
            "tokens": tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()),
            "num_virtual_tokens": P}


# --- Hugging Face PEFT format (PROMPT_TUNING) ------------------------------------------------

def to_hf_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, {"prompt_embeddings": (P, E)}) for peft's PromptTuningConfig.

    Only for decoders with the prompt at the start and no trained head: that is exactly what
    peft's CAUSAL_LM prompt tuning computes (it always puts the prompt first)."""
    from peftlab import hf_peft
    from peftlab.adapters import AdapterError
    from peftlab.inject import get_targets

    pe = model.prompt_encoder
    if pe.start != 0 or get_targets(model):
        raise AdapterError("Hugging Face PEFT puts the prompt before every token and has no "
                           "place for a trained head here, so this adapter (prompt after the "
                           "first token, or with a trained classifier head) would compute "
                           "something else there; save it with format='peftlab'.")
    c = model.config
    hf_cfg = hf_peft.base_config(model, "PROMPT_TUNING")
    hf_cfg.update({"task_type": "CAUSAL_LM", "num_virtual_tokens": pe.weight.shape[0],
                   "token_dim": pe.weight.shape[1], "num_transformer_submodules": 1,
                   "num_attention_heads": getattr(c, "num_attention_heads", None),
                   "num_layers": getattr(c, "num_hidden_layers", None), "modules_to_save": None,
                   "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
                   "tokenizer_name_or_path": None, "tokenizer_kwargs": None})
    return hf_cfg, {"prompt_embeddings": pe.weight.detach()}


def from_hf_peft(hf_cfg: dict, tensors: dict[str, torch.Tensor]):
    """("prompt", PromptConfig(position="start"), {"prompt_encoder.weight": (P, E)})."""
    from peftlab.adapters import AdapterError

    if set(tensors) != {"prompt_embeddings"} or hf_cfg.get("num_transformer_submodules", 1) != 1:
        raise AdapterError(f"peftlab reads Hugging Face prompt tuning adapters of decoder-only "
                           f"models holding just 'prompt_embeddings'; this one holds "
                           f"{sorted(tensors)}. Load it with peft.")
    w = tensors["prompt_embeddings"]
    config = PromptConfig(num_virtual_tokens=int(w.shape[0]), init="normal", position="start",
                          modules_to_save=[])
    return "prompt", config, {"prompt_encoder.weight": w}

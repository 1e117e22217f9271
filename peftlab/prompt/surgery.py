"""Prompt tuning (Lester et al., 2021): P trainable input embeddings joined to every input.

    pl.prompt.apply(model, pl.prompt.PromptConfig(num_virtual_tokens=10))
    pl.prompt.apply(model, pl.prompt.PromptConfig(10, init="text", init_text="good or bad"),
                    tokenizer=tokenizer)

The input-level sibling of prefix tuning: instead of keys and values in every layer, only the
input sequence grows. With token embeddings X (B, T, E) and the trainable prompt Z (P, E):

    encoder (BERT):     [x_cls ; Z ; x_1 .. x_T-1]   the prompt goes after [CLS], so the pooler,
                                                     which reads position 0, still reads [CLS]
    decoder (GPT-2):    [Z ; x_0 .. x_T-1]           the prompt comes first, as in the paper

and the attention mask gets P ones at the same place (padding stays masked). Real tokens move P
positions to the right (as in HF PEFT). Trainable: P * E parameters (+ the classifier head).

The math (insert_prompt) is in peftlab/prompt/prompt.py, the hooks that call it in
peftlab/prompt/hooks.py; this file is the surgery: apply, unload, attention_to_prompt; the
Hugging Face PEFT format is in peftlab/prompt/format.py.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.adapt import Plan, adapt, heads_for
from peftlab.core.errors import check_number
from peftlab.core.hf import attn_implementation, check_num_virtual_tokens, check_supported, \
    check_virtual_tokens_fit
from peftlab.core.layers import adapter_dtype
from peftlab.core.registry import cannot_merge
from peftlab.core.state import eval_mode, get_method, restore, unmark
from peftlab.prompt.hooks import after_embedding, after_model, before_model
from peftlab.prompt.prompt import PromptEmbedding


@dataclass
class PromptConfig:
    """Prompt tuning: P trainable input embeddings inserted into every sequence.

    num_virtual_tokens: P, the prompt length (Lester et al. find 20-100 best on T5).
    init: "vocab": embeddings of P distinct tokens drawn from the 5,000 most frequent words
        (Lester et al.; pass tokenizer=); "text": embeddings of init_text's tokens (cycled to
        P); "normal": N(0, 1) (HF PEFT's "RANDOM").
    init_text: e.g. "Classify the sentiment:" (needs apply(..., tokenizer=)).
    position: "auto": after the first token for encoders (keeps [CLS] first for the
        pooler), at the start for decoders; or "start" / "after_first" explicitly.
    seed: seeds the "vocab" / "normal" init (same seed, same prompt).
    modules_to_save: extra modules to train; None: the classifier head; []: none (the one
        heads rule, peftlab/core/adapt.py).
    """

    method = "prompt"
    num_virtual_tokens: int = 10
    init: str = "vocab"
    init_text: str | None = None
    position: str = "auto"
    seed: int = 0
    modules_to_save: list[str] | None = None

    def __post_init__(self):
        check_num_virtual_tokens(self.num_virtual_tokens, "PromptConfig")
        check_number("PromptConfig", "seed", self.seed, int)
        if self.init not in ("vocab", "text", "normal"):
            raise ValueError(f"PromptConfig.init must be 'vocab', 'text' or 'normal', got "
                             f"{self.init!r}.")
        if self.init == "text" and not self.init_text:
            raise ValueError("PromptConfig(init='text') needs init_text='some words'.")
        if self.position not in ("auto", "start", "after_first"):
            raise ValueError(f"PromptConfig.position must be 'auto', 'start' or 'after_first', "
                             f"got {self.position!r}.")


def _is_causal(model: nn.Module) -> bool:
    return any(getattr(m, "is_causal", False) for m in model.modules()) or \
        bool(getattr(model.config, "is_decoder", False))


VOCAB_TOP = 5000   # Lester et al. sample the prompt from the 5,000 most common tokens
_PLACEHOLDER = re.compile(r"\[.*\]|<.*>")          # [PAD], [unused12], <|endoftext|>, <unk>
_MARKERS = ("##", "\u0120", "\u2581")             # WordPiece "##", GPT-2 "Ġ", SentencePiece "▁"


def vocab_candidates(model: nn.Module, tokenizer=None) -> torch.Tensor:
    """Token ids init="vocab" draws from: the first VOCAB_TOP word tokens in id order.

    Vocabularies are stored roughly by frequency (WordPiece after its specials and single
    characters, BPE in merge order, SentencePiece by score), so the first word tokens are the
    most frequent ones. With a tokenizer, special tokens, placeholders ([unusedN], <...>) and
    tokens of one character (after removing the word markers ##, Ġ, ▁) or without a letter are
    skipped. Without one, ids below VOCAB_TOP minus the config's special ids (in a WordPiece
    vocabulary those include [unusedN] and single characters: pass tokenizer=)."""
    n = model.get_input_embeddings().weight.shape[0]
    if tokenizer is None:
        cfg = model.config
        special = {getattr(cfg, f"{k}_token_id", None) for k in
                   ("pad", "bos", "eos", "sep", "cls", "unk", "mask", "decoder_start")}
        return torch.tensor([i for i in range(min(n, VOCAB_TOP)) if i not in special])
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    n = min(n, len(tokenizer))
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    out = []
    for i, tok in enumerate(tokens):
        if i in special or not isinstance(tok, str) or _PLACEHOLDER.fullmatch(tok):
            continue
        word = tok
        for m in _MARKERS:
            word = word.replace(m, "")
        if len(word) > 1 and any(c.isalpha() for c in word):
            out.append(i)
            if len(out) == VOCAB_TOP:
                break
    if not out:
        raise ValueError("PromptConfig(init='vocab') found no word tokens in the tokenizer's "
                         "vocabulary; use init='normal' or init='text'.")
    return torch.tensor(out)


def _init_weight(model, config: PromptConfig, tokenizer) -> torch.Tensor:
    emb = model.get_input_embeddings().weight.detach()
    P = config.num_virtual_tokens
    g = torch.Generator().manual_seed(config.seed)
    if config.init == "normal":
        return torch.randn(P, emb.shape[1], generator=g).to(emb.device, emb.dtype)
    if config.init == "vocab":
        if tokenizer is None:
            warnings.warn("PromptConfig(init='vocab') without tokenizer=: the prompt is drawn "
                          "from ids below 5,000 (not the 5,000 most frequent words, e.g. "
                          "[unusedN] and single characters in a WordPiece vocabulary). Pass "
                          "tokenizer= to pl.prompt.apply.", stacklevel=5)
        cands = vocab_candidates(model, tokenizer)
        pick = torch.randperm(len(cands), generator=g)[:P] if P <= len(cands) else \
            torch.randint(0, len(cands), (P,), generator=g)       # distinct when possible
        return emb[cands[pick].to(emb.device)].clone()
    if tokenizer is None:
        raise ValueError("PromptConfig(init='text') needs the tokenizer: "
                         "pl.prompt.apply(model, config, tokenizer=tokenizer).")
    ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"init_text {config.init_text!r} gives no tokens.")
    return emb[torch.tensor([ids[i % len(ids)] for i in range(P)], device=emb.device)].clone()


def apply(model: nn.Module, config: PromptConfig, tokenizer=None) -> nn.Module:
    """Freeze `model` and prepend a trainable prompt to its inputs; returns the model."""

    def plan() -> Plan:
        check_supported(model, "prompt tuning")
        if hasattr(model, "prompt_encoder"):
            raise ValueError(f"{type(model).__name__} already has an attribute "
                             f"'prompt_encoder'.")
        heads = heads_for(model, config.modules_to_save, label="a prompt")
        hidden = model.get_input_embeddings().weight.shape[1]
        check_virtual_tokens_fit(model, config.num_virtual_tokens, "PromptConfig",
                                 config.num_virtual_tokens * hidden)
        weight = _init_weight(model, config, tokenizer)            # validates init_text
        causal = _is_causal(model)
        position = config.position if config.position != "auto" else \
            ("start" if causal else "after_first")
        pad = getattr(model.config, "pad_token_id", None)
        placeholder = 1 if pad == 0 else 0
        pe = PromptEmbedding(weight.to(adapter_dtype(weight)), 0 if position == "start" else 1,
                             placeholder, causal)
        return Plan(heads, heads, parts=pe)

    def attach(p: Plan) -> list:
        pe = p.parts
        model.add_module("prompt_encoder", pe)
        emb = model.get_input_embeddings()
        return [model.register_forward_pre_hook(functools.partial(before_model, pe),
                                                with_kwargs=True),
                emb.register_forward_hook(functools.partial(after_embedding, pe)),
                model.register_forward_hook(functools.partial(after_model, pe),
                                            with_kwargs=True, always_call=True)]

    return adapt(model, "prompt", config, plan, attach)


def unload(model: nn.Module, merge: bool = False) -> nn.Module:
    """Take the prompt out: its hooks and the prompt_encoder go, and the modules_to_save
    weights recorded at apply come back: the base model, bit for bit. Returns the model.

    merge=True is refused (raised before anything changes): a prompt is extra input tokens,
    not a weight update, so there is nothing to fold into the weights."""
    if get_method(model) != "prompt":
        raise ValueError("unload() needs a model carrying a prompt (pl.prompt.apply with a "
                         "PromptConfig).")
    if merge:
        raise ValueError(cannot_merge("prompt"))
    restore(model)
    unmark(model)                          # removes the three hooks
    del model.prompt_encoder
    return model


@torch.no_grad()
def attention_to_prompt(model: nn.Module, tokenizer, text: str) -> dict:
    """Like prefix.attention_to_prefix for a prompt-tuned model: (L, H, T, P) probabilities
    from the real tokens to the P prompt positions (eager attention, output_attentions)."""
    if get_method(model) != "prompt":
        raise ValueError("attention_to_prompt needs a model with a PromptConfig applied.")
    pe = model.prompt_encoder
    s, P = pe.start, pe.weight.shape[0]
    batch = tokenizer(text, return_tensors="pt").to(pe.weight.device)
    with eval_mode(model), attn_implementation(model, "eager"):
        out = model(**{k: v for k, v in batch.items()
                       if k in ("input_ids", "attention_mask", "token_type_ids")},
                    output_attentions=True)
    att = torch.stack(out.attentions)[:, 0].float().cpu()              # (L, H, T+P, T+P)
    real = [i for i in range(att.shape[-1]) if not s <= i < s + P]
    att = att[:, :, real][..., s:s + P]                                 # (L, H, T, P)
    return {"attention": att, "prefix_mass": att.sum(-1),
            "tokens": tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()),
            "num_virtual_tokens": P}

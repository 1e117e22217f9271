"""pl.generate: answers from a causal LM, batched, with a KV cache, any adapter, one per row.

    pl.generate(model, tokenizer, "What is the capital of France?")          # -> "The capital ..."
    pl.generate(model, tokenizer, [conv1, conv2], max_new_tokens=32)        # -> [str, str]
    pl.generate(model, tokenizer, prompts, adapter_names=["sql", "base"])   # a LoRA per row

The loop, written out (transformers' generate() does the same with more options):

    ids, mask = left_pad(prompts)                  # (B, T): every prompt ends at the right edge
    pos = mask.cumsum(-1) - 1                      # each row counts from its first real token
    logits, cache = model(ids, mask, pos, cache)   # prefill: the whole prompt once
    repeat:  next = pick(logits[:, -1])            # greedy argmax, or sampled (temperature, top_p)
             logits, cache = model(next, mask + 1 column, pos[:, -1] + 1, cache)   # one token

The KV cache keeps every layer's keys and values, so each new token costs one position, not
the whole sequence again. Left padding plus explicit position ids make a padded row compute
what it computes alone (tests/test_generate.py checks the first-step logits to 1e-4). A row
stops at the end-of-turn token (or a `stop` string, or max_new_tokens); the batch stops when
every row has. Rows of a batch can use different LoRA adapters (`adapter_names`, as
pl.predict does): each row's numbers are those it would get alone. The same ChatTemplate
renders prompts here, in training and in the server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.data.template import DEFAULT_SYSTEM, ChatDataError, ChatTemplate, as_messages
from peftlab.core.state import eval_mode


@dataclass
class Generation:
    """One answer.

    text: the answer, decoded (special tokens and a stop string left out). tokens: its token
    ids (the end-of-turn token not included). prompt_tokens: how many tokens the rendered
    prompt had. finish_reason: "stop" (the end-of-turn token or a stop string) or "length"
    (max_new_tokens reached).
    """

    text: str
    tokens: list[int]
    prompt_tokens: int
    finish_reason: str


def _conversations(messages) -> tuple[list, bool]:
    """(a list of conversations, whether one was given)."""
    if isinstance(messages, str):
        return [messages], True
    if isinstance(messages, Sequence) and messages and all(isinstance(m, dict) for m in messages) \
            and all("role" in m for m in messages):
        return [messages], True               # one conversation
    if isinstance(messages, Sequence) and messages:
        return list(messages), False
    raise ValueError("pl.generate needs a prompt: a string, a conversation (a list of "
                     "{'role', 'content'} messages) or a list of them.")


def stop_ids(model: nn.Module, tokenizer) -> set[int]:
    """Token ids that end an answer: the tokenizer's eos and the model's generation config's."""
    ids = set()
    for source in (tokenizer.eos_token_id,
                   getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return ids


def left_pad(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, T), each prompt right-aligned."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    return ids.to(device), mask.to(device)


def new_cache(model: nn.Module):
    from transformers import DynamicCache
    try:
        return DynamicCache(config=model.config)
    except TypeError:                       # an older transformers
        return DynamicCache()


def cache_arg(model: nn.Module) -> str:
    """The forward argument that takes the KV cache: "cache" (transformers >= 5.x), else
    "past_key_values"."""
    import inspect
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def prefill(model: nn.Module, prompts: list[list[int]], pad: int):
    """Run the prompts once: (last-position logits (B, V), cache, mask, positions)."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad, device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = new_cache(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                logits_to_keep=1, **{cache_arg(model): cache})
    return out.logits[:, -1].float(), cache_of(out), mask, pos[:, -1:]


def pick(logits: torch.Tensor, temperature: float, top_p: float,
         generator: torch.Generator | None) -> torch.Tensor:
    """The next token per row: argmax at temperature 0, else sampled from the softmax at that
    temperature restricted to the smallest set of tokens whose probability reaches top_p."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p     # tokens after the nucleus is full
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def decode(model: nn.Module, prompts: list[list[int]], *, pad: int, stop: set[int],
           max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None, stop_text=None) -> list[tuple[list, str]]:
    """The loop of the module docstring on token ids: (new tokens, finish reason) per row.
    stop_text(row, tokens) -> True ends a row early (stop strings)."""
    B = len(prompts)
    logits, cache, mask, pos = prefill(model, prompts, pad)
    arg = cache_arg(model)
    out = [[] for _ in range(B)]
    reason = [None] * B
    for _ in range(max_new_tokens):
        nxt = pick(logits, temperature, top_p, generator)            # (B,)
        for i, t in enumerate(nxt.tolist()):
            if reason[i] is None:
                if t in stop:
                    reason[i] = "stop"
                else:
                    out[i].append(t)
                    if stop_text is not None and stop_text(i, out[i]):
                        reason[i] = "stop"
        if all(r is not None for r in reason):
            break
        mask = torch.cat([mask, mask.new_ones((B, 1))], dim=1)
        pos = pos + 1
        step = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                     use_cache=True, **{arg: cache})
        logits, cache = step.logits[:, -1].float(), cache_of(step)
    return [(o, r or "length") for o, r in zip(out, reason)]


def generate(model: nn.Module, tokenizer, messages, *, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             stop: Sequence[str] | None = None, adapter_names: list | None = None,
             batch_size: int = 16, system: str | None = DEFAULT_SYSTEM,
             template: ChatTemplate | None = None, details: bool = False):
    """Answer each conversation; see the module docstring.

    messages: a string (one user message), a conversation (a list of {"role", "content"}), or
    a list of either. max_new_tokens: the most tokens per answer. temperature: 0 = greedy
    (deterministic); > 0 samples, seeded by `seed`; top_p: nucleus sampling. stop: strings
    that end an answer (not included). adapter_names: one LoRA adapter name per conversation
    (None in the list: the base model). batch_size: conversations per batch. system / template:
    the system prompt (the same default as training), or a ChatTemplate to use as is.
    details: return Generation objects (text, tokens, prompt length, finish reason) instead of
    strings. Returns one result for one conversation, else a list in the input's order.
    """
    convs, single = _conversations(messages)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature!r}, "
                         f"{top_p!r}")
    if adapter_names is not None and len(adapter_names) != len(convs):
        raise ValueError(f"adapter_names has {len(adapter_names)} names for {len(convs)} "
                         f"conversations: give one name per conversation.")
    template = template or ChatTemplate(tokenizer, system=system)
    prompts = [template.prompt_ids(as_messages(c, f"conversation {i}"))
               for i, c in enumerate(convs)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_ids(model, tokenizer)
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    stop = list(stop or [])

    def stop_text(_, tokens):
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return any(s in text for s in stop)

    results = []
    with eval_mode(model):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            routing = contextlib.nullcontext()
            if adapter_names is not None:
                from peftlab.lora.named import route
                routing = route(model, list(adapter_names[start:start + batch_size]))
            with routing:
                rows = decode(model, chunk, pad=pad, stop=stops, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, generator=generator,
                              stop_text=stop_text if stop else None)
            for p, (tokens, reason) in zip(chunk, rows):
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                for s in stop:
                    text = text.split(s)[0] if s in text else text
                results.append(Generation(text, tokens, len(p), reason))
    out = results if details else [r.text for r in results]
    return out[0] if single else out


def score(model: nn.Module, tokenizer, split, max_examples: int | None = 64,
          max_new_tokens: int | None = None, batch_size: int = 16, adapter_names=None) -> dict:
    """Greedy generation on each conversation of a ChatSplit, prompted with everything before
    its last assistant message and compared with that message: exact match after stripping
    spaces. max_examples: the first N conversations (None: all). max_new_tokens: default the
    longest reference answer + 8 tokens. Returns {"exact_match", "n", "examples": the first
    five (prompt, reference, generated)}."""
    convs = split.conversations[:max_examples] if max_examples else split.conversations
    prompts, refs = [], []
    for i, c in enumerate(convs):
        msgs = as_messages(c, f"{split.name} example {i}")
        if msgs[-1]["role"] != "assistant":
            raise ChatDataError(f"{split.name} example {i}: the last message is not an "
                                f"assistant answer, so there is nothing to score.")
        prompts.append(msgs[:-1])
        refs.append(msgs[-1]["content"])
    template = split.template(tokenizer)
    if max_new_tokens is None:
        max_new_tokens = max(len(template.ids(r)) for r in refs) + 8
    got = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                   batch_size=batch_size, template=template, adapter_names=adapter_names)
    hits = [g.strip() == r.strip() for g, r in zip(got, refs)]
    return {"exact_match": sum(hits) / len(hits), "n": len(hits),
            "examples": [{"prompt": p[-1]["content"], "reference": r, "generated": g}
                         for p, r, g in list(zip(prompts, refs, got))[:5]]}

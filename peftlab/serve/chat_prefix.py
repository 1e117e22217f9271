"""Automatic prefix caching: the keys and values of earlier prompts, reused by the next prompt
that starts with the same tokens through the same adapter.

    cache = PrefixCache(max_tokens=2048)
    n, kv = cache.lookup("support", prompt)     # kv: its first n tokens' keys and values
    cache.store("support", prompt, kv_of_prompt)
    cache.clear()                               # an adapter was loaded, replaced or deleted

Why it is exact. Attention is causal: the keys and values a layer computes at position t
depend only on tokens 0..t. So if an earlier prompt began with the same n tokens, its cache
already holds the first n columns of this prompt's cache, and the prefill only has to run
the remaining tokens, attending to those n columns (chat_batch.Batch.prefill(..., past=)).
Every chat request starts with the same rendered system message ("<|im_start|>system ...
<|im_end|> <|im_start|>user"), so in a server most of that work is shared. vLLM calls this
automatic prefix caching (cached blocks found by a hash of their tokens); SGLang's
RadixAttention (Zheng et al. 2023, "SGLang: Efficient Execution of Structured Language Model
Programs") keeps the cached prompts in a radix tree and takes the longest match, as the
lookup below does with a plain list.

Why the adapter is part of the key. A LoRA adapter changes W_k and W_v (and every layer below
them), so the same tokens have other keys and values through another adapter: an entry made
through adapter "a" is only ever reused by a prompt routed through "a" (None: the base).
Loading a new version of an adapter under the same name makes its entries wrong, so the
engine clears the cache whenever it runs model work (load, replace, delete an adapter).

The numbers of a hit are those of a full prefill up to float rounding (the matrix products
run over other shapes): tests/test_serve_chat_prefix.py checks the logits to 1e-5 and the
greedy tokens. Entries are whole prompts, least recently used first out once more than
max_tokens tokens are held (KV memory: 2 x layers x kv heads x head dim x 4 bytes per token,
46 KiB for SmolLM2-135M).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]        # per layer (keys, values): (1, H_kv, T, D)


def common_prefix(a, b) -> int:
    """How many leading tokens two token lists share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Entry:
    """One cached prompt: its adapter, tokens and every layer's keys and values for them."""

    adapter: str | None
    tokens: tuple[int, ...]
    kv: KV


class PrefixCache:
    """Cached prompts' keys and values, keyed by (adapter, tokens); see the module docstring.
    max_tokens: the most tokens held in all (0: the cache is off); min_tokens: shorter
    matches are not worth a lookup's copies and count as misses."""

    def __init__(self, max_tokens: int = 2048, min_tokens: int = 4):
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"prefix_cache_tokens (peftlab serve --prefix-cache-tokens) must be "
                             f"0 (no prefix cache) or a positive int, got {max_tokens!r}.")
        self.max_tokens, self.min_tokens = max_tokens, min_tokens
        self.entries: collections.OrderedDict[int, Entry] = collections.OrderedDict()
        self.held = 0                                 # tokens in all entries
        self.hits = self.misses = self.reused = 0     # lookups, and tokens not recomputed
        self._next = 0

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, adapter: str | None, prompt: list[int]) -> tuple[int, KV | None]:
        """(n, kv): the longest cached start of `prompt` through `adapter`, at most all but its
        last token (the prefill must compute that one's logits); (0, None) on a miss."""
        if self.max_tokens <= 0:
            return 0, None
        best, key = 0, None
        for k, e in self.entries.items():
            if e.adapter == adapter:
                n = common_prefix(e.tokens, prompt)
                if n > best:
                    best, key = n, k
        n = min(best, len(prompt) - 1)
        if n < self.min_tokens:
            self.misses += 1
            return 0, None
        self.entries.move_to_end(key)                 # recently used: evicted last
        self.hits, self.reused = self.hits + 1, self.reused + n
        return n, [(k[:, :, :n], v[:, :, :n]) for k, v in self.entries[key].kv]

    def store(self, adapter: str | None, prompt: list[int], kv: KV) -> None:
        """Hold `prompt`'s keys and values (kv: its tokens only, no padding), unless a cached
        prompt through the same adapter starts with all of it already."""
        if self.max_tokens <= 0 or len(prompt) > self.max_tokens:
            return
        tokens = tuple(prompt)
        for e in self.entries.values():
            if e.adapter == adapter and common_prefix(e.tokens, tokens) == len(tokens):
                return
        self.entries[self._next] = Entry(adapter, tokens, [(k.clone(), v.clone()) for k, v in kv])
        self._next += 1
        self.held += len(tokens)
        while self.held > self.max_tokens:
            _, old = self.entries.popitem(last=False)
            self.held -= len(old.tokens)

    def clear(self) -> None:
        """Forget every entry (the model changed: an adapter loaded, replaced or deleted)."""
        self.entries.clear()
        self.held = 0

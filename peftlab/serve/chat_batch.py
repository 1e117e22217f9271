"""The running batch of continuous batching: every row's KV cache side by side, rows joining
after their own prefill and leaving when they finish.

    batch = Batch.prefill(model, prompts)    # new rows: generate.prefill, the prompts once
    batch = running.join(batch)              # they join the running rows at a step boundary
    batch = batch.keep([0, 2])               # row 1 leaves: its keys and values are dropped
    batch.step(model, next_tokens)           # one token per row; every cache grows one column

The layout is pl.generate's (peftlab/chat/generate.py), kept alive across requests:

    keys, values  (B, H_kv, T, D) per layer: row i's KV cache is row i of every layer's tensors
    mask          (B, T)  1 where row i has a real token, 0 on its left padding
    pos           (B, 1)  the position of row i's last token (RoPE counts from its own start)
    logits        (B, V)  row i's next-token logits

Rows of different lengths share one tensor by left padding, exactly as a batched pl.generate
pads its prompts, so a row computes what it computes alone (up to float rounding: masked
columns add exact zeros to the softmax, the sums run in another order). Joining pads the
shorter side on the left to the longer T and concatenates along the batch; leaving keeps
the other rows' slices and trims the columns that were padding for every remaining row, so
the freed row's memory goes back at once. vLLM avoids even these copies with PagedAttention
(Kwon et al. 2023: the cache in fixed-size blocks, a block table per row); this is the
contiguous version a learner can print.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from peftlab.chat.generate import cache_arg, cache_of, new_cache, prefill


def kv_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(keys, values)] per layer of a transformers DynamicCache, each (B, H_kv, T, D)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:                               # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache))


def cache_from(model, kv: list[tuple[torch.Tensor, torch.Tensor]]):
    """A new DynamicCache holding these (keys, values) per layer."""
    cache = new_cache(model)
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    return cache


@dataclass
class Batch:
    """Rows generating together: their cache, mask, positions and next-token logits (above)."""

    cache: object
    mask: torch.Tensor
    pos: torch.Tensor
    logits: torch.Tensor

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        """Columns of the cache (the longest row's tokens, plus padding)."""
        return self.mask.shape[1]

    @classmethod
    def prefill(cls, model, prompts: list[list[int]], pad: int) -> Batch:
        """New rows: their prompts run once, left-padded among themselves (generate.prefill)."""
        logits, cache, mask, pos = prefill(model, prompts, pad)
        return cls(cache, mask, pos, logits)

    def join(self, model, other: Batch) -> Batch:
        """These rows, then other's: both padded on the left to the longer length."""
        T = max(self.length, other.length)

        def left(t: torch.Tensor, n: int) -> torch.Tensor:       # pad dim -2 (keys) or -1 (mask)
            return F.pad(t, (0, 0, n, 0)) if t.dim() == 4 else F.pad(t, (n, 0))

        a, b = T - self.length, T - other.length
        kv = [(torch.cat([left(ka, a), left(kb, b)]), torch.cat([left(va, a), left(vb, b)]))
              for (ka, va), (kb, vb) in zip(kv_tensors(self.cache), kv_tensors(other.cache))]
        return Batch(cache_from(model, kv), torch.cat([left(self.mask, a), left(other.mask, b)]),
                     torch.cat([self.pos, other.pos]), torch.cat([self.logits, other.logits]))

    def keep(self, model, rows: list[int]) -> Batch | None:
        """Only these rows (None when none is left); columns that are padding for every
        remaining row are cut off the left."""
        if not rows:
            return None
        idx = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        first = int(mask.any(0).nonzero()[0])              # the first column a row still uses
        kv = [(k.index_select(0, idx)[:, :, first:], v.index_select(0, idx)[:, :, first:])
              for k, v in kv_tensors(self.cache)]
        return Batch(cache_from(model, kv), mask[:, first:], self.pos.index_select(0, idx),
                     self.logits.index_select(0, idx))

    @torch.no_grad()
    def step(self, model, tokens: torch.Tensor) -> None:
        """Feed one token per row (tokens: (B,)): the cache grows one column, logits are the
        next ones. The same call as generate.decode's loop body."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        self.pos = self.pos + 1
        out = model(input_ids=tokens[:, None].to(self.mask.device), attention_mask=self.mask,
                    position_ids=self.pos, use_cache=True, **{cache_arg(model): self.cache})
        self.logits, self.cache = out.logits[:, -1].float(), cache_of(out)

"""The running batch of continuous batching: every row's KV cache side by side, rows joining
after their own prefill and leaving when they finish.

    batch = Batch.prefill(model, prompts)    # new rows: generate.prefill, the prompts once
    batch = Batch.prefill(model, prompts, pad, past=[(n, kv), None])   # row 0: a prefix hit
    batch = running.join(batch)              # they join the running rows at a step boundary
    batch = batch.keep([0, 2])               # row 1 leaves: its keys and values are dropped
    batch.step(model, next_tokens)           # one token per row; every cache grows one column

The layout is pl.generate's (peftlab/chat/generate.py), kept alive across requests:

    keys, values  (B, H_kv, T, D) per layer: row i's KV cache is row i of every layer's tensors
    mask          (B, T)  1 where row i has a real token, 0 on its left padding
    pos           (B, 1)  the position of row i's last token (RoPE counts from its own start)
    logits        (B, V)  row i's next-token logits

A row whose first n tokens' keys and values are known (chat_prefix.py: an earlier prompt
began the same way) prefills only the rest: the known columns stand left of the new ones,
[padding | n cached | padding | the rest], the mask 0 on both paddings, positions counted
over the real tokens, so the rest sees exactly the keys and values a full prefill would.

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

from peftlab.chat.generate import cache_arg, cache_of, left_pad, new_cache, prefill


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
    def prefill(cls, model, prompts: list[list[int]], pad: int, past: list | None = None) -> Batch:
        """New rows: their prompts run once, left-padded among themselves (generate.prefill).
        past: per row None, or (n, kv), the keys and values of its first n tokens
        (PrefixCache.lookup): only the rest of that prompt runs, after them."""
        if not past or not any(past):
            logits, cache, mask, pos = prefill(model, prompts, pad)
            return cls(cache, mask, pos, logits)
        known = [p[0] if p else 0 for p in past]
        C, device = max(known), next(model.parameters()).device
        ids, new_mask = left_pad([p[n:] for p, n in zip(prompts, known)], pad, device)
        old_mask = torch.zeros((len(prompts), C), dtype=torch.long, device=device)
        for i, n in enumerate(known):
            old_mask[i, C - n:] = 1
        shape = next(p[1] for p in past if p)           # any hit's layers: (1, H_kv, n, D)
        kv = []
        for layer, (k0, v0) in enumerate(shape):
            cols = []
            for p in past:
                if p:
                    k, v = p[1][layer]
                    cols.append((F.pad(k, (0, 0, C - p[0], 0)), F.pad(v, (0, 0, C - p[0], 0))))
                else:
                    z = k0.new_zeros((1, k0.shape[1], C, k0.shape[3]))
                    cols.append((z, z))
            kv.append((torch.cat([k for k, _ in cols]), torch.cat([v for _, v in cols])))
        mask = torch.cat([old_mask, new_mask], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, C:]
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                    logits_to_keep=1, **{cache_arg(model): cache_from(model, kv)})
        return cls(cache_of(out), mask, pos[:, -1:], out.logits[:, -1].float())

    def row_kv(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row i's keys and values on its real tokens only, (1, H_kv, tokens, D) per layer."""
        cols = self.mask[i].nonzero().squeeze(-1)
        return [(k[i:i + 1].index_select(2, cols), v[i:i + 1].index_select(2, cols))
                for k, v in kv_tensors(self.cache)]

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

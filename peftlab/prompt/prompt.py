"""The math of prompt tuning (Lester et al., 2021): P trainable input embeddings joined to
every input sequence.

The input-level sibling of prefix tuning: instead of keys and values in every layer, only the
input sequence grows. With token embeddings X (B, T, E) and the trainable prompt Z (P, E):

    encoder (BERT):     [x_cls ; Z ; x_1 .. x_T-1]   start = 1: after [CLS], so the pooler,
                                                     which reads position 0, still reads [CLS]
    decoder (GPT-2):    [Z ; x_0 .. x_T-1]           start = 0: first, as in the paper

and the attention mask gets P ones at the same place (padding stays masked). Real tokens move P
positions to the right (as in HF PEFT). The prompt's hidden states pass through every layer
like any token's, but only its input embeddings are free parameters. Trainable: P * E numbers
(+ the classifier head).

`insert_prompt` is the whole method in one function; peftlab/prompt/hooks.py calls these
functions from inside a transformers model.
"""

from __future__ import annotations

import torch
from torch import nn


def insert(t: torch.Tensor, start: int, block: torch.Tensor) -> torch.Tensor:
    """t (B, T, ...) with `block` (B, P, ...) inserted at index `start` along dim 1."""
    return torch.cat([t[:, :start], block, t[:, start:]], dim=1)


def remove(t: torch.Tensor, start: int, P: int) -> torch.Tensor:
    """t (B, T + P, ...) without the P positions from `start`: the inverse of insert."""
    return torch.cat([t[:, :start], t[:, start + P:]], dim=1)


def prompt_mask(mask: torch.Tensor, P: int, start: int) -> torch.Tensor:
    """The attention mask (B, T) with P ones (the prompt is always visible) at `start`."""
    ones = torch.ones(mask.shape[0], P, dtype=mask.dtype, device=mask.device)
    return insert(mask, start, ones)


def insert_prompt(embeddings: torch.Tensor, prompt: torch.Tensor, mask: torch.Tensor | None = None,
                  start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[x_<start ; Z ; x_>=start] and its mask.

    embeddings: (B, T, E); prompt: (P, E); mask: (B, T) (1 = real token) or None.
    Returns ((B, P + T, E), (B, P + T) or None).
    """
    B, P = embeddings.shape[0], prompt.shape[0]
    x = insert(embeddings, start, prompt.to(embeddings.dtype).expand(B, -1, -1))
    return x, (prompt_mask(mask, P, start) if mask is not None else None)


class PromptEmbedding(nn.Module):
    """The trainable prompt `weight` (P, E) and where it goes (`start`: 0 or 1)."""

    def __init__(self, weight: torch.Tensor, start: int, placeholder: int, causal: bool = False):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.start = start               # insertion index in the sequence
        self.placeholder = placeholder   # token id that holds the prompt's place in input_ids
        self.causal = causal             # a decoder: the prompt's own queries attend causally
        self.call = None                 # the forward pass in progress (hooks.PromptCall), or None

    @property
    def num_virtual_tokens(self) -> int:
        return self.weight.shape[0]

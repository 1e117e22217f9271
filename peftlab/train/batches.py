"""Batches for the training loop: turning datasets into re-iterable loaders, and evaluation.

What a batch is (a dict with "labels", or a tuple (inputs, labels)) and the default loss are
defined once in peftlab/core/batches.py; they are re-exported here as pl.train.* too.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.batches import forward, to_device
from peftlab.core.state import eval_mode


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable, device=None) -> dict:
    """Mean loss and accuracy over `data` (model put in eval mode, restored after)."""
    device = device or next(model.parameters()).device
    total, correct, loss_sum = 0, 0, 0.0
    with eval_mode(model):
        for batch in data:
            logits, labels = forward(model, to_device(batch, device))
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            total += labels.numel()
    if total == 0:
        raise ValueError("evaluate() got no batches.")
    return {"loss": loss_sum / total, "accuracy": correct / total, "n": total}


def as_loader(data, tokenizer, batch_size, shuffle, seed, max_length, what):
    """A re-iterable of batches with a len(): DataLoaders pass through; TextSplits and
    map-style Datasets become seeded DataLoaders; generators are materialised."""
    if data is None:
        return None
    if hasattr(data, "loader") and hasattr(data, "texts"):
        if tokenizer is None:
            raise ValueError(f"fit() got a TextSplit for {what} but no tokenizer=: pass the "
                             f"tokenizer from pl.models.text_classifier, or a DataLoader.")
        return data.loader(tokenizer, batch_size=batch_size, shuffle=shuffle, seed=seed,
                           max_length=max_length)
    if isinstance(data, torch.utils.data.Dataset) and not hasattr(data, "__iter__"):
        g = torch.Generator()
        g.manual_seed(seed)
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                                           generator=g)
    try:
        len(data)
    except TypeError:
        data = list(data)  # a generator: materialise so it can be re-iterated per epoch
    if len(data) == 0:
        raise ValueError(f"fit() got an empty {what} set.")
    return data

"""Batches for the training loop: turning datasets into re-iterable loaders, and evaluation.

What a batch is (a dict with "labels", or a tuple (inputs, labels)) and the default loss are
defined once in peftlab/core/batches.py; they are re-exported here as pl.train.* too.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from peftlab.core.batches import forward, to_device, token_cross_entropy
from peftlab.core.state import eval_mode


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable, device=None) -> dict:
    """Mean loss and accuracy over `data` (model put in eval mode, restored after): per
    example for classifiers; per supervised token for causal LMs (accuracy: the share of
    answer tokens predicted right, n: how many)."""
    device = device or next(model.parameters()).device
    total, correct, loss_sum = 0, 0, 0.0
    with eval_mode(model):
        for batch in data:
            logits, labels = forward(model, to_device(batch, device))
            loss_sum += token_cross_entropy(logits, labels, reduction="sum").item()
            seen = labels != -100
            correct += ((logits.argmax(-1) == labels) & seen).sum().item()
            total += seen.sum().item()
    if total == 0:
        raise ValueError("evaluate() got no batches.")
    return {"loss": loss_sum / total, "accuracy": correct / total, "n": total}


def check_labels(model: nn.Module, train, eval=None) -> None:
    """Before training on pl.data TextSplits: the model's head must have as many outputs as
    the data has classes (pl.data.LabelError otherwise, instead of an IndexError mid-run), and
    named labels are written into model.config.id2label so predictions and saved adapters
    carry them. Other data (DataLoaders, batches) is not inspected."""
    from peftlab.data.labels import LabelError, check_num_labels, label_names_of, set_label_names

    for data in (train, eval):
        if hasattr(data, "texts") and hasattr(data, "labels"):
            check_num_labels(model, data)
    names = list(getattr(train, "label_names", None) or [])
    if not names or getattr(getattr(model, "config", None), "id2label", None) is None:
        return
    have = label_names_of(model)
    if have and have != names:
        raise LabelError(f"The model's labels are {have} (model.config.id2label) but the "
                         f"data's are {names}; train a model built for this data, or map the "
                         f"data's labels with label_names={have}.")
    if not have:
        set_label_names(model, names)


def as_loader(data, tokenizer, batch_size, shuffle, seed, max_length, what):
    """A re-iterable of batches with a len(): DataLoaders pass through; TextSplits, ChatSplits
    and map-style Datasets become seeded DataLoaders; generators are materialised.
    max_length None: the split's default (32 tokens for a TextSplit; the longest example for
    a ChatSplit)."""
    if data is None:
        return None
    if hasattr(data, "loader") and hasattr(data, "texts"):
        if tokenizer is None:
            kind = type(data).__name__
            raise ValueError(f"fit() got a {kind} for {what} but no tokenizer=: pass the "
                             f"tokenizer that came with the model (pl.models.text_classifier "
                             f"or pl.models.chat_model), or a DataLoader.")
        if max_length is None:
            return data.loader(tokenizer, batch_size=batch_size, shuffle=shuffle, seed=seed)
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

"""What a batch is, for every part of peftlab (training, scoring, measuring, sharding).

A batch is either a dict of tensors with a "labels" entry (text: the model takes the other
entries as keyword arguments and returns logits, or an object with .logits), or a tuple
(inputs, labels) (vision: the model takes the inputs tensor).

Labels are one class id per example (B,) for classifiers, or token-level (B, K) for causal
LMs (peftlab/chat/data.py): next-token targets already shifted, aligned with the *last* K
positions of the logits (B, L >= K, V), -100 where nothing is learned. A causal-LM batch may
ask the model for those K positions only ("logits_to_keep": K); a model that returns all L
is cut to the last K here, so both give the same loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def to_device(batch, device):
    """The batch (a dict, a tuple/list or a tensor, nested) with its tensors moved to device."""
    if isinstance(batch, dict):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch.to(device) if torch.is_tensor(batch) else batch


def split_batch(batch):
    """(model inputs, labels) from a dict batch {..., "labels"} or a tuple (x, y)."""
    if isinstance(batch, dict):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, batch.get("labels")
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"A batch must be a dict with 'labels' or a tuple (inputs, labels); got "
                    f"{type(batch).__name__}.")


def logits_of(model: nn.Module, inputs) -> torch.Tensor:
    """The model's logits for `inputs` (a dict of keyword tensors, or one tensor): the output
    itself when it is a tensor, else its .logits (transformers models)."""
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out if torch.is_tensor(out) else out.logits


def forward(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) for a batch already on the model's device. Token-level labels (B, K):
    the logits' last K positions, (B, K, V)."""
    inputs, labels = split_batch(batch)
    logits = logits_of(model, inputs)
    if labels is not None and labels.dim() == 2 and logits.dim() == 3:
        logits = logits[:, logits.shape[1] - labels.shape[1]:]
    return logits, labels


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over every position whose label is not -100 (logits (..., V) in float32):
    per example for classifiers, per supervised token for causal LMs."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=-100, reduction=reduction)


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    """Cross-entropy of the model on a batch (moved to the model's device). The default loss of
    fit(), and a ready `loss_fn` for pl.selection.apply."""
    device = next(model.parameters()).device
    logits, labels = forward(model, to_device(batch, device))
    return token_cross_entropy(logits, labels)

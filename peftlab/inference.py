"""pl.predict: labels and probabilities for new texts (or images), in one call.

    preds = pl.predict(model, tokenizer, ["the soup was cold", "what a goal"])
    preds.labels           # ['food', 'sport']   (names when the model knows them, else ids)
    preds.probabilities    # (2, num_labels) tensor, rows sum to 1
    for row in preds: ...  # {"label": "food", "id": 0, "probabilities": {"food": 0.93, ...}}

    preds = pl.predict(vision_model, images)      # a (N, C, H, W) tensor of images

What it does for you: tokenizes in batches (padding per batch), puts the model in eval mode
(dropout off; restored afterwards), runs without gradients on the model's device, and turns
logits into softmax probabilities. It works on a plain model, on a model carrying an adapter
(LoRA, prefix, prompt, selection, AdaLoRA, full) and on a merged one: it only calls forward.
Label names come from `label_names=`, else from model.config.id2label (set by
pl.data.set_label_names, by fit() on named data, and by pl.load_adapter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.core.batches import logits_of
from peftlab.core.state import eval_mode
from peftlab.data.labels import label_names_of
from peftlab.data.lengths import model_limit
from peftlab.lora.named import route


@dataclass
class Predictions:
    """What pl.predict returns, one entry per input.

    labels: the predicted label of each input (its name when names are known, else its id).
    ids: the predicted class ids. probabilities: a (N, num_labels) float tensor on the CPU
    (softmax of the logits; each row sums to 1). label_names: the class names used, or [].
    Iterating (or indexing) gives one dict per input: {"label", "id", "probabilities":
    {name or id: probability}}.
    """

    labels: list
    ids: list[int]
    probabilities: torch.Tensor
    label_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        keys = self.label_names or list(range(self.probabilities.shape[1]))
        return {"label": self.labels[i], "id": self.ids[i],
                "probabilities": {k: float(p) for k, p in zip(keys, self.probabilities[i])}}

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        shown = ", ".join(f"{lab!r} ({self.probabilities[i, self.ids[i]]:.2f})"
                          for i, lab in enumerate(self.labels[:5]))
        more = f", ... ({len(self)} in all)" if len(self) > 5 else ""
        return f"Predictions([{shown}{more}])"


def _text_limit(model: nn.Module, tokenizer) -> int:
    """Longest input: the tokenizer's limit (at most 512) and the model's position table."""
    limit = model_limit(tokenizer)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limit = min(limit, positions)
    return limit


def _batches(model, tokenizer, inputs, batch_size, max_length):
    """Model inputs, batch by batch: tokenized texts (dicts) or slices of an image tensor."""
    if torch.is_tensor(inputs):
        for i in range(0, inputs.shape[0], batch_size):
            yield inputs[i:i + batch_size]
        return
    if tokenizer is None:
        raise ValueError("pl.predict got texts but no tokenizer: call "
                         "pl.predict(model, tokenizer, texts).")
    max_length = max_length or _text_limit(model, tokenizer)
    for i in range(0, len(inputs), batch_size):
        enc = dict(tokenizer(list(inputs[i:i + batch_size]), padding=True, truncation=True,
                             max_length=max_length, return_tensors="pt"))
        enc.pop("token_type_ids", None)      # as in training: all zeros for single sentences
        yield enc


def _as_inputs(inputs):
    if isinstance(inputs, str):
        return [inputs]
    if torch.is_tensor(inputs):
        if inputs.dim() == 3:                # one image (C, H, W)
            inputs = inputs.unsqueeze(0)
        if inputs.dim() != 4:
            raise ValueError(f"pl.predict takes images as a (N, C, H, W) tensor, got shape "
                             f"{tuple(inputs.shape)}.")
        return inputs
    if isinstance(inputs, Sequence) and inputs and all(torch.is_tensor(x) for x in inputs):
        return torch.stack(list(inputs))
    if isinstance(inputs, Sequence) and all(isinstance(x, str) for x in inputs):
        return list(inputs)
    raise TypeError(f"pl.predict takes a list of texts, one text, or a tensor of images; got "
                    f"{type(inputs).__name__}.")


def predict(model: nn.Module, tokenizer=None, inputs=None, *, batch_size: int = 32,
            max_length: int | None = None, label_names: list[str] | None = None,
            device=None, adapter_names: list | None = None) -> Predictions:
    """Predict the label of each input; see the module docstring.

    model: any classifier (plain, with an adapter, or merged). tokenizer: the model's
    tokenizer for texts; for images leave it out: pl.predict(model, images). inputs: a list of
    texts, one text, or a (N, C, H, W) image tensor. batch_size: inputs per forward pass.
    max_length: tokens kept per text (default: the longest the model takes, at most 512).
    label_names: names for the class ids (default: model.config.id2label when it holds real
    names). device: where to run (default: where the model's parameters are; the model is
    not moved). adapter_names: one LoRA adapter name per input (see pl.load_adapter(...,
    name=)): each row goes through its own adapter, mixed in one forward pass per batch.
    """
    if inputs is None and (torch.is_tensor(tokenizer) or isinstance(tokenizer, (str, list))):
        tokenizer, inputs = None, tokenizer     # pl.predict(model, images) / (model, texts)
    if inputs is None:
        raise ValueError("pl.predict needs inputs: pl.predict(model, tokenizer, texts) or "
                         "pl.predict(model, images).")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    inputs = _as_inputs(inputs)
    if len(inputs) == 0:
        raise ValueError("pl.predict got no inputs.")
    if adapter_names is not None and len(adapter_names) != len(inputs):
        raise ValueError(f"adapter_names has {len(adapter_names)} names for {len(inputs)} "
                         f"inputs: give one adapter name per input.")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    chunks = []
    with torch.no_grad(), eval_mode(model):
        for i, batch in enumerate(_batches(model, tokenizer, inputs, batch_size, max_length)):
            batch = {k: v.to(dev) for k, v in batch.items()} if isinstance(batch, dict) \
                else batch.to(dev)
            routing = contextlib.nullcontext() if adapter_names is None else \
                route(model, adapter_names[i * batch_size:(i + 1) * batch_size])
            with routing:
                chunks.append(torch.softmax(logits_of(model, batch).float(), dim=-1).cpu())
    probs = torch.cat(chunks)
    names = list(label_names) if label_names is not None else label_names_of(model)
    if names and len(names) != probs.shape[1]:
        raise ValueError(f"{len(names)} label names ({', '.join(map(str, names))}) for a model "
                         f"with {probs.shape[1]} outputs.")
    ids = probs.argmax(-1).tolist()
    labels = [names[i] for i in ids] if names else list(ids)
    return Predictions(labels=labels, ids=ids, probabilities=probs,
                       label_names=[str(n) for n in names])

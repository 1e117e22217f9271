"""pl.export_merged: the adapted model as a plain transformers folder, loadable without peftlab.

    pl.export_merged(model, "deploy/support", tokenizer=tokenizer)
    # anywhere, no peftlab needed:
    AutoModelForSequenceClassification.from_pretrained("deploy/support")

The update is merged into a copy of the model (W <- W + scale * B @ A for LoRA, the active
named adapter and its head when there are several; AdaLoRA and selection deltas likewise;
full fine-tuning and head-only are plain models already), the copy is unloaded to the
model's own transformers classes and written with save_pretrained (config.json,
model.safetensors), the tokenizer beside it, class names in config.id2label / label2id.
The caller's model is not touched. The folder is written to a temporary sibling and moved
into place at the end, so a crash never leaves a half-written export behind.

A method that cannot be merged into weights (prefix and prompt tuning: their virtual tokens
are extra inputs, not a weight update; see each method's spec.py) is refused with its reason.
"""

from __future__ import annotations

import copy
import os
import shutil
import uuid
from pathlib import Path

from torch import nn

from peftlab.core import registry
from peftlab.core.state import get_method
from peftlab.data.labels import label_names_of, set_label_names


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain copy of `model` with its adapter merged into the weights (the method's
    unload(merge=True)); a method whose spec says it cannot merge is refused first."""
    method = get_method(model)
    if method is not None and not registry.spec(method).mergeable:
        raise ValueError(registry.cannot_merge(method))
    clone = copy.deepcopy(model)
    if method is not None:
        registry.method_module(method).unload(clone, merge=True)
    return clone


def export_merged(model: nn.Module, path: str | Path, tokenizer=None,
                  label_names: list[str] | None = None) -> Path:
    """Write `model` with its adapter merged in as a transformers folder at `path`.

    model: a transformers model (it needs save_pretrained), plain or carrying a LoRA,
    AdaLoRA, selection or full adapter. tokenizer: saved beside it when given. label_names:
    the class names for config.id2label (default: the model's own, when it has real names).
    Returns the folder. An existing folder at `path` is replaced only once the new one is
    complete."""
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"export_merged writes a transformers folder, and {type(model).__name__} "
                        f"is not a transformers model (no save_pretrained); save its "
                        f"state_dict with safetensors instead.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is a file; export_merged writes a folder.")
    names = list(label_names) if label_names is not None else label_names_of(model)
    clone = merged_copy(model)
    if names:
        set_label_names(clone, names)       # checks len(names) against the head first
    clone.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        clone.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path

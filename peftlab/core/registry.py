"""The method registry and the two per-step hooks every training loop calls.

A method is a package (peftlab/lora/, ...) whose __init__ exposes:

    apply(model, config, **kw) -> model          required
    adapter_state_dict(model) -> {name: tensor}  optional; default: the trainable parameters
    load_adapter_state(model, tensors)           optional; default: shape-checked copy
    prepare_load(model, config, tensors)         optional; default: apply(model, config)
    after_step(model, step)                      optional; default: nothing
    check_total_steps(model, steps)              optional; raise if a run of `steps` steps
                                                 cannot work (AdaLoRA's schedule)
    regularization(model) -> scalar tensor       optional; default: 0
    to_hf_peft(model) / from_hf_peft(cfg, tensors)   optional (Hugging Face PEFT format)

and one or more config dataclasses with a class attribute `method = "<name>"`.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from peftlab.core.state import get_method

METHODS = {
    "full": "peftlab.full",
    "lora": "peftlab.lora",
    "prefix": "peftlab.prefix",
    "prompt": "peftlab.prompt",
    "selection": "peftlab.selection",
    "adalora": "peftlab.adalora",
}


def method_module(name: str):
    """The package of method `name`, imported on first use (a plugin lookup by name: the
    layers below the methods never import a method package statically)."""
    if name not in METHODS:
        raise ValueError(f"Unknown peftlab method {name!r}; known: {', '.join(METHODS)}.")
    return importlib.import_module(METHODS[name])


def after_step(model: nn.Module, step: int) -> None:
    """Call once per step after optimizer.step(), before zero_grad(); a no-op where unused.

    AdaLoRA uses it to score importance from the step's gradients and re-allocate ranks; the
    other methods need nothing per step (selection's SparseDelta keeps unselected entries at
    their base values by construction).
    """
    name = get_method(model)
    if name is None:
        return
    hook = getattr(method_module(name), "after_step", None)
    if hook is not None:
        hook(model, step)


def check_total_steps(model: nn.Module, steps: int) -> None:
    """Raise ValueError before training if the model's method cannot work with a run of
    `steps` optimizer steps (AdaLoRA: its schedule must reach the final budget)."""
    name = get_method(model)
    hook = getattr(method_module(name), "check_total_steps", None) if name else None
    if hook is not None:
        hook(model, steps)


def regularization(model: nn.Module) -> torch.Tensor:
    """Extra loss term of the model's method (AdaLoRA's orthogonality penalty); 0 elsewhere."""
    name = get_method(model)
    hook = getattr(method_module(name), "regularization", None) if name else None
    if hook is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else "cpu")
    return hook(model)

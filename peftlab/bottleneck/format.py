"""Saving and loading bottleneck adapters, and why there is no Hugging Face PEFT format.

Tensor names are the model's own: `<wrapped module>.bottleneck.down.weight` / `.down.bias` /
`.up.weight` / `.up.bias` of every adapter (e.g. bert.encoder.layer.0.output.dense.bottleneck.
up.weight), plus the parameters of modules_to_save. Loading checks every name and shape
before it copies anything.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.bottleneck.surgery import bottleneck_layers
from peftlab.core.errors import AdapterError
from peftlab.core.state import get_config
from peftlab.io.files import check_state


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter's down / up weights and biases plus modules_to_save, by model name."""
    state = {}
    for name, wrapper in bottleneck_layers(model).items():
        for k, v in wrapper.bottleneck.state_dict(keep_vars=True).items():
            state[f"{name}.bottleneck.{k}"] = v.detach()
    for head in get_config(model).modules_to_save or []:
        for k, v in model.get_submodule(head).state_dict(keep_vars=True).items():
            state[f"{head}.{k}"] = v.detach()
    return state


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved tensors in, after checking every name and shape (nothing changes on error)."""
    expected = adapter_state_dict(model)
    check_state(expected, tensors)
    with torch.no_grad():
        for k, v in tensors.items():
            expected[k].copy_(v.to(expected[k].dtype))


def _no_hf(*_):
    """to_hf_peft / from_hf_peft: always an AdapterError saying why and what to use."""
    raise AdapterError("Hugging Face PEFT has no bottleneck adapters, so there is no HF PEFT "
                       "format to write or read. Save with format='peftlab' (the `adapters` "
                       "package, AdapterHub, is the Hugging Face-side library that has them).")


to_hf_peft = from_hf_peft = _no_hf   # refused on purpose, with the reason

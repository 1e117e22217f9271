"""Saving, loading and the Hugging Face PEFT format of an IA3 adapter.

Tensor names are the model's own (`...attention.self.key.ia3_l`) plus the parameters of
modules_to_save; peft's IA3 uses the same names with the prefix "base_model.model."."""

from __future__ import annotations

import torch
from torch import nn

from peftlab.core.errors import AdapterError
from peftlab.core.layers import is_conv1d
from peftlab.core.state import get_config
from peftlab.ia3.surgery import IA3Config, ia3_layers
from peftlab.io import hf_peft
from peftlab.io.files import check_state


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every ia3_l vector plus the parameters of modules_to_save, by their names in the model."""
    state = {f"{n}.ia3_l": m.ia3_l.detach() for n, m in ia3_layers(model).items()}
    for head in get_config(model).modules_to_save or []:
        for k, v in model.get_submodule(head).state_dict(keep_vars=True).items():
            state[f"{head}.{k}"] = v.detach()
    return state


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved vectors in after checking every name and shape (nothing changes on error)."""
    merged = [n for n, m in ia3_layers(model).items() if m.merged]
    if merged:
        raise AdapterError(f"{merged[0]} is merged; loading new vectors now would make unmerge "
                           f"divide by the wrong ones. Call pl.ia3.unmerge(model) first.")
    expected = adapter_state_dict(model)
    check_state(expected, tensors)
    with torch.no_grad():
        for k, v in tensors.items():
            expected[k].copy_(v.to(expected[k].dtype))


def to_hf_peft(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json dict, tensors) as peft's IA3 saves them."""
    cfg: IA3Config = get_config(model)
    layers = ia3_layers(model)
    hf_cfg = hf_peft.base_config(model, "IA3")
    hf_cfg.update({
        "target_modules": sorted(layers),                        # full names: exact match
        "feedforward_modules": sorted(n for n, m in layers.items() if m.feedforward),
        "fan_in_fan_out": any(is_conv1d(m.base_layer) for m in layers.values()),
        "modules_to_save": list(cfg.modules_to_save) or None, "init_ia3_weights": True,
        "exclude_modules": None})
    return hf_cfg, hf_peft.add_prefix(adapter_state_dict(model))


def from_hf_peft(hf_cfg: dict, tensors: dict[str, torch.Tensor]):
    """("ia3", IA3Config, tensors by our names) from a Hugging Face PEFT IA3 adapter: targets
    and modules_to_save read off the tensor names, feed-forward layers off the vectors' shapes
    ((1, d_in): it scales the input)."""
    tensors = hf_peft.strip_prefix(tensors)
    vectors = {k[:-len(".ia3_l")]: t for k, t in tensors.items() if k.endswith(".ia3_l")}
    if not vectors:
        raise AdapterError("The Hugging Face IA3 adapter holds no ia3_l tensors.")
    bad = [n for n, t in vectors.items() if t.dim() != 2 or 1 not in t.shape]
    if bad:
        raise AdapterError(f"{bad[0]}.ia3_l has shape {tuple(vectors[bad[0]].shape)}; peftlab's "
                           f"IA3 reads linear-layer vectors ((d_out, 1) or (1, d_in)) only.")
    heads = sorted({k.rsplit(".", 1)[0] for k in tensors if not k.endswith(".ia3_l")})
    targets = sorted(vectors)
    ff = [n for n in targets if vectors[n].shape[0] == 1 and vectors[n].shape[1] != 1]
    declared = hf_cfg.get("feedforward_modules")
    if isinstance(declared, list):                   # exact names, as we write them
        ff = sorted(set(ff) | {n for n in targets if n in declared})
    config = IA3Config(targets=targets, feedforward_modules=ff, modules_to_save=heads)
    return "ia3", config, tensors

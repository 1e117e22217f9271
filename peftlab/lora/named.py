"""Several named LoRA adapters on one base model, and mixed-adapter batches.

    pl.load_adapter(model, "support_v1", name="support")   # a second adapter beside "default"
    pl.adapter_names(model)            # ['default', 'support']
    pl.set_adapter(model, "support")   # forward now adds the support adapter's update
    with pl.disable_adapters(model):   # the base model's LoRA layers alone
        ...
    with route(model, ["default", "support", None]):   # row i through adapter names[i]
        model(**batch)
    pl.delete_adapter(model, "support")

Where things live (see peftlab/lora/lora.py): the first adapter's A and B sit on each LoRA
layer itself, the others in the layer's ModuleDict `others`. A classification head trained
with an adapter (modules_to_save) differs per adapter: the first adapter's head is the
model's own; the others' heads are copies in a HeadBank (`model.peftlab_heads`), and a
forward hook on each head swaps their outputs in for the rows (or the active adapter) that
use them. Rows are computed per adapter, so a mixed batch gives each row exactly what it
gets alone.

Decisions: adapters added by name are frozen (for serving: train the first adapter, save,
load by name); they must target a subset of the first adapter's layers and carry the same
heads and class names; with adapters disabled the LoRA updates are off but the first
adapter's head stays (a base model with an untrained head predicts nothing useful).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
from torch import nn

from peftlab.core.errors import AdapterError
from peftlab.core.state import get_config, get_method
from peftlab.io.files import check_state
from peftlab.lora.heads import (
    bank_of,
    check_labels,
    clone_head,
    install_bank,
    key_of,
)
from peftlab.lora.lora import LoraLayer
from peftlab.lora.surgery import lora_layers
from peftlab.lora.surgery import unload as _unload


def _layers(model: nn.Module, what: str) -> dict[str, LoraLayer]:
    method = get_method(model)
    if method != "lora":
        have = f"carries {method!r}" if method else "carries no adapter"
        raise AdapterError(f"Cannot {what}: named adapters are implemented for LoRA (and "
                           f"AdaLoRA after pl.adalora.to_lora); this model {have}.")
    return lora_layers(model)


def adapter_names(model: nn.Module) -> list[str]:
    """The adapters on the model, first one first ([] for a plain model; ["default"] for a
    model carrying a method without named adapters)."""
    method = get_method(model)
    if method is None:
        return []
    layers = lora_layers(model) if method == "lora" else {}
    if not layers:
        return ["default"]
    return next(iter(layers.values())).adapter_names()


def active_adapter(model: nn.Module) -> str | None:
    """The adapter forward adds (None inside disable_adapters)."""
    layers = _layers(model, "read the active adapter")
    return next(iter(layers.values())).active if layers else "default"


def _check_name(model: nn.Module, name, allow_none: bool = False) -> None:
    names = adapter_names(model)
    if name is None and allow_none:
        return
    if name not in names:
        raise KeyError(f"No adapter named {name!r}: the model has {names}. Load it with "
                       f"pl.load_adapter(model, path, name={name!r}).")


def set_adapter(model: nn.Module, name: str) -> nn.Module:
    """Make `name` the adapter every forward pass adds."""
    layers = _layers(model, "set the adapter")
    _check_name(model, name)
    merged = [n for n, m in layers.items() if m.merged]
    if merged:
        raise AdapterError(f"{merged[0]} is merged (its weight holds one adapter): call "
                           f"pl.lora.unmerge(model) before switching adapters.")
    for layer in layers.values():
        layer.active = name
    if bank_of(model) is not None:
        bank_of(model).active = name
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Inside the block, the LoRA layers compute the base layers alone; the adapter that was
    active comes back afterwards."""
    layers = _layers(model, "disable adapters")
    if any(m.merged for m in layers.values()):
        raise AdapterError("The LoRA adapter is merged into the base weights, so it cannot be "
                           "switched off: call pl.lora.unmerge(model) first.")
    before = {n: m.active for n, m in layers.items()}
    bank = bank_of(model)
    was = bank.active if bank is not None else None
    for m in layers.values():
        m.active = None
    if bank is not None:
        bank.active = None
    try:
        yield model
    finally:
        for n, m in layers.items():
            m.active = before[n]
        if bank is not None:
            bank.active = was


@contextlib.contextmanager
def route(model: nn.Module, names: list):
    """Inside the block, row i of every batch goes through adapter names[i] (None: the base
    layers alone), all in one forward pass. The batch must have len(names) rows."""
    layers = _layers(model, "route a mixed batch")
    names = list(names)
    for n in dict.fromkeys(names):
        _check_name(model, n, allow_none=True)
    if any(m.merged for m in layers.values()):
        raise AdapterError("A merged model holds one adapter in its weights: call "
                           "pl.lora.unmerge(model) before mixed-adapter batches.")
    bank = bank_of(model)
    for m in layers.values():
        m.rows = names
    if bank is not None:
        bank.rows = names
    try:
        yield model
    finally:
        for m in layers.values():
            m.rows = None
        if bank is not None:
            bank.rows = None


def delete_adapter(model: nn.Module, name: str) -> nn.Module:
    """Remove adapter `name`. The first adapter can go only when it is the last one (the
    model is then the plain base model again: pl.lora.unload(model, merge=False))."""
    layers = _layers(model, "delete an adapter")
    _check_name(model, name)
    names = adapter_names(model)
    if name == names[0]:
        if len(names) > 1:
            raise AdapterError(f"{name!r} is the first adapter, held in the LoRA layers "
                               f"themselves; delete the others ({names[1:]}) first, or load "
                               f"the new version under the same name to replace it.")
        return _unload(model, merge=False)
    if any(m.merged for m in layers.values()):
        raise AdapterError("Unmerge first (pl.lora.unmerge(model)): the merged weights may "
                           "hold this adapter.")
    for m in layers.values():
        if name in m.adapter_names():
            m.remove_adapter(name)
        if m.active == name:
            m.active = names[0]
    bank = bank_of(model)
    if bank is not None and name in bank.banks:
        del bank.banks[name]
        if bank.active == name:
            bank.active = names[0]
    return model


def named_adapter(model: nn.Module, name: str) -> tuple:
    """(LoraConfig, target names, tensors) of adapter `name`, with the tensor names a first adapter has
    (`<layer>.lora_A.weight`, the heads' own names), so the saved folder loads onto a plain
    base like any adapter, or by name beside others. The config is the first adapter's with
    this adapter's targets, ranks, alphas, dropout and rslora."""
    layers = _layers(model, "save a named adapter")
    _check_name(model, name)
    first = get_config(model)
    if any(m.merged for m in layers.values()):
        raise AdapterError("Unmerge first (pl.lora.unmerge(model)): a merged weight holds "
                           "the active adapter, not necessarily this one.")
    tensors, ranks, alphas, dropout, rslora = {}, {}, {}, 0.0, first.rslora
    for t, layer in layers.items():
        if name not in layer.adapter_names():
            continue
        p = layer.parts(name)
        for k, v in p.state_dict().items():
            tensors[f"{t}.{k}"] = v.detach()
        ranks[t], alphas[t] = int(p.r), p.alpha
        rslora = first.rslora if p.r == 1 else not math.isclose(p.scale, p.alpha / p.r)
        if isinstance(getattr(p, "lora_dropout", None), nn.Dropout):
            dropout = p.lora_dropout.p
    bank = bank_of(model)
    for head in first.modules_to_save or []:
        module = bank.banks[name][key_of(head)] if bank is not None and name in bank.banks \
            else model.get_submodule(head)
        for k, v in module.state_dict().items():
            tensors[f"{head}.{k}"] = v.detach()
    targets = sorted(ranks)
    r, alpha = ranks[targets[0]], alphas[targets[0]]
    config = dataclasses.replace(
        first, r=r, alpha=alpha, dropout=dropout, rslora=rslora, targets=targets,
        modules_to_save=list(first.modules_to_save or []),
        rank_pattern={t: v for t, v in ranks.items() if v != r},
        alpha_pattern={t: v for t, v in alphas.items() if v != alpha})
    return config, targets, tensors


def rename_first(model: nn.Module, name: str) -> None:
    """Call the first adapter `name` (pl.load_adapter(plain_model, path, name=...))."""
    for m in _layers(model, "name an adapter").values():
        if m.active == m.primary:
            m.active = name
        m.primary = name


def load_named(model: nn.Module, name: str, config, tensors: dict, label_names=None,
               where: str = "the adapter") -> nn.Module:
    """Add (or replace) adapter `name` from a LoRA config and its tensors (as read_adapter
    gives them). Everything is checked before the model changes."""
    layers = _layers(model, "load a named adapter")
    if not isinstance(name, str) or not name or "." in name:
        raise AdapterError(f"An adapter name must be a non-empty string without dots, got "
                           f"{name!r}.")
    if name == adapter_names(model)[0]:
        raise AdapterError(f"{name!r} is the first adapter: load it without a new name.")
    if any(m.merged for m in layers.values()):
        raise AdapterError("Unmerge first (pl.lora.unmerge(model)) before loading adapters.")
    lora = {k: v for k, v in tensors.items() if ".lora_" in k}
    heads = {k: v for k, v in tensors.items() if ".lora_" not in k and ".base_layer." not in k}
    targets = sorted({k.split(".lora_")[0] for k in lora})
    if not targets:
        raise AdapterError(f"{where} holds no LoRA tensors (no '.lora_' names among "
                           f"{sorted(tensors)[:4]}): it is damaged or not a LoRA adapter; "
                           f"save it again with pl.save_adapter.")
    unknown = [t for t in targets if t not in layers]
    if unknown:
        raise AdapterError(f"{where} adapts {unknown[0]}, which the model's first adapter does "
                           f"not wrap; named adapters must target a subset of {sorted(layers)}.")
    parts = {}
    for t in targets:
        layer = layers[t]
        a = lora.get(f"{t}.lora_A.weight", lora.get(f"{t}.lora_embedding_A"))
        if a is None:
            raise AdapterError(f"{where} has no lora_A tensor for {t}.")
        if a.dim() != 2 or a.shape[0] < 1:
            raise AdapterError(f"{where}: the lora_A tensor of {t} has shape "
                               f"{tuple(a.shape)}, not (r, d_in) with r >= 1: the file is "
                               f"damaged; save the adapter again.")
        p = layer.make_parts(int(a.shape[0]), config.alpha_of(t), config.dropout, config.rslora)
        expected = {f"{t}.{k}": v for k, v in p.state_dict().items()}
        check_state(expected, {k: v for k, v in lora.items() if k.startswith(t + ".lora_")})
        with torch.no_grad():
            for k, v in p.state_dict(keep_vars=True).items():
                v.copy_(lora[f"{t}.{k}"].to(v.dtype))
        parts[t] = p
    have_heads = list(get_config(model).modules_to_save or [])
    bank_entry = nn.ModuleDict()
    for head in have_heads:
        module = model.get_submodule(head)
        copy = clone_head(module)
        expected = {f"{head}.{k}": v for k, v in copy.state_dict().items()}
        check_state(expected, {k: v for k, v in heads.items() if k.startswith(head + ".")})
        with torch.no_grad():
            for k, v in copy.state_dict(keep_vars=True).items():
                v.copy_(heads[f"{head}.{k}"].to(v.dtype))
        bank_entry[key_of(head)] = copy.requires_grad_(False)
    extra = sorted(set(heads) - {k for h in have_heads for k in heads if k.startswith(h + ".")})
    if extra:
        raise AdapterError(f"{where} trains {extra[0]}, which the model's first adapter does "
                           f"not (its modules_to_save are {have_heads}).")
    check_labels(model, label_names, where)
    # checked: now change the model
    first = adapter_names(model)[0]
    for t, layer in layers.items():
        if t in parts:
            layer.add_adapter(name, parts[t])
        elif name in layer.adapter_names():       # an older version targeted this layer
            layer.remove_adapter(name)
            if layer.active == name:
                layer.active = first
    if have_heads:
        install_bank(model, have_heads)
        bank_of(model).banks[name] = bank_entry
    return model



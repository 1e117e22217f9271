"""Saving and loading a selection: indices + values of each sparse tensor, dense tensors whole.

Adapter tensors: "<param>.sparse_indices" (k,) int64, "<param>.sparse_values" (k,) and
"<param>.sparse_shape" for sparse tensors, "<param>" for dense ones; load_adapter rebuilds the
selection from them on a plain base model, with no batches to score.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.core.errors import AdapterError
from peftlab.core.adapt import Plan, adapt, heads_for
from peftlab.io.files import check_state
from peftlab.selection.surgery import SelectionConfig, _dense_params, _install, sparse_layers

SUFFIXES = (".sparse_indices", ".sparse_values", ".sparse_shape")


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a selection adapter: per SparseDelta its indices, values and shape,
    plus the modules trained in full (modules_to_save)."""
    out = {}
    for n, d in sparse_layers(model).items():
        out[n + ".sparse_indices"] = d.indices.detach()
        out[n + ".sparse_values"] = d.values.detach()
        out[n + ".sparse_shape"] = torch.tensor(d.shape, dtype=torch.long)
    for n, p in _dense_params(model).items():
        out[n] = p.detach()
    return out


def _parse(tensors: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    sparse, dense = {}, []
    for key in tensors:
        base = next((key[: -len(s)] for s in SUFFIXES if key.endswith(s)), None)
        if base is None:
            dense.append(key)
        else:
            sparse.setdefault(base, set()).add(key[len(base):])
    return sparse, dense


def prepare_load(model: nn.Module, config: SelectionConfig, tensors: dict[str, torch.Tensor]):
    """Rebuild the saved selection on a plain base model from the adapter's indices (no batches).
    Checks every name, shape and index first; raises ValueError naming the culprit."""

    def plan() -> Plan:
        params = dict(model.named_parameters())
        sparse, dense = _parse(tensors)
        for base, have in sparse.items():
            if have != set(SUFFIXES):
                raise AdapterError(f"{base}: the adapter holds {sorted(have)}, needs all of "
                                   f"{SUFFIXES}.")
            if base not in params:
                raise AdapterError(f"The adapter selects entries of {base}, which this model "
                                   f"lacks: load it onto the base model it was trained on.")
            shape = tuple(int(s) for s in tensors[base + ".sparse_shape"].tolist())
            if shape != tuple(params[base].shape):
                raise AdapterError(f"{base}: shape {shape} in the adapter, "
                                   f"{tuple(params[base].shape)} in the model (another base "
                                   f"model?).")
            idx = tensors[base + ".sparse_indices"]
            if idx.numel() != tensors[base + ".sparse_values"].numel() or idx.numel() == 0 or \
                    int(idx.min()) < 0 or int(idx.max()) >= params[base].numel():
                raise AdapterError(f"{base}: indices do not fit a tensor of shape {shape}.")
        for n in dense:
            if n not in params or tuple(params[n].shape) != tuple(tensors[n].shape):
                where = "missing from" if n not in params else "of another shape in"
                raise AdapterError(f"{n} is {where} this model: load the adapter onto the "
                                   f"base model it was trained on.")
        masks = {}
        for base in sparse:
            m = torch.zeros(params[base].numel(), dtype=torch.bool)
            m[tensors[base + ".sparse_indices"].long()] = True
            masks[base] = m.view(params[base].shape)
        heads = [h for h in heads_for(model, config.modules_to_save, label="a selection")
                 if all(f"{h}.{n}" in dense
                        for n, _ in model.get_submodule(h).named_parameters())]
        return Plan(list(config.targets or []), heads, keep=dense, parts=masks)

    return adapt(model, "selection", config, plan, lambda p: _install(model, p.parts, p.keep))


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved selection tensors into a model carrying the same selection (same entries);
    every name, shape and index set is checked before anything is copied."""
    expected = adapter_state_dict(model)
    check_state(expected, tensors)
    for n, d in sparse_layers(model).items():
        if not torch.equal(d.indices.cpu(), tensors[n + ".sparse_indices"].long().cpu()):
            raise AdapterError(f"{n}: the adapter selects other entries than this model's "
                               f"selection; load it onto a plain base model instead.")
    with torch.no_grad():
        for n, d in sparse_layers(model).items():
            d.values.copy_(tensors[n + ".sparse_values"].to(d.values.dtype))
        for n, p in _dense_params(model).items():
            p.copy_(tensors[n].to(p.dtype))



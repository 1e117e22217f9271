"""The classification heads of named LoRA adapters: the first adapter's head is the model's
own; the others' heads are copies in a HeadBank (`model.peftlab_heads`), and a forward hook on
each head swaps their outputs in for the rows (or the active adapter) that use them.

Used by peftlab/lora/named.py (the named-adapter API) only.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from peftlab.core.errors import AdapterError
from peftlab.core.state import method_state
from peftlab.lora.surgery import lora_layers

HEADS_ATTR = "peftlab_heads"


class HeadBank(nn.Module):
    """The heads of the adapters after the first: banks[adapter][head key] = a copy of the
    head with that adapter's weights. `active` / `rows` mirror the LoRA layers'."""

    def __init__(self):
        super().__init__()
        self.banks = nn.ModuleDict()
        self.active: str | None = None
        self.rows: list | None = None

    def hook(self, key: str, module: nn.Module, args: tuple, output):
        """Forward hook on the model's head `key`: its output, with the rows of adapters that
        have their own head recomputed by that head."""
        if self.rows is None:
            bank = self.banks[self.active] if self.active in self.banks else None  # noqa: SIM401
            return bank[key](*args) if bank is not None else None
        out = output
        for name in dict.fromkeys(self.rows):
            if name not in self.banks:
                continue
            idx = torch.tensor([i for i, n in enumerate(self.rows) if n == name],
                               device=out.device)
            part = self.banks[name][key](*(a.index_select(0, idx) for a in args))
            out = out.index_copy(0, idx, part.to(out.dtype))
        return out


def key_of(head: str) -> str:
    return head.replace(".", "__")          # ModuleDict keys cannot hold dots


def bank_of(model: nn.Module) -> HeadBank | None:
    return model._modules.get(HEADS_ATTR)


def clone_head(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module)
    clone._forward_hooks.clear()
    return clone


def check_labels(model: nn.Module, label_names, where: str) -> None:
    cfg = getattr(model, "config", None)
    id2label = getattr(cfg, "id2label", None) or {}
    have = [id2label[i] for i in sorted(id2label)]
    if label_names and have and not all(str(h).startswith("LABEL_") for h in have) \
            and list(label_names) != have:
        raise AdapterError(f"{where} predicts the classes {label_names}, the model's first "
                           f"adapter {have}: adapters on one base must share their classes.")


def install_bank(model: nn.Module, heads: list[str]) -> None:
    """Create model.peftlab_heads and hook each head once."""
    if bank_of(model) is not None:
        return
    bank = HeadBank()
    bank.active = next(iter(lora_layers(model).values())).active
    model.add_module(HEADS_ATTR, bank)
    state = method_state(model)
    for head in heads:
        state.hooks.append(model.get_submodule(head).register_forward_hook(
            functools.partial(bank.hook, key_of(head))))

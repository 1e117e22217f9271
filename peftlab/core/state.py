"""Which method a model carries, kept in one explicit object on the model.

    pl.lora.apply(model, cfg)
    get_method(model)        # "lora"
    get_config(model)        # the LoraConfig, with modules_to_save resolved
    get_targets(model)       # ["bert.encoder.layer.0.attention.self.query", ...]

`apply` stores a MethodState in `model.peftlab_state` (a plain attribute: it travels with
copy.deepcopy, and state_dict() ignores it). Hooks a method registers are kept in the state
and removed when the method is unloaded. Everything numeric (adapter weights, masks,
importance scores) lives in the model's own parameters and buffers, not here; the one
exception is `originals`, CPU copies of the base weights a method trains in place
(modules_to_save), kept so that unload(merge=False) can give the base model back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftlab.core.errors import AlreadyAdaptedError

STATE_ATTR = "peftlab_state"


@dataclass
class MethodState:
    """What a method leaves on the model it changed (one attribute, see method_state).

    method: the method's name ("lora", "adalora", "prefix", "prompt", "selection", "full").
    config: its config dataclass (modules_to_save resolved). targets: the resolved names of
    the modules it adapted. hooks: the forward hooks it registered (RemovableHandles, removed
    on unload). originals: {parameter name: CPU copy taken at apply} of base weights trained
    in place (modules_to_save), restored by unload(merge=False); not part of the adapter.
    digests: {parameter name: digest of its bytes at apply} of base weights trained in place
    with no copy kept (full fine-tuning without keep_base), so that unload(merge=False) can
    tell whether the base is still there (see digest()).
    """

    method: str
    config: Any
    targets: list[str] = field(default_factory=list)
    hooks: list = field(default_factory=list)
    originals: dict = field(default_factory=dict)
    digests: dict = field(default_factory=dict)

    def remove_hooks(self) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()


def method_state(model: nn.Module) -> MethodState | None:
    state = getattr(model, STATE_ATTR, None)
    return state if isinstance(state, MethodState) else None


def get_method(model: nn.Module) -> str | None:
    """The name of the peftlab method applied to `model`, or None for a plain model."""
    state = method_state(model)
    return state.method if state else None


def get_config(model: nn.Module):
    """The config dataclass of the model's method, or None for a plain model."""
    state = method_state(model)
    return state.config if state else None


def get_targets(model: nn.Module) -> list[str]:
    """The names of the modules the model's method adapted ([] for a plain model)."""
    state = method_state(model)
    return list(state.targets) if state else []


def ensure_plain(model: nn.Module, method: str) -> None:
    """Raise if `model` already carries a peftlab method (one method per model)."""
    current = get_method(model)
    if current is not None:
        again = "again " if current == method else ""
        raise AlreadyAdaptedError(
            f"This model already carries a peftlab {current!r} adapter; applying {method!r} "
            f"{again}would stack methods. peftlab applies one method per model: start from a "
            f"fresh base model (e.g. pl.models.text_classifier()).")


def mark(model: nn.Module, method: str, config, targets: list[str] | None = None,
         hooks: list | None = None, originals: dict | None = None,
         digests: dict | None = None) -> MethodState:
    """Record on the model which method it carries, with its config and resolved targets.
    Marking again (e.g. after prefix.fold) keeps the hooks, originals and digests already
    recorded."""
    old = method_state(model)
    same = old is not None and old.method == method
    kept = list(old.hooks) if same else []
    if originals is None:
        originals = dict(old.originals) if same else {}
    if digests is None:
        digests = dict(old.digests) if same else {}
    state = MethodState(method, config, list(targets or []), kept + list(hooks or []),
                        dict(originals), dict(digests))
    setattr(model, STATE_ATTR, state)
    return state


def digest(t: torch.Tensor) -> str:
    """A digest of a tensor's exact bytes (blake2b): equal digests mean bit-identical values."""
    import hashlib
    raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    h = hashlib.blake2b(raw.tobytes(), digest_size=16).hexdigest()
    return f"{t.dtype}:{tuple(t.shape)}:{h}"


def snapshot(model: nn.Module, modules) -> dict:
    """{parameter name: detached CPU copy} of every parameter of the modules `modules` (the
    modules_to_save a method trains in place), for restore() at unload(merge=False)."""
    out = {}
    for m in modules:
        prefix = m + "." if m else ""
        for n, p in model.get_submodule(m).named_parameters():
            out[prefix + n] = p.detach().to("cpu", copy=True)
    return out


def restore(model: nn.Module) -> None:
    """Copy the recorded originals back into the model's parameters, bit for bit."""
    state = method_state(model)
    if state is None:
        return
    with torch.no_grad():
        for name, t in state.originals.items():
            model.get_parameter(name).copy_(t)


def unmark(model: nn.Module) -> None:
    """Forget the method: its hooks are removed and the state attribute deleted."""
    state = method_state(model)
    if state is not None:
        state.remove_hooks()
        delattr(model, STATE_ATTR)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put the model in eval mode for a block; its train/eval mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)

"""The one apply skeleton every method's `apply` runs, and the one rule for its heads.

    def apply(model, config):
        return adapt(model, "lora", config, plan=lambda: _plan(model, config),
                     attach=lambda p: _attach(model, p))

The order is the contract (apply validates everything before it changes anything):

    1. ensure_plain   one method per model
    2. plan()         validates everything and builds what will be attached; changes nothing,
                      so a bad config leaves the model exactly as it was
    3. snapshot       CPU copies of what trains in place (the heads, and whatever the plan
                      names in `keep`), for unload(merge=False); digests of `watch`
    4. freeze         requires_grad=False everywhere
    5. attach(plan)   the method's own step: swap in wrappers, add an encoder, register
                      hooks (returned, removed at unload), unfreeze what it trains in place
    6. unfreeze       the heads (modules_to_save) train as usual
    7. mark           the MethodState: method, config with modules_to_save resolved, targets

The heads rule (`heads_for`), the same for every method: modules_to_save=None trains the
detected task head (core/heads.py default_heads: never an LM's output embeddings, never a
module tied to another), minus any that overlap the method's targets; an explicit list is
matched like targets; [] trains no head at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from peftlab.core.heads import default_heads
from peftlab.core.state import digest, ensure_plain, mark, snapshot
from peftlab.core.targets import freeze, resolve_modules_to_save, unfreeze_modules


@dataclass
class Plan:
    """What `plan()` decided, before anything changed.

    targets: the resolved names of the modules (or parameters) the method adapts. heads: the
    modules_to_save, resolved by heads_for. keep: {parameter name: tensor} extra parameters
    trained in place whose originals unload(merge=False) must put back (selection's whole
    selected tensors, BitFit's biases). watch: parameters trained in place with no copy kept
    (full fine-tuning without keep_base): only a digest of each is recorded, so that
    unload(merge=False) can tell whether the base is still there. parts: whatever attach
    needs (the built layers, an encoder ...).
    """

    targets: list[str]
    heads: list[str]
    keep: list[str] = field(default_factory=list)
    watch: list[str] = field(default_factory=list)
    parts: object = None


def heads_for(model: nn.Module, modules_to_save, targets=(),
              label: str = "an adapter") -> list[str]:
    """The modules_to_save of a method, by the one rule in the module docstring; raises
    TargetError for a name that matches nothing or overlaps a target."""
    return resolve_modules_to_save(model, list(targets), modules_to_save, default_heads(model),
                                   label)


def adapt(model: nn.Module, method: str, config, plan: Callable[[], Plan],
          attach: Callable[[Plan], list | None]) -> nn.Module:
    """Run the skeleton (module docstring) for `method` with `config`; returns the model."""
    ensure_plain(model, method)
    p = plan()
    params = dict(model.named_parameters())
    originals = snapshot(model, p.heads)
    originals.update({n: params[n].detach().to("cpu", copy=True) for n in p.keep
                      if n not in originals})
    digests = {n: digest(params[n]) for n in p.watch}
    freeze(model)
    hooks = attach(p) or []
    unfreeze_modules(model, p.heads)
    recorded = dataclasses.replace(config, modules_to_save=list(p.heads)) \
        if any(f.name == "modules_to_save" for f in dataclasses.fields(config)) else config
    mark(model, method, recorded, p.targets, hooks=hooks, originals=originals, digests=digests)
    return model

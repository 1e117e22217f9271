"""IA3 on a model: which layers get a vector (Hugging Face PEFT's defaults per model type),
apply / merge / unmerge / unload. The math is in peftlab/ia3/ia3.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.adapt import Plan, adapt, heads_for
from peftlab.core.base import base_kind
from peftlab.core.errors import TargetError
from peftlab.core.state import restore, unmark
from peftlab.core.targets import _matches, find_targets, replace_module
from peftlab.ia3.ia3 import IA3Linear

# peft 0.21's defaults (utils/constants.py, TRANSFORMERS_MODELS_TO_IA3_*): {model_type:
# (targets, feedforward modules)}. Suffix matching, as peft's: BERT's "output.dense" also
# matches attention.output.dense, which peft then treats as a feed-forward layer as well.
DEFAULTS = {
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen2": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen3": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gemma": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gemma2": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "opt": (["q_proj", "k_proj", "fc2"], ["fc2"]),
    "phi": (["q_proj", "v_proj", "fc2"], ["fc2"]),
    "t5": (["k", "v", "wo"], ["wo"]),
}


@dataclass
class IA3Config:
    """IA3: learned vectors l (ones at the start) rescale keys, values and the FFN's inner
    activation. pl.ia3.apply(model, IA3Config(...)).

    targets: the layers that get a vector (name suffixes, "re:<regex>", types); None = peft's
        default for the model type (BERT: key, value, output.dense; Llama: k_proj, v_proj,
        down_proj).
    feedforward_modules: the targets whose *input* is scaled (the FFN's down projection: its
        input is the FFN's inner activation); the others scale their output. None = peft's
        default for the model type; must be a subset of the targets.
    modules_to_save: whole modules trained as usual (None = the task head, [] = none).
    """

    method = "ia3"
    targets: list[str] | None = None
    feedforward_modules: list[str] | None = None
    modules_to_save: list[str] | None = None

    def __post_init__(self):
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if isinstance(self.feedforward_modules, str):
            self.feedforward_modules = [self.feedforward_modules]
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        if self.feedforward_modules is not None and self.targets is None:
            raise ValueError("IA3Config.feedforward_modules needs explicit targets (they must "
                             "be among them); give targets=[...] too, or leave both None for "
                             "the model type's defaults.")


def _defaults(model: nn.Module, config: IA3Config) -> tuple[list, list]:
    """(targets, feedforward_modules): the config's, or the model type's defaults."""
    if config.targets is not None:
        return list(config.targets), list(config.feedforward_modules or [])
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in DEFAULTS:
        raise TargetError(f"IA3 has no default targets for {type(model).__name__} (model type "
                          f"{kind!r}; defaults exist for {', '.join(sorted(DEFAULTS))}). Name "
                          f"them: IA3Config(targets=[keys, values, FFN down projection], "
                          f"feedforward_modules=[FFN down projection]).")
    targets, ff = DEFAULTS[kind]
    return list(targets), list(ff)


def plan(model: nn.Module, config: IA3Config) -> tuple[dict[str, bool], list[str]]:
    """({target name: feedforward?}, modules_to_save names); changes nothing, raises
    TargetError for targets that match nothing or layers IA3 cannot scale."""
    targets, ff = _defaults(model, config)
    names = find_targets(model, targets, method="IA3")
    rows = {}
    for name in names:
        module = model.get_submodule(name)
        kind = base_kind(module)
        if kind is None or kind.family != "linear":
            raise TargetError(f"IA3 scales linear layers (nn.Linear, Conv1D); target {name} is "
                              f"a {type(module).__name__}. Pick the keys, values and the FFN's "
                              f"down projection (e.g. 'key', 'value', 'output.dense').")
        rows[name] = any(_matches(name, module, f, model) for f in ff)
    for f in ff:
        if not any(_matches(n, model.get_submodule(n), f, model) for n in names):
            raise TargetError(f"IA3 feedforward module {f!r} is not among the targets "
                              f"({', '.join(names[:6])}{' ...' if len(names) > 6 else ''}); "
                              f"a feed-forward layer must also be a target.")
    return rows, heads_for(model, config.modules_to_save, names, "an IA3")


def count_parameters(model: nn.Module, config: IA3Config) -> int:
    """Numbers the vectors add: d_in per feed-forward target, d_out per other one."""
    rows, _ = plan(model, config)
    out = 0
    for name, ff in rows.items():
        m = model.get_submodule(name)
        d_in, d_out = base_kind(m).dims(m)
        out += d_in if ff else d_out
    return out


def apply(model: nn.Module, config: IA3Config | None = None) -> nn.Module:
    """Wrap every target in an IA3 layer (l = 1), freeze the base, train l + modules_to_save.
    In place; returns the model; a bad config raises before anything changes."""
    config = config or IA3Config()
    if not isinstance(config, IA3Config):
        raise TypeError(f"pl.ia3.apply needs an IA3Config, got {type(config).__name__}.")

    recorded = dataclasses.replace(config)   # gets the resolved names: saved, reloaded alike

    def _plan() -> Plan:
        rows, heads = plan(model, config)
        layers = {n: IA3Linear(model.get_submodule(n), ff) for n, ff in rows.items()}
        recorded.targets = list(rows)
        recorded.feedforward_modules = [n for n, ff in rows.items() if ff]
        return Plan(list(layers), heads, parts=layers)

    def _attach(p: Plan) -> None:
        for name, layer in p.parts.items():
            replace_module(model, name, layer)

    return adapt(model, "ia3", recorded, _plan, _attach)


def ia3_layers(model: nn.Module) -> dict[str, IA3Linear]:
    """{name: layer} of every IA3 layer, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, IA3Linear)}


def _layers_or_raise(model: nn.Module, what: str) -> dict[str, IA3Linear]:
    layers = ia3_layers(model)
    if not layers:
        raise ValueError(f"Cannot {what}: the model has no IA3 layers (apply "
                         f"pl.ia3.apply(model, pl.ia3.IA3Config()) first).")
    return layers


def merge(model: nn.Module, unload: bool = False) -> nn.Module:
    """Fold every vector into its weight (and bias); unload=True also removes the wrappers."""
    for layer in _layers_or_raise(model, "merge").values():
        layer.merge()
    return _unload(model, merge=True) if unload else model


def unmerge(model: nn.Module) -> nn.Module:
    """Take the vectors out of the weights again (equal to the base to float rounding)."""
    layers = _layers_or_raise(model, "unmerge")
    zero = [n for n, m in layers.items() if m.merged and bool((m.ia3_l == 0).any())]
    if zero:                                        # refuse before any layer changes
        raise ValueError(f"{zero[0]}'s IA3 vector has zero entries: its merged weight cannot "
                         f"be unmerged. Apply IA3 to a fresh base and load the adapter.")
    for layer in layers.values():
        layer.unmerge()
    return model


def unload(model: nn.Module, merge: bool = False) -> nn.Module:
    """Replace each IA3 layer by its base layer. merge=False (the default): the base model back,
    bit for bit (heads restored; a merged layer is unmerged, equal to float rounding);
    merge=True: the vectors baked in, a plain fine-tuned model."""
    layers = _layers_or_raise(model, "unload")
    with torch.no_grad():
        for layer in layers.values():
            layer.merge() if merge else layer.unmerge()
    if not merge:
        restore(model)
    for name, layer in layers.items():
        replace_module(model, name, layer.base_layer)
    unmark(model)
    return model


_unload = unload

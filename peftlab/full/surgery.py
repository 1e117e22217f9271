"""Full fine-tuning, head-only and BitFit on a model: apply, merge, unload.

    pl.full.apply(model, pl.full.FullConfig(mode="all"))     # every parameter trains
    pl.full.apply(model, pl.full.FullConfig(mode="head"))    # only the output head
    pl.full.apply(model, pl.full.FullConfig(mode="bitfit"))  # biases + the head (Ben Zaken et al., 2022)
    pl.full.unload(model)               # the base back: the head / biases as they were

These are not adapters: they choose which of the model's own parameters train (full.py), and
training changes them in place. For "head" and "bitfit" the few trained tensors are copied at
apply, so unload(merge=False) gives the base back bit for bit; for "all" that copy would be
the whole model, so it is kept only with FullConfig(keep_base=True), and without it unload
after training says the original weights are gone (before training, it is a no-op).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftlab.core.adapt import Plan, adapt, heads_for
from peftlab.core.heads import HEAD_NAMES, tied_heads
from peftlab.core.state import digest, get_method, method_state, restore, unmark
from peftlab.full.full import MODES, bias_names, trained_names


@dataclass
class FullConfig:
    """The baselines: which of the model's own parameters train.

    mode: "all": every weight (full fine-tuning); "head": the output head only (a linear
        probe); "bitfit": every bias + the head.
    modules_to_save: the head modules to train in "head" / "bitfit" mode, by the one heads
        rule (peftlab/core/adapt.py): None = the detected output head; a list names them;
        [] = no head (BitFit's biases alone; "head" then has nothing to train and is refused).
    keep_base: "all" mode only: keep a CPU copy of every weight at apply so that
        unload(merge=False) can give the base back after training (costs one model of memory).
    """

    method = "full"
    mode: str = "all"
    modules_to_save: list[str] | None = None
    keep_base: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"FullConfig.mode must be one of {MODES}, got {self.mode!r}.")
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        if not isinstance(self.keep_base, bool):
            raise ValueError(f"FullConfig.keep_base must be True or False, got "
                             f"{self.keep_base!r}.")


def _plan(model: nn.Module, config: FullConfig) -> Plan:
    mode = config.mode
    if mode == "bitfit" and not bias_names(model):
        raise ValueError(f"mode='bitfit' trains the model's biases, but this model has no biases "
                         f"(none of the {len(list(model.parameters()))} parameter tensors of "
                         f"{type(model).__name__} is a bias; Llama-style models are built "
                         f"without them), so BitFit would train nothing of its own. Train the "
                         f"head alone with FullConfig(mode='head'), or add parameters with "
                         f"pl.lora / pl.ia3.")
    heads = [] if mode == "all" else heads_for(model, config.modules_to_save, label="a full")
    if mode != "all" and not heads and config.modules_to_save is None:
        tied = tied_heads(model)
        if tied:
            head, other = next(iter(tied.items()))
            raise ValueError(f"mode={mode!r} trains the output head, but {head} shares its "
                             f"weight with {other} (tied embeddings): training it would change "
                             f"the input embeddings too. Name what to train with "
                             f"FullConfig(modules_to_save=['...']) (naming {head!r} trains the "
                             f"tied matrix on purpose).")
        alone = " (or modules_to_save=[] to train the biases alone)" if mode == "bitfit" else ""
        raise ValueError(f"mode={mode!r} trains the output head, but none was found (looked "
                         f"for modules named {', '.join(HEAD_NAMES)}); name it with "
                         f"FullConfig(modules_to_save=['...']){alone}.")
    if mode == "head" and not heads:
        raise ValueError("mode='head' with modules_to_save=[] would train nothing; name the "
                         "head (FullConfig(modules_to_save=['classifier'])) or leave "
                         "modules_to_save out to train the detected head.")
    names = trained_names(model, mode, heads)
    if mode == "all":
        return Plan([], [], keep=names if config.keep_base else [],
                    watch=[] if config.keep_base else names, parts=names)
    return Plan(list(heads), heads, keep=names, parts=names)


def apply(model: nn.Module, config: FullConfig | None = None) -> nn.Module:
    """Set requires_grad by `config.mode`; returns the model (changed in place)."""
    config = config or FullConfig()
    if not isinstance(config, FullConfig):
        raise TypeError(f"pl.full.apply needs a FullConfig, got {type(config).__name__}.")

    def attach(p: Plan) -> None:
        params = dict(model.named_parameters())
        for n in p.parts:
            params[n].requires_grad_(True)

    return adapt(model, "full", config, lambda: _plan(model, config), attach)


def merge(model: nn.Module) -> nn.Module:
    """A no-op: full fine-tuning's update is in the weights already. Returns the model."""
    _check(model)
    return model


def unload(model: nn.Module, merge: bool = False) -> nn.Module:
    """Forget the method; returns a plain model (everything frozen again, as after any
    method's unload).

    merge=True keeps what was trained (the fine-tuned model). merge=False (the default, as for
    every method) gives the base back: the head / biases copied at apply are put back, bit for
    bit; in mode "all" the copy exists only with keep_base=True. Without it, a model whose
    weights changed since apply raises before anything changes: the original weights are gone.
    """
    state = _check(model)
    if not merge:
        params = dict(model.named_parameters())
        changed = [n for n, d in state.digests.items() if digest(params[n]) != d]
        if changed:
            raise ValueError(f"unload(merge=False) cannot give the base model back: full "
                             f"fine-tuning trained the weights in place ({len(changed)} "
                             f"tensors changed since apply, e.g. {changed[0]}) and the "
                             f"original weights are gone. Keep the fine-tuned model with "
                             f"pl.full.unload(model, merge=True), reload the base model, or "
                             f"next time apply FullConfig(mode='all', keep_base=True).")
        restore(model)
    for p in model.parameters():
        p.requires_grad_(False)
    unmark(model)
    return model


def _check(model: nn.Module):
    if get_method(model) != "full":
        raise ValueError(f"This needs a model carrying peftlab's full method (pl.full.apply); "
                         f"this one carries {get_method(model)!r}.")
    return method_state(model)

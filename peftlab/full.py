"""Full fine-tuning and its two cheap references: head-only (linear probe) and BitFit.

    pl.full.apply(model, pl.full.FullConfig(mode="all"))     # every parameter trains
    pl.full.apply(model, pl.full.FullConfig(mode="head"))    # only the output head
    pl.full.apply(model, pl.full.FullConfig(mode="bitfit"))  # biases + the head (Ben Zaken et al., 2022)

These are not adapters: they choose which of the model's own parameters train. Saving a
"full" model with save_adapter stores exactly those parameters (for mode="all", the whole
model), so the file-size column of a comparison is honest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from peftlab.core.heads import default_heads, tied_heads
from peftlab.core.state import ensure_plain, mark
from peftlab.core.targets import find_targets, freeze, unfreeze_modules

MODES = ("all", "head", "bitfit")


@dataclass
class FullConfig:
    """The baselines: which of the model's own parameters train.

    mode: "all": every weight (full fine-tuning); "head": the output head only (a linear
        probe); "bitfit": every bias + the head.
    modules_to_save: extra modules to train in "head" / "bitfit" mode (default: the
        detected output head).
    """

    method = "full"
    mode: str = "all"   # "all": everything; "head": output head only; "bitfit": biases + head
    # extra modules to train in "head"/"bitfit" mode (default: the detected output head)
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"FullConfig.mode must be one of {MODES}, got {self.mode!r}.")


def apply(model: nn.Module, config: FullConfig | None = None) -> nn.Module:
    """Set requires_grad by `config.mode`; returns the model (changed in place)."""
    config = config or FullConfig()
    ensure_plain(model, "full")
    heads = list(config.modules_to_save) or default_heads(model)
    if config.mode != "all" and not heads:
        tied = tied_heads(model)
        if tied:
            head, other = next(iter(tied.items()))
            raise ValueError(f"mode={config.mode!r} trains the output head, but {head} shares "
                             f"its weight with {other} (tied embeddings): training it would "
                             f"change the input embeddings too. Name what to train with "
                             f"FullConfig(modules_to_save=['...']) (naming {head!r} trains the "
                             f"tied matrix on purpose).")
        raise ValueError(f"mode={config.mode!r} trains the output head, but none was found "
                         f"(looked for modules named {', '.join(('classifier', 'score', 'fc', 'head'))}); "
                         f"name it with FullConfig(modules_to_save=['...']).")
    if config.mode != "all":
        find_targets(model, heads, method="modules_to_save")   # validate before any change
    if config.mode == "all":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        freeze(model)
        unfreeze_modules(model, heads)
        if config.mode == "bitfit":
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.requires_grad_(True)
    mark(model, "full", config, heads if config.mode != "all" else [])
    return model

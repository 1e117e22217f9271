"""Full fine-tuning and its two cheap references, as one rule: which of the model's own
parameters train.

    mode="all"     every parameter                           (full fine-tuning)
    mode="head"    the output head only                      (a linear probe)
    mode="bitfit"  every bias + the head                     (BitFit, Ben Zaken et al., 2022)

Nothing is added to the model: the chosen parameters train in place, so their count is the
trainable-parameter column of a comparison and their tensors are what save_adapter writes.
"""

from __future__ import annotations

from torch import nn

MODES = ("all", "head", "bitfit")


def bias_names(model: nn.Module) -> list[str]:
    """Every bias parameter of the model (a Llama-style model has none)."""
    return [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]


def trained_names(model: nn.Module, mode: str, heads: list[str]) -> list[str]:
    """The parameters `mode` trains, given the head modules `heads`, in model order."""
    if mode == "all":
        return [n for n, _ in model.named_parameters()]
    head = {f"{h}.{n}" if h else n for h in heads
            for n, _ in model.get_submodule(h).named_parameters()}
    extra = set(bias_names(model)) if mode == "bitfit" else set()
    return [n for n, _ in model.named_parameters() if n in head or n in extra]

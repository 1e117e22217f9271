"""Loading a saved "full" adapter (full fine-tuning, head-only or BitFit).

The adapter's tensors are the parameters the mode trains (full.py trained_names), under their
own names; the generic loader in peftlab/io/adapters.py checks and copies them. One thing is
this method's own: adapters written before the one heads rule (peftlab/core/adapt.py) stored
modules_to_save=[] where they meant "the detected head", so an empty list next to head
tensors in the file is read as that.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from peftlab.full.surgery import FullConfig, apply


def prepare_load(model: nn.Module, config: FullConfig, tensors) -> None:
    """Before loading a saved full adapter onto a plain model: apply its mode, reading an
    older file's modules_to_save=[] beside head tensors as the detected head."""
    if config.mode != "all" and config.modules_to_save == [] \
            and any(n.rsplit(".", 1)[-1] != "bias" for n in tensors):
        config = dataclasses.replace(config, modules_to_save=None)
    apply(model, config)

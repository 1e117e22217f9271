"""Shared machinery every method builds on; imports nothing else from peftlab.

    errors.py     TargetError, AlreadyAdaptedError, AdapterError
    state.py      which method a model carries (MethodState), eval_mode
    layers.py     AdapterLayer, the one import of transformers' Conv1D
    lowrank.py    a frozen linear + a low-rank update in one autograd step (LoRA's fast path)
    heads.py      the one rule for a model's output head (tied LM heads included)
    targets.py    target matching, module replacement, freezing, modules_to_save
    batches.py    what a batch is; forward and the default loss
    hf.py         transformers helpers (attention implementation switching)
    methodspec.py what a method package declares once (its spec.py): MethodSpec, ...
    registry.py   the specs found (in-tree scan, entry points); pl.after_step / regularization
    adapt.py      the one apply skeleton and the one heads rule every method uses
"""

from peftlab.core import registry
from peftlab.core.errors import AdapterError, AlreadyAdaptedError, TargetError
from peftlab.core.heads import default_heads, head_names, is_head
from peftlab.core.layers import AdapterLayer
from peftlab.core.state import (
    MethodState,
    ensure_plain,
    eval_mode,
    get_config,
    get_method,
    get_targets,
    mark,
    unmark,
)
from peftlab.core.targets import find_targets

__all__ = ["registry", "AdapterError", "AdapterLayer", "AlreadyAdaptedError", "MethodState", "TargetError",
           "default_heads", "ensure_plain", "eval_mode", "find_targets", "get_config",
           "get_method", "get_targets", "head_names", "is_head", "mark", "unmark"]

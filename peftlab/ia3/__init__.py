"""IA3 (Liu et al., 2022): learned vectors rescale keys, values and the FFN's inner activation.

    ia3.py      the layer: y = l * (W x + b), or y = W (l * x) + b for the FFN's down projection
    surgery.py  which layers (peft's defaults per model type), apply, merge, unmerge, unload
    format.py   saving / loading and the Hugging Face PEFT format (peft_type IA3)

    pl.ia3.apply(model, pl.ia3.IA3Config())       # BERT: key, value, output.dense
    pl.ia3.merge(model); pl.ia3.unmerge(model)
    pl.ia3.unload(model, merge=True)              # merged and plain; unload(model): the base back
"""

from peftlab.ia3.format import adapter_state_dict, from_hf_peft, load_adapter_state, to_hf_peft
from peftlab.ia3.ia3 import IA3Linear
from peftlab.ia3.surgery import (
    DEFAULTS,
    IA3Config,
    apply,
    count_parameters,
    ia3_layers,
    merge,
    plan,
    unload,
    unmerge,
)

__all__ = [
    "DEFAULTS",
    "IA3Config",
    "IA3Linear",
    "adapter_state_dict",
    "apply",
    "count_parameters",
    "from_hf_peft",
    "ia3_layers",
    "load_adapter_state",
    "merge",
    "plan",
    "to_hf_peft",
    "unload",
    "unmerge",
]

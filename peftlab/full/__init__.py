"""Full fine-tuning and its two cheap references: head-only (linear probe) and BitFit.

    full.py     the rule: which of the model's own parameters each mode trains
    surgery.py  FullConfig, apply, merge, unload (the base back: keep_base for mode "all")
    format.py   loading adapters saved by earlier peftlab versions

    pl.full.apply(model, pl.full.FullConfig(mode="all" | "head" | "bitfit"))

Saving a "full" model with save_adapter stores exactly the parameters that train (for
mode="all", the whole model), so the file-size column of a comparison is honest.
"""

from peftlab.full.format import prepare_load
from peftlab.full.full import MODES, bias_names, trained_names
from peftlab.full.surgery import FullConfig, apply, merge, unload

__all__ = ["MODES", "FullConfig", "apply", "bias_names", "merge", "prepare_load",
           "trained_names", "unload"]

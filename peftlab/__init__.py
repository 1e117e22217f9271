"""peftlab: parameter-efficient fine-tuning, every method from scratch, for learning.

    import peftlab as pl
    model, tokenizer = pl.models.text_classifier(num_labels=2)
    pl.lora.apply(model, pl.lora.LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    result = pl.train.fit(model, ds.train, ds.validation, tokenizer=tokenizer)
    pl.save_adapter(model, "my_adapter")
    pl.predict(model, tokenizer, ["a new sentence"]).labels

Your own data: pl.data.load_dataset("my.csv", text_column=..., label_column=...); the command
line does the same: `peftlab train | evaluate | predict | compare` (see `peftlab --help`).

Everything loads on first use, so `import peftlab` imports nothing but this file: the
sub-packages below (`pl.train`, `pl.models`, ...), the functions re-exported here
(`pl.save_adapter`, ...) and every method of the registry (`pl.lora`, `pl.full`, and
out-of-tree methods installed under the entry-point group "peftlab.methods"; see
peftlab/core/registry.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# sub-packages and modules, imported on first use
_MODULES = {"chat", "core", "data", "io", "measure", "models", "runtime", "train", "widgets", "plots",
            "compare", "exercises", "report", "cli", "serve", "commands"}

# functions and classes re-exported at the top: name -> the module that defines it
_FUNCTIONS = {
    "after_step": "peftlab.core.registry",
    "regularization": "peftlab.core.registry",
    "estimate": "peftlab.fit_estimate",
    "export_merged": "peftlab.export",
    "load_adapter": "peftlab.io.adapters",
    "save_adapter": "peftlab.io.adapters",
    "adapter_names": "peftlab.lora.named",
    "delete_adapter": "peftlab.lora.named",
    "disable_adapters": "peftlab.lora.named",
    "set_adapter": "peftlab.lora.named",
    "generate": "peftlab.chat.generate",
    "Predictions": "peftlab.inference",
    "predict": "peftlab.inference",
    "trainable_report": "peftlab.report",
}

if TYPE_CHECKING:                                   # for editors and type checkers only
    from peftlab.core.registry import after_step, regularization  # noqa: F401
    from peftlab.export import export_merged  # noqa: F401
    from peftlab.io.adapters import load_adapter, save_adapter  # noqa: F401
    from peftlab.lora.named import (  # noqa: F401
        adapter_names,
        delete_adapter,
        disable_adapters,
        set_adapter,
    )
    from peftlab.chat.generate import generate  # noqa: F401
    from peftlab.inference import Predictions, predict  # noqa: F401
    from peftlab.report import trainable_report  # noqa: F401


def _methods() -> list[str]:
    from peftlab.core import registry
    return registry.names()


def __getattr__(name: str):
    if name == "__all__":                            # the public API, methods included
        return sorted((_MODULES - {"serve", "commands"}) | set(_FUNCTIONS) | set(_methods()))
    if name in _FUNCTIONS:
        value = getattr(importlib.import_module(_FUNCTIONS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"peftlab.{name}")
    elif not name.startswith("_") and name in _methods():
        from peftlab.core import registry
        value = registry.method_module(name)
    else:
        raise AttributeError(f"module 'peftlab' has no attribute {name!r}")
    globals()[name] = value                          # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | _MODULES | set(_FUNCTIONS) | set(_methods()))


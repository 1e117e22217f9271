"""peftlab: parameter-efficient fine-tuning, every method from scratch, for learning.

    import peftlab as pl
    model, tokenizer = pl.models.text_classifier(num_labels=2)
    pl.lora.apply(model, pl.lora.LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    result = pl.train.fit(model, ds.train, ds.validation, tokenizer=tokenizer)
    pl.save_adapter(model, "my_adapter")
    pl.predict(model, tokenizer, ["a new sentence"]).labels

Your own data: pl.data.load_dataset("my.csv", text_column=..., label_column=...); the command
line does the same: `peftlab train | evaluate | predict | compare` (see `peftlab --help`).
"""

from __future__ import annotations

import importlib

from peftlab import core, data, io, measure, models, runtime, train
from peftlab.core.registry import after_step, regularization
from peftlab.export import export_merged
from peftlab.io.adapters import load_adapter, save_adapter
from peftlab.lora.named import adapter_names, delete_adapter, disable_adapters, set_adapter
from peftlab.predict import Predictions, predict
from peftlab.report import trainable_report

__version__ = "0.1.0"

# method modules and widgets load on first use, so `import peftlab` stays fast
_LAZY = {"full", "lora", "prefix", "prompt", "selection", "adalora", "widgets", "plots",
         "compare", "exercises", "report", "cli"}


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"peftlab.{name}")
    raise AttributeError(f"module 'peftlab' has no attribute {name!r}")


__all__ = ["Predictions", "adapter_names", "after_step", "core", "data", "delete_adapter",
           "disable_adapters", "export_merged", "io", "load_adapter", "measure", "set_adapter",
           "models", "predict", "regularization", "runtime", "save_adapter", "train",
           "trainable_report",
           *sorted(_LAZY)]

"""Live widgets (ipywidgets 8 + matplotlib) to look inside models while you learn.

    pl.widgets.ModelInspector(model)                      module tree, counts, devices, memory
    pl.widgets.TrainingMonitor()                          fit(..., callbacks=[monitor])
    pl.widgets.LoraExplorer(model)                        rank/alpha/targets -> cost; spectra
    pl.widgets.SelectionExplorer(model, batches=batches)  budget -> where selected entries fall
    pl.widgets.RankAllocationViewer(model)                AdaLoRA ranks over steps + budget
    pl.widgets.PrefixViewer(model, tokenizer)             attention to virtual tokens
    pl.widgets.ServeMonitor("http://127.0.0.1:8000")      a running server's metrics
    pl.widgets.FitExplorer()                              will it fit 16 / 24 / 48 GB? (pl.estimate)

Each is a plain object: `.widget` is what a notebook shows (the object also displays itself
as the last value of a cell), and every number and figure is reachable without a browser
(`.summary()`, `.figure()`, counts as attributes). Widgets only read models (the inspector's
device selector is the one thing that moves one). Classes load on first use.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "ModelInspector": "inspector",
    "TrainingMonitor": "monitor",
    "LoraExplorer": "lora_explorer",
    "SelectionExplorer": "selection_explorer",
    "RankAllocationViewer": "rank_viewer",
    "PrefixViewer": "prefix_viewer",
    "TradeoffExplorer": "tradeoff",
    "ServeMonitor": "serve_monitor",
    "FitExplorer": "fits",
    "TokenProbs": "token_probs",
    "SweepExplorer": "sweep_explorer",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"peftlab.widgets.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'peftlab.widgets' has no attribute {name!r}; widgets: "
                         f"{', '.join(_WHERE)}")


def __dir__():
    return sorted(list(globals()) + __all__)

"""Matplotlib figures shared by widgets, the compare report and the notebooks.

One file per topic (plots/lora.py, plots/selection.py, ...). Every function takes data
(tensors, dicts, lists), draws on an `ax` it is given or creates, and returns the Figure;
none of them trains or changes a model.
"""

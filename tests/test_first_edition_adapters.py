"""Adapters written by peftlab's first edition (the flat layout) still load, and the second
edition, trained the same way, computes the same numbers.

tests/fixtures/first_edition/ was made by running tests/fixtures/make_first_edition.py with
the first edition's code (commit 71aaf07) on a tiny seeded BERT: six SGD steps per method.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import peftlab as pl

FIXTURES = Path(__file__).parent / "fixtures"
SAVED = FIXTURES / "first_edition"
LOGITS = json.loads((SAVED / "logits.json").read_text())


def _maker():
    spec = importlib.util.spec_from_file_location("maker", FIXTURES / "make_first_edition.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(LOGITS))
def test_first_edition_adapter_loads_with_the_same_outputs(name):
    maker = _maker()
    model = pl.load_adapter(maker.tiny(), SAVED / name)
    assert pl.core.get_method(model) == name.split("_")[0]
    with torch.no_grad():
        got = model(input_ids=maker.IDS, attention_mask=maker.MASK).logits
    assert torch.allclose(got, torch.tensor(LOGITS[name]), atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOGITS))
def test_second_edition_trains_to_the_same_numbers(name, monkeypatch):
    maker = _maker()
    if name == "selection":
        # The first edition scored Fisher one example at a time; the second edition's default
        # gets the same sums from one batched pass, which draws other dropout masks (equal to
        # the loop with dropout off: tests/test_selection_batched.py). Trained "the same way"
        # here means with the loop.
        import functools

        import peftlab.selection.surgery as surgery
        monkeypatch.setattr(surgery, "compute_scores",
                            functools.partial(surgery.compute_scores, batched=False))
    got = maker.train(name)
    assert torch.allclose(got, torch.tensor(LOGITS[name]), atol=1e-6), name

"""Prompt tuning's one door is pl.prompt (issue 25); pl.prefix's old aliases still work, with
a DeprecationWarning, and compute exactly what pl.prompt does."""

from __future__ import annotations

import copy

import pytest
import torch

import peftlab as pl

IDS = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]])
MASK = (IDS != 0).long()
MESSAGE = "use pl.prompt.PromptConfig / pl.prompt.apply"


def test_prefix_promptconfig_warns_and_is_prompts_config():
    with pytest.warns(DeprecationWarning, match=MESSAGE):
        cls = pl.prefix.PromptConfig
    assert cls is pl.prompt.PromptConfig
    assert "PromptConfig" not in pl.prefix.__all__


def test_prefix_apply_and_unload_of_a_prompt_warn_and_forward(tiny_bert):
    config = pl.prompt.PromptConfig(3, init="normal")
    ours = pl.prompt.apply(copy.deepcopy(tiny_bert), copy.deepcopy(config))
    with pytest.warns(DeprecationWarning, match=MESSAGE):
        old = pl.prefix.apply(copy.deepcopy(tiny_bert), copy.deepcopy(config))
    assert pl.core.get_method(old) == "prompt"
    with torch.no_grad():
        assert torch.equal(old(input_ids=IDS, attention_mask=MASK).logits,
                           ours(input_ids=IDS, attention_mask=MASK).logits)
    with pytest.warns(DeprecationWarning, match=MESSAGE):
        pl.prefix.unload(old)
    assert pl.core.get_method(old) is None


def test_prefix_itself_does_not_warn(tiny_bert):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        pl.prefix.unload(pl.prefix.apply(tiny_bert, pl.prefix.PrefixConfig(3)))

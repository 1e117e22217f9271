"""Saving a named adapter that is not the first: the folder is exactly what saving that
adapter from its own model writes, it loads onto a plain base with the same outputs, and by
name beside others."""

from __future__ import annotations

import pytest
import torch

import peftlab as pl
from peftlab.core.errors import AdapterError
from peftlab.io.files import read_json, read_tensors
from tests.test_multi_adapter import bert, out, save, trained


@pytest.fixture
def base_with_two(tmp_path):
    a = trained(1)
    b = trained(2, targets=("query",), r=2, alpha=4.0)
    pa, pb = save(a, tmp_path / "a"), save(b, tmp_path / "b")
    model = pl.load_adapter(bert(), pa)
    pl.load_adapter(model, pb, name="support")
    return model, a, b, pb


def test_saving_a_named_adapter_round_trips(base_with_two, tmp_path):
    model, _, b, pb = base_with_two
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = pl.save_adapter(model, tmp_path / "support", name="support")
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    saved, original = read_tensors(path / "adapter_model.safetensors"), read_tensors(
        pb / "adapter_model.safetensors")
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in saved)
    mine, theirs = read_json(path / "peftlab_adapter.json"), read_json(pb / "peftlab_adapter.json")
    assert mine["config"] == theirs["config"] and mine["num_parameters"] == theirs["num_parameters"]
    # onto a plain base: the support model's outputs
    alone = pl.load_adapter(bert(), path)
    assert torch.allclose(out(alone), out(b), atol=1e-6)
    # by name beside another adapter: the same as the adapter it came from
    again = pl.load_adapter(bert(), tmp_path / "a")
    pl.load_adapter(again, path, name="copy")
    pl.set_adapter(again, "copy")
    assert torch.allclose(out(again), out(b), atol=1e-6)
    # the first adapter by its name is the usual save
    first = pl.save_adapter(model, tmp_path / "first", name="default")
    ref = read_tensors((tmp_path / "a") / "adapter_model.safetensors")
    got = read_tensors(first / "adapter_model.safetensors")
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in got)


def test_saving_a_named_adapter_with_other_ranks_and_rslora(tmp_path):
    a = trained(1)
    b = pl.lora.apply(bert(), pl.lora.LoraConfig(r=4, alpha=8.0, targets=["query", "value"],
                                                 rslora=True, rank_pattern={"value": 2}))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in b.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    model = pl.load_adapter(bert(), save(a, tmp_path / "a"))
    pl.load_adapter(model, save(b, tmp_path / "b"), name="other")
    path = pl.save_adapter(model, tmp_path / "other", name="other")
    alone = pl.load_adapter(bert(), path)
    assert torch.allclose(out(alone), out(b), atol=1e-6)
    config = pl.core.get_config(alone)
    assert config.rslora and config.r == 4
    assert sorted(config.rank_pattern.values()) == [2, 2]


def test_saving_a_named_adapter_refuses_bad_requests(base_with_two, tmp_path):
    model, *_ = base_with_two
    with pytest.raises(AdapterError, match="No adapter named 'nope'.*default"):
        pl.save_adapter(model, tmp_path / "x", name="nope")
    with pytest.raises(AdapterError, match="format='peftlab'"):
        pl.save_adapter(model, tmp_path / "x", name="support", format="hf-peft")
    assert not (tmp_path / "x").exists()
    pl.lora.merge(model)
    with pytest.raises(AdapterError, match="Unmerge"):
        pl.save_adapter(model, tmp_path / "x", name="support")
    assert not (tmp_path / "x").exists()

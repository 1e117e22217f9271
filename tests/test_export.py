"""pl.export_merged: a plain transformers folder with the adapter merged in, loaded by
AutoModelForSequenceClassification without peftlab, same logits; atomic; refusals."""

from __future__ import annotations

import json
import os
import sys

import pytest
import timing
import torch
from export_fixtures import tiny_tokenizer
from transformers import AutoModelForSequenceClassification

import peftlab as pl

TEXTS = ["the soup was cold and bland", "what a goal in the last minute", "not bad"]


def randomise(model, seed, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def logits(model, enc):
    model.eval()
    with torch.no_grad():
        return model(**enc).logits


def test_export_loads_without_peftlab_with_the_same_logits(embedded, tmp_path):
    model, tok = embedded
    pl.lora.apply(model, pl.lora.LoraConfig(r=4, targets=["query", "value"]))
    randomise(model, 0)
    pl.data.set_label_names(model, ["neg", "pos"])
    enc = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    want = logits(model, enc)
    path = pl.export_merged(model, tmp_path / "out", tokenizer=tok)
    assert pl.core.state.get_method(model) == "lora"               # caller's model untouched
    assert torch.equal(logits(model, enc), want)
    files = set(os.listdir(path))
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert json.loads((path / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    plain = AutoModelForSequenceClassification.from_pretrained(path)
    assert not any("lora" in k for k in plain.state_dict())
    assert torch.allclose(logits(plain, enc), want, atol=1e-4)
    # in a fresh interpreter where importing peftlab fails
    code = ("import sys, torch; sys.modules['peftlab'] = None\n"
            "from transformers import AutoModelForSequenceClassification as M, AutoTokenizer as T\n"
            f"p = {str(path)!r}; m = M.from_pretrained(p).eval(); t = T.from_pretrained(p)\n"
            f"e = t({TEXTS!r}, padding=True, return_tensors='pt'); e.pop('token_type_ids', None)\n"
            "with torch.no_grad(): print(m(**e).logits.tolist()); print(m.config.id2label)")
    run = timing.run([sys.executable, "-c", code], "loading the export in a fresh interpreter",
                     300, capture_output=True, text=True, check=False,
                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert torch.allclose(torch.tensor(json.loads(lines[-2])), want, atol=1e-4)
    assert "pos" in lines[-1]


def _bert():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


IDS = {"input_ids": torch.randint(1, 100, (4, 6), generator=torch.Generator().manual_seed(3))}


def test_export_of_the_active_named_adapter_and_other_methods(tmp_path):
    a = randomise(pl.lora.apply(_bert(), pl.lora.LoraConfig(r=2, targets=["query"])), 1)
    b = randomise(pl.lora.apply(_bert(), pl.lora.LoraConfig(r=2, targets=["query"])), 2)
    model = pl.load_adapter(_bert(), pl.save_adapter(a, tmp_path / "a"))
    pl.load_adapter(model, pl.save_adapter(b, tmp_path / "b"), name="b")
    pl.set_adapter(model, "b")
    out = pl.export_merged(model, tmp_path / "exp", tokenizer=tiny_tokenizer())
    loaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert torch.allclose(logits(loaded, IDS), logits(b, IDS), atol=1e-4)
    sel = randomise(pl.adalora.to_lora(randomise(pl.adalora.apply(_bert(), pl.adalora.AdaLoraConfig(
        init_r=4, target_r=2, targets=["value"], total_steps=10)), 4)), 5)
    loaded = AutoModelForSequenceClassification.from_pretrained(
        pl.export_merged(sel, tmp_path / "ada", tokenizer=tiny_tokenizer()))
    assert torch.allclose(logits(loaded, IDS), logits(sel, IDS), atol=1e-4)
    prefix = pl.prefix.apply(_bert(), pl.prefix.PrefixConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match="cannot be merged"):
        pl.export_merged(prefix, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    with pytest.raises(TypeError, match="save_pretrained"):
        pl.export_merged(torch.nn.Linear(2, 2), tmp_path / "lin")
    with pytest.raises(ValueError, match="label names|outputs|names"):
        pl.export_merged(a, tmp_path / "bad", label_names=["x", "y", "z"],
                         tokenizer=tiny_tokenizer())


def test_export_is_atomic(tmp_path):
    model = randomise(pl.lora.apply(_bert(), pl.lora.LoraConfig(r=2, targets=["query"])), 1)
    first = pl.export_merged(model, tmp_path / "exp", tokenizer=tiny_tokenizer())
    before = (first / "model.safetensors").read_bytes()

    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    randomise(model, 9)
    with pytest.raises(OSError, match="disk full"):
        pl.export_merged(model, tmp_path / "exp", tokenizer=Broken(), check=False)
    assert (first / "model.safetensors").read_bytes() == before   # the old export survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temp folder left
    pl.export_merged(model, tmp_path / "exp", tokenizer=tiny_tokenizer())   # replaced when complete
    assert (first / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]

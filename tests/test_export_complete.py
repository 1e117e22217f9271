"""pl.export_merged writes a complete folder (model + its tokenizer / image processor) and
checks it: reloaded with plain transformers it must give the adapted model's outputs, or the
folder is removed and the export raises. Without a tokenizer it can find, it refuses before
writing anything."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import timing
import torch
from chat_fixtures import tiny_chat_model
from export_fixtures import tiny_bert_with_tokenizer, tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import peftlab as pl
from peftlab.export import PROBE_TEXTS, ExportCheckError


def randomise(model, seed, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@torch.no_grad()
def logits(model, enc):
    return model.eval()(**enc).logits


def lora_bert(seed=1):
    model, tok = tiny_bert_with_tokenizer()
    return randomise(pl.lora.apply(model, pl.lora.LoraConfig(r=2, targets=["query"])), seed), tok


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_export_finds_the_tokenizer_and_reloads_without_peftlab(embedded, tmp_path):
    """No tokenizer=: the embedded classifier's and a folder-loaded chat model's own tokenizer
    are written, and a fresh interpreter without peftlab predicts what the models predict."""
    model, tok = embedded
    randomise(pl.lora.apply(model, pl.lora.LoraConfig(r=4, targets=["query", "value"])), 0)
    text = pl.export_merged(model, tmp_path / "text")
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= set(listing(text))
    want_text = torch.softmax(logits(model, dict(tok(PROBE_TEXTS, padding=True,
                                                     return_tensors="pt"))), -1)
    # a causal LM loaded from a folder by pl.models.chat_model remembers that folder
    tiny, chat_tok = tiny_chat_model()
    tiny.save_pretrained(tmp_path / "base")
    chat_tok.save_pretrained(tmp_path / "base")
    lm, _ = pl.models.chat_model(tmp_path / "base")
    randomise(pl.lora.apply(lm, pl.lora.LoraConfig(r=2, targets=["q_proj", "v_proj"])), 2)
    chat = pl.export_merged(lm, tmp_path / "chat")
    assert "tokenizer.json" in listing(chat)
    want_chat = logits(lm, dict(chat_tok(PROBE_TEXTS, padding=True, return_tensors="pt")))
    code = ("import sys, json, torch; sys.modules['peftlab'] = None\n"
            "from transformers import AutoTokenizer as T, AutoModelForSequenceClassification as S, "
            "AutoModelForCausalLM as C\n"
            "out = []\n"
            f"for p, M in (({str(text)!r}, S), ({str(chat)!r}, C)):\n"
            "    t = T.from_pretrained(p); m = M.from_pretrained(p).eval()\n"
            f"    e = t({PROBE_TEXTS!r}, padding=True, return_tensors='pt')\n"
            "    with torch.no_grad(): out.append(m(**e).logits.tolist())\n"
            "print(json.dumps(out))")
    run = timing.run([sys.executable, "-c", code], "loading two exports in a fresh interpreter",
                     300, capture_output=True, text=True, check=False,
                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    got_text, got_chat = json.loads(run.stdout.strip().splitlines()[-1])
    assert torch.allclose(torch.softmax(torch.tensor(got_text), -1), want_text, atol=1e-5)
    assert torch.allclose(torch.tensor(got_chat), want_chat, atol=1e-4)


def test_the_embedded_chat_models_tokenizer_is_found_from_its_label(tmp_path):
    model, tok = tiny_chat_model()
    model.config.name_or_path = pl.models.chat.DEFAULT_CHAT_LABEL   # as chat_model() labels it
    out = pl.export_merged(model, tmp_path / "exp")
    assert AutoTokenizer.from_pretrained(out)("hello there")["input_ids"] == \
        tok("hello there")["input_ids"]


def test_refused_before_writing_when_no_tokenizer_can_be_found(tmp_path):
    model, _ = lora_bert()                                      # built from a config
    with pytest.raises(ValueError, match=r"Pass tokenizer=.*nothing was written"):
        pl.export_merged(model, tmp_path / "new" / "exp")
    assert not (tmp_path / "new").exists()                      # not even the parent folder
    plain, _ = tiny_bert_with_tokenizer()
    plain.save_pretrained(tmp_path / "weights-only")            # a folder without a tokenizer
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "weights-only")
    with pytest.raises(ValueError, match=r"holds no tokenizer files.*Pass tokenizer="):
        pl.export_merged(loaded, tmp_path / "exp")
    assert listing(tmp_path) == ["weights-only"]


def test_a_wrong_tokenizer_is_refused_before_writing(tmp_path):
    model, _ = lora_bert()
    empty = tiny_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])  # every word [UNK]
    with pytest.raises(ValueError, match=r"not this model's.*unknown token"):
        pl.export_merged(model, tmp_path / "exp", tokenizer=empty)
    _, big = tiny_chat_model()                                  # ids beyond 100 embeddings
    with pytest.raises(ValueError, match=r"token id \d+, and the model has only 100"):
        pl.export_merged(model, tmp_path / "exp", tokenizer=big)
    assert listing(tmp_path) == []


def test_the_check_catches_a_tokenizer_that_saves_badly(tmp_path):
    """A tokenizer whose save_pretrained loses its vocabulary: the folder's reloaded
    tokenizer maps every word to [UNK]; the check says so, and the old export survives."""
    model, tok = lora_bert()
    first = pl.export_merged(model, tmp_path / "exp", tokenizer=tok)
    before = listing(first)

    class Forgetful(type(tok)):
        def save_pretrained(self, folder, **kw):
            return tiny_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]).save_pretrained(folder)

    bad = Forgetful(vocab=tok.get_vocab())
    with pytest.raises(ExportCheckError, match="encodes the probe differently"):
        pl.export_merged(model, tmp_path / "exp", tokenizer=bad)
    assert listing(tmp_path) == ["exp"] and listing(first) == before


def test_the_check_catches_a_corrupted_weight(tmp_path, monkeypatch):
    """One tensor perturbed as it is written (or a wrong merge): the reloaded model's logits
    differ, the check raises and nothing is left behind."""
    from safetensors.torch import load_file, save_file
    from transformers import BertForSequenceClassification

    model, tok = lora_bert()
    real = BertForSequenceClassification.save_pretrained

    def corrupting(self, folder, **kw):
        real(self, folder, **kw)
        f = os.path.join(folder, "model.safetensors")
        state = load_file(f)
        state["bert.encoder.layer.1.output.dense.weight"][0, 0] += 0.05
        save_file(state, f, metadata={"format": "pt"})

    monkeypatch.setattr(BertForSequenceClassification, "save_pretrained", corrupting)
    with pytest.raises(ExportCheckError, match=r"AutoModelForSequenceClassification, does not "
                                               r"reproduce.*differ by.*written weights are wrong"):
        pl.export_merged(model, tmp_path / "exp", tokenizer=tok)
    assert listing(tmp_path) == []
    monkeypatch.undo()
    real_copy = pl.export.merged_copy

    def wrong_merge(m):
        clone = real_copy(m)
        with torch.no_grad():
            clone.classifier.weight[0, 0] += 0.05
        return clone

    monkeypatch.setattr(pl.export, "merged_copy", wrong_merge)
    with pytest.raises(ValueError, match="merged copy.*does not reproduce.*the merge is wrong"):
        pl.export_merged(model, tmp_path / "exp", tokenizer=tok)
    assert listing(tmp_path) == []


def test_causal_lm_export_reloads_with_automodelforcausallm(tmp_path):
    model, tok = tiny_chat_model()
    randomise(pl.lora.apply(model, pl.lora.LoraConfig(r=2, targets="all-linear")), 3)
    out = pl.export_merged(model, tmp_path / "exp", tokenizer=tok)
    enc = dict(tok(PROBE_TEXTS, padding=True, return_tensors="pt"))
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert not any("lora" in k for k in plain.state_dict())
    assert torch.allclose(logits(plain, enc), logits(model, enc), atol=1e-4)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True


def test_image_models_export_with_their_image_processor(tmp_path):
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=1,
                                              num_attention_heads=4, intermediate_size=64,
                                              image_size=8, patch_size=4, num_labels=2)).eval()
    randomise(pl.lora.apply(vit, pl.lora.LoraConfig(r=2, targets="all-linear")), 4)
    with pytest.raises(ValueError, match=r"image processor.*Pass tokenizer=<its image processor>"):
        pl.export_merged(vit, tmp_path / "exp")
    processor = ViTImageProcessor(size={"height": 8, "width": 8})
    out = pl.export_merged(vit, tmp_path / "exp", tokenizer=processor)
    pixels = AutoImageProcessor.from_pretrained(out)(images=[torch.zeros(8, 8, 3).numpy()],
                                                     return_tensors="pt")
    with torch.no_grad():
        got = AutoModelForImageClassification.from_pretrained(out).eval()(**pixels).logits
    assert torch.allclose(got, logits(vit, dict(pixels)), atol=1e-4)


def test_the_project_cnn_is_refused_with_nothing_written(tmp_path):
    cnn = pl.lora.apply(pl.models.vision_classifier(), pl.lora.LoraConfig(r=2, targets=["conv1"]))
    with pytest.raises(TypeError, match=r"not a transformers model.*pl.save_adapter"):
        pl.export_merged(cnn, tmp_path / "exp")
    assert listing(tmp_path) == []


def test_the_checks_cost(tmp_path):
    """The check (reload + two forward passes) costs well under a second on the tiny BERT;
    the docstring states the measured numbers for the embedded models."""
    model, tok = lora_bert()
    pl.export_merged(model, tmp_path / "warm", tokenizer=tok)      # imports, first-call costs
    t0 = time.perf_counter()
    pl.export_merged(model, tmp_path / "a", tokenizer=tok, check=False)
    t1 = time.perf_counter()
    pl.export_merged(model, tmp_path / "b", tokenizer=tok)
    t2 = time.perf_counter()
    cost = (t2 - t1) - (t1 - t0)
    print(f"export {t1 - t0:.3f} s, with the check {t2 - t1:.3f} s: the check {cost:.3f} s")
    assert cost < timing.budget(2.0), timing.machine_note()
    assert listing(tmp_path / "a") == listing(tmp_path / "b")

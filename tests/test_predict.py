"""pl.predict: labels (names when known) and probabilities, eval mode, no gradients, on plain,
adapted and merged models, for texts and for images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftlab as pl

TEXTS = ["the soup was cold and bland", "what a goal in the last minute",
         "the new phone has a faster chip", "not bad at all", "a dull, long film"]


def by_hand(model, tok, texts):
    """What a user would write without pl.predict."""
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    enc.pop("token_type_ids", None)
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(**enc).logits.float(), -1)


def test_predict_equals_the_hand_written_loop_and_restores_train_mode(embedded):
    model, tok = embedded
    pl.lora.apply(model, pl.lora.LoraConfig(r=4, targets=["query", "value"]))
    with torch.no_grad():                  # a trained-looking adapter: B no longer zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.train()
    preds = pl.predict(model, tok, TEXTS, batch_size=2)
    assert model.training                  # the mode it had comes back
    assert preds.probabilities.grad_fn is None and not preds.probabilities.requires_grad
    want = by_hand(model, tok, TEXTS)
    assert torch.allclose(preds.probabilities, want, atol=1e-5)
    assert preds.ids == want.argmax(-1).tolist()
    assert preds.labels == preds.ids       # no names known: ids
    assert torch.allclose(preds.probabilities.sum(-1), torch.ones(len(TEXTS)))
    assert len(preds) == 5 and preds[0]["id"] == preds.ids[0]
    one = pl.predict(model, tok, TEXTS[0])
    assert one.ids == preds.ids[:1]


def test_plain_adapted_and_merged_models(embedded):
    model, tok = embedded
    plain = pl.predict(model, tok, TEXTS)
    assert torch.allclose(plain.probabilities, by_hand(model, tok, TEXTS), atol=1e-5)
    pl.lora.apply(model, pl.lora.LoraConfig(r=4, targets=["query", "value"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    adapted = pl.predict(model, tok, TEXTS)
    assert not torch.allclose(adapted.probabilities, plain.probabilities, atol=1e-4)
    pl.lora.merge(model)
    merged = pl.predict(model, tok, TEXTS)
    assert torch.allclose(merged.probabilities, adapted.probabilities, atol=1e-4)
    assert merged.ids == adapted.ids


def test_label_names_from_the_model_or_the_call(embedded):
    model, tok = embedded
    pl.data.set_label_names(model, ["negative", "positive"])
    preds = pl.predict(model, tok, TEXTS)
    assert set(preds.labels) <= {"negative", "positive"}
    assert preds.labels == [["negative", "positive"][i] for i in preds.ids]
    row = preds[1]
    assert set(row["probabilities"]) == {"negative", "positive"}
    assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    named = pl.predict(model, tok, TEXTS, label_names=["bad", "good"])
    assert named.labels == [["bad", "good"][i] for i in named.ids]
    with pytest.raises(ValueError, match="3 label names"):
        pl.predict(model, tok, TEXTS, label_names=["a", "b", "c"])
    assert "Predictions([" in repr(preds)


def test_batch_size_does_not_change_the_answer(embedded):
    model, tok = embedded
    a = pl.predict(model, tok, TEXTS, batch_size=1)
    b = pl.predict(model, tok, TEXTS, batch_size=64)
    assert a.ids == b.ids and torch.allclose(a.probabilities, b.probabilities, atol=1e-5)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.conv(x)).mean((2, 3))))


def test_vision_inputs():
    torch.manual_seed(0)
    model = TinyCNN().train()
    images = torch.randn(7, 1, 8, 8)
    preds = pl.predict(model, images, batch_size=3)
    model.eval()
    with torch.no_grad():
        want = torch.softmax(model(images), -1)
    assert torch.allclose(preds.probabilities, want, atol=1e-6)   # dropout was off
    assert preds.probabilities.shape == (7, 3)
    assert pl.predict(model, images[0]).ids == preds.ids[:1]     # one (C, H, W) image
    assert pl.predict(model, None, list(images)).ids == preds.ids
    pl.lora.apply(model, pl.lora.LoraConfig(r=2, targets=["conv"]))
    assert pl.predict(model, images, label_names=["a", "b", "c"]).labels[0] in "abc"


def test_bad_calls_say_what_to_do(embedded):
    model, tok = embedded
    with pytest.raises(ValueError, match="no tokenizer"):
        pl.predict(model, None, TEXTS)
    with pytest.raises(ValueError, match="no inputs"):
        pl.predict(model, tok, [])
    with pytest.raises(ValueError, match="batch_size"):
        pl.predict(model, tok, TEXTS, batch_size=0)
    with pytest.raises(TypeError, match="list of texts"):
        pl.predict(model, tok, [1, 2])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        pl.predict(TinyCNN(), torch.randn(8, 8))

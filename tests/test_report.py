"""peftlab.trainable_report: counts (as Hugging Face peft counts them), rows, text and HTML."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import peftlab as pl


def test_plain_model_counts(tiny_mlp):
    rep = pl.trainable_report(tiny_mlp)
    assert rep.total == rep.trainable == 8 * 16 + 16 + 16 * 3 + 3
    assert rep.fraction == 1.0 and rep.frozen == 0 and rep.method is None
    assert [(r.name, r.type, r.total) for r in rep.rows] == [("0", "Linear", 144),
                                                              ("2", "Linear", 51)]


def test_after_lora_counts_rows_and_fraction(tiny_mlp):
    pl.lora.apply(tiny_mlp, pl.lora.LoraConfig(r=2, alpha=4, targets=["0"], modules_to_save=[]))
    rep = pl.trainable_report(tiny_mlp)
    assert rep.method == "lora"
    assert rep.trainable == 2 * (8 + 16)
    assert rep.total == 195 + 48                     # adapters are counted in total, like peft
    assert rep.fraction == pytest.approx(48 / 243)
    assert {r.name: r.trainable for r in rep.trainable_rows()} == {"0.lora_A": 16, "0.lora_B": 32}
    assert sum(r.total for r in rep.rows) == rep.total


def test_matches_peft_trainable_count(tiny_bert):
    from peft import LoraConfig, get_peft_model

    hf = get_peft_model(copy.deepcopy(tiny_bert), LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]))
    ours = pl.lora.apply(tiny_bert, pl.lora.LoraConfig(r=4, alpha=8, targets=["query", "value"]))
    assert pl.trainable_report(ours).trainable == hf.get_nb_trainable_parameters()[0]


def test_shared_parameters_counted_once(tiny_gpt2):
    assert tiny_gpt2.lm_head.weight is tiny_gpt2.transformer.wte.weight
    rep = pl.trainable_report(tiny_gpt2)
    assert rep.total == sum(p.numel() for p in tiny_gpt2.parameters())   # dedups like this
    assert rep.total == len(torch.nn.utils.parameters_to_vector(tiny_gpt2.parameters()))


def test_text_table_and_html(tiny_bert):
    pl.lora.apply(tiny_bert, pl.lora.LoraConfig(r=2, targets=["query"]))
    rep = pl.trainable_report(tiny_bert)
    text = str(rep)
    assert text.splitlines()[0] == "method: lora"
    assert "bert.encoder.layer.0.attention.self.query.lora_A" in text
    assert text.splitlines()[-1] == rep.summary()
    assert rep.summary() == (f"trainable params: {rep.trainable:,} || all params: "
                             f"{rep.total:,} || trainable%: {100 * rep.fraction:.4f}")
    assert "frozen modules" in text
    html = rep._repr_html_()
    assert html.count("<tr>") == len(rep.trainable_rows()) + 1 and "<table>" in html
    assert "classifier" in html
    assert repr(rep).startswith("TrainableReport(method='lora', trainable=") and "\n" not in repr(rep)


def test_nothing_trainable_and_empty_model():
    m = nn.Linear(3, 3).requires_grad_(False)
    rep = pl.trainable_report(m)
    assert rep.trainable == 0 and rep.fraction == 0 and "(root)" not in str(rep)
    empty = pl.trainable_report(nn.ReLU())
    assert empty.total == 0 and empty.fraction == 0.0 and empty.rows == []

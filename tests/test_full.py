import pytest
import torch

import peftlab as pl
from peftlab.core.errors import AlreadyAdaptedError


def test_modes_choose_what_trains(tiny_bert):
    pl.full.apply(tiny_bert, pl.full.FullConfig(mode="head"))
    rep = pl.trainable_report(tiny_bert)
    assert rep.trainable == 32 * 2 + 2 and rep.method == "full"


def test_bitfit_trains_biases_and_head(tiny_bert):
    pl.full.apply(tiny_bert, pl.full.FullConfig(mode="bitfit"))
    names = [n for n, p in tiny_bert.named_parameters() if p.requires_grad]
    assert all(n.endswith("bias") or n.startswith("classifier") for n in names)
    assert "classifier.weight" in names and any("attention.self.query.bias" in n for n in names)


def test_all_mode_trains_everything(tiny_bert):
    for p in tiny_bert.parameters():
        p.requires_grad_(False)
    pl.full.apply(tiny_bert, pl.full.FullConfig(mode="all"))
    assert all(p.requires_grad for p in tiny_bert.parameters())


def test_bad_mode_and_double_apply(tiny_bert):
    with pytest.raises(ValueError, match="mode"):
        pl.full.FullConfig(mode="half")
    pl.full.apply(tiny_bert, pl.full.FullConfig(mode="head"))
    with pytest.raises(AlreadyAdaptedError, match="already carries"):
        pl.full.apply(tiny_bert, pl.full.FullConfig(mode="all"))


def test_missing_head_name_leaves_model_unchanged(tiny_bert):
    before = [p.requires_grad for p in tiny_bert.parameters()]
    with pytest.raises(Exception, match="no_such_head"):
        pl.full.apply(tiny_bert, pl.full.FullConfig(mode="head", modules_to_save=["no_such_head"]))
    assert [p.requires_grad for p in tiny_bert.parameters()] == before
    assert pl.core.get_method(tiny_bert) is None


def test_head_only_adapter_round_trip(tiny_bert, tmp_path):
    from transformers import BertForSequenceClassification
    pl.full.apply(tiny_bert, pl.full.FullConfig(mode="head"))
    with torch.no_grad():
        tiny_bert.classifier.weight.add_(1.0)
    pl.save_adapter(tiny_bert, tmp_path / "a")
    torch.manual_seed(0)
    fresh = BertForSequenceClassification(tiny_bert.config).eval()
    pl.load_adapter(fresh, tmp_path / "a")
    assert torch.equal(fresh.classifier.weight, tiny_bert.classifier.weight)
    x = torch.randint(0, 100, (2, 5))
    assert torch.allclose(fresh(x).logits, tiny_bert(x).logits)

"""Interop with Hugging Face peft 0.21: same parameter counts, adapters load both ways, same logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig as HFLoraConfig
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

import peftlab as pl
from peftlab.core.errors import AdapterError
from peftlab.io.files import HF_CONFIG_FILE, WEIGHTS_FILE
from peftlab.lora import LoraConfig


def perturb(model: nn.Module, seed: int = 1, std: float = 0.05) -> None:
    """Move every trainable tensor (adapters and the head), as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


@torch.no_grad()
def logits(model, ids):
    return model.eval()(input_ids=ids).logits


def ids_for(vocab: int):
    return torch.randint(1, vocab, (3, 12), generator=torch.Generator().manual_seed(0))


def hf_config_for(cfg: LoraConfig, **kw) -> HFLoraConfig:
    targets = "all-linear" if cfg.targets == ["all-linear"] else cfg.targets  # peft: a str
    return HFLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=targets, modules_to_save=cfg.modules_to_save,
                        use_rslora=cfg.rslora, **kw)


# --- the embedded model (all-MiniLM-L6-v2 + a 2-class head) ------------------------------------

def test_same_trainable_count_as_peft_on_embedded(embedded):
    model, _ = embedded
    for cfg in (LoraConfig(r=8, alpha=16, targets=["query", "value"],
                           modules_to_save=["classifier"]),
                LoraConfig(r=4, alpha=4, targets=["all-linear"], modules_to_save=["classifier"])):
        hf = get_peft_model(copy.deepcopy(model), hf_config_for(cfg))
        hf_trainable, _ = hf.get_nb_trainable_parameters()
        assert pl.lora.count_parameters(model, cfg, include_modules_to_save=True) == hf_trainable
        ours = pl.lora.apply(copy.deepcopy(model), cfg)
        assert pl.trainable_report(ours).trainable == hf_trainable
    assert hf_trainable == 4 * (384 + 384) * 4 * 6 + 4 * (384 + 1536) * 2 * 6 + 384 * 2 + 2 + \
        4 * (384 + 384)                                     # +pooler.dense (all-linear)


def test_ours_to_peft_on_embedded(embedded, tmp_path):
    model, tok = embedded
    base = copy.deepcopy(model)
    pl.lora.apply(model, LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    perturb(model)
    enc = tok(["a fine film", "dull and long", "not bad at all"], return_tensors="pt",
              padding=True)
    with torch.no_grad():
        before = base.eval()(**enc).logits
        want = model.eval()(**enc).logits
    pl.save_adapter(model, tmp_path, format="hf-peft")
    cfg = json.loads((tmp_path / HF_CONFIG_FILE).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16
    assert cfg["modules_to_save"] == ["classifier"]
    keys = set(load_file(tmp_path / WEIGHTS_FILE))
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert "base_model.model.classifier.weight" in keys and len(keys) == 6 * 2 * 2 + 2
    hf = PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        got = hf(**enc).logits
    assert (got - want).abs().max().item() <= 1e-5
    assert (want - before).abs().max() > 1e-3          # the adapter did change the output


def test_peft_to_ours_on_embedded(embedded, tmp_path):
    model, _ = embedded
    base = copy.deepcopy(model)
    hf = get_peft_model(model, HFLoraConfig(r=4, lora_alpha=8, target_modules=["key", "dense"],
                                            modules_to_save=["classifier"]))
    perturb(hf)
    ids = ids_for(1000)
    want = logits(hf, ids)
    hf.save_pretrained(tmp_path)
    pl.load_adapter(base, tmp_path)
    assert pl.core.get_method(base) == "lora"
    assert pl.trainable_report(base).trainable == hf.get_nb_trainable_parameters()[0]
    assert (logits(base, ids) - want).abs().max().item() <= 1e-5


# --- tiny models: every layer kind, both directions --------------------------------------------

@pytest.mark.parametrize("cfg", [
    LoraConfig(r=4, alpha=8, targets=["query", "value", "word_embeddings"]),
    LoraConfig(r=2, alpha=3, targets=["re:.*attention\\.output\\.dense"], rslora=True,
               modules_to_save=["classifier", "pooler"]),
])
def test_bert_round_trips_both_ways(tiny_bert, tmp_path, cfg):
    ids = ids_for(100)
    base = copy.deepcopy(tiny_bert)
    ours = pl.lora.apply(copy.deepcopy(tiny_bert), cfg)
    perturb(ours)
    pl.save_adapter(ours, tmp_path / "ours", format="hf-peft")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours", is_trainable=True)
    torch.testing.assert_close(logits(theirs, ids), logits(ours, ids), atol=1e-5, rtol=0)
    # and back: peft saves, we load
    perturb(theirs, seed=2)
    theirs.save_pretrained(tmp_path / "theirs")
    back = pl.load_adapter(copy.deepcopy(base), tmp_path / "theirs")
    torch.testing.assert_close(logits(back, ids), logits(theirs, ids), atol=1e-5, rtol=0)
    assert pl.trainable_report(back).trainable == theirs.get_nb_trainable_parameters()[0]


def test_gpt2_conv1d_round_trip(tiny_gpt2, tmp_path):
    ids = ids_for(100)
    base = copy.deepcopy(tiny_gpt2)
    ours = pl.lora.apply(tiny_gpt2, LoraConfig(r=4, alpha=8, targets="all-linear"))
    perturb(ours)
    pl.save_adapter(ours, tmp_path / "ours", format="hf-peft")
    assert json.loads((tmp_path / "ours" / HF_CONFIG_FILE).read_text())["fan_in_fan_out"]
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    torch.testing.assert_close(logits(theirs, ids), logits(ours, ids), atol=1e-5, rtol=0)
    theirs.save_pretrained(tmp_path / "theirs")
    back = pl.load_adapter(copy.deepcopy(base), tmp_path / "theirs")
    torch.testing.assert_close(logits(back, ids), logits(ours, ids), atol=1e-5, rtol=0)


def test_conv2d_round_trip(tmp_path):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.randn(2, 3, 6, 6)
    ours = pl.lora.apply(copy.deepcopy(base), LoraConfig(r=2, alpha=4, targets=[nn.Conv2d]))
    perturb(ours)
    pl.save_adapter(ours, tmp_path, format="hf-peft")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=0)


def test_hf_save_with_task_type_seq_cls(tiny_bert, tmp_path):
    """task_type=SEQ_CLS makes peft add the classifier to modules_to_save by itself."""
    ids = ids_for(100)
    base = copy.deepcopy(tiny_bert)
    hf = get_peft_model(tiny_bert, HFLoraConfig(r=2, lora_alpha=2, target_modules=["query"],
                                                task_type="SEQ_CLS"))
    perturb(hf)
    hf.save_pretrained(tmp_path)
    ours = pl.load_adapter(base, tmp_path)
    assert pl.core.get_config(ours).modules_to_save == ["classifier"]
    torch.testing.assert_close(logits(ours, ids), logits(hf, ids), atol=1e-5, rtol=0)


# --- what we refuse, clearly -------------------------------------------------------------------

def _hf_folder(tiny_bert, tmp_path, **kw):
    hf = get_peft_model(copy.deepcopy(tiny_bert), HFLoraConfig(target_modules=["query"], **kw))
    hf.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("kw, match", [
    ({"r": 4, "lora_bias": True}, "lora_bias=True"),    # (use_dora: DoRA, tests/test_dora.py)
    ({"r": 4, "bias": "lora_only"}, "bias='lora_only'"),
])
def test_unsupported_hf_features_raise(tiny_bert, tmp_path, kw, match):
    folder = _hf_folder(tiny_bert, tmp_path, **kw)
    snap = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    with pytest.raises(AdapterError, match=match):
        pl.load_adapter(tiny_bert, folder)
    assert all(torch.equal(v, tiny_bert.state_dict()[k]) for k, v in snap.items())


def test_peft_rank_and_alpha_pattern_load_with_the_same_logits(tiny_bert, tmp_path):
    """peft's rank_pattern / alpha_pattern (suffix-matched keys) were refused; now each layer
    gets its own rank and alpha, and both directions give peft's logits."""
    hf = get_peft_model(copy.deepcopy(tiny_bert), HFLoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"],
        rank_pattern={"layer.1.attention.self.query": 2}, alpha_pattern={"value": 3}))
    perturb(hf)
    hf.save_pretrained(tmp_path / "hf")
    ids = ids_for(100)
    ours = pl.load_adapter(copy.deepcopy(tiny_bert), tmp_path / "hf")
    layers = pl.lora.lora_layers(ours)
    assert layers["bert.encoder.layer.1.attention.self.query"].r == 2
    assert layers["bert.encoder.layer.0.attention.self.value"].scale == 3 / 4
    torch.testing.assert_close(logits(ours, ids), logits(hf, ids), atol=1e-5, rtol=0)
    pl.save_adapter(ours, tmp_path / "ours", format="hf-peft")
    back = PeftModel.from_pretrained(copy.deepcopy(tiny_bert), tmp_path / "ours")
    torch.testing.assert_close(logits(back, ids), logits(hf, ids), atol=1e-5, rtol=0)


def test_bad_hf_files(tiny_bert, tmp_path):
    folder = _hf_folder(tiny_bert, tmp_path, r=2)
    cfg = json.loads((folder / HF_CONFIG_FILE).read_text())
    (folder / HF_CONFIG_FILE).write_text(json.dumps({**cfg, "peft_type": "LOHA"}))  # not ours
    with pytest.raises(AdapterError, match="peft_type 'LOHA'"):
        pl.load_adapter(tiny_bert, folder)
    (folder / HF_CONFIG_FILE).write_text(json.dumps(cfg))
    t = load_file(folder / WEIGHTS_FILE)
    save_file({k.replace("base_model.model.", ""): v for k, v in t.items()}, folder / WEIGHTS_FILE)
    with pytest.raises(AdapterError, match="does not start with 'base_model.model.'"):
        pl.load_adapter(tiny_bert, folder)
    save_file({"base_model.model.classifier.weight": torch.zeros(2, 32)}, folder / WEIGHTS_FILE)
    with pytest.raises(AdapterError, match="no lora_A"):
        pl.load_adapter(tiny_bert, folder)
    assert pl.core.get_method(tiny_bert) is None


def test_export_of_a_method_without_hf_counterpart(tiny_bert, tmp_path):
    pl.full.apply(tiny_bert, pl.full.FullConfig(mode="head"))
    with pytest.raises(AdapterError, match="no Hugging Face PEFT counterpart"):
        pl.save_adapter(tiny_bert, tmp_path, format="hf-peft")
    assert not any(tmp_path.iterdir())


def test_dispatcher_keys_and_prefix_helpers():
    from peftlab.io import hf_peft

    assert hf_peft.PEFT_TYPES["LORA"] == "lora"
    t = {"a.lora_A.weight": torch.zeros(1)}
    assert hf_peft.strip_prefix(hf_peft.add_prefix(t)).keys() == t.keys()
    with pytest.raises(AdapterError, match="must hold a JSON object"):
        hf_peft.import_([1], {})

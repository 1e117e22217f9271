"""DoRA (peftlab/lora/dora.py) against Hugging Face peft 0.21 (LoraConfig(use_dora=True)): the
same weights give the same logits and the same gradients, both ways through the HF format; and
its invariants: it starts at the base model, merge equals unmerged, unload gives the base back
bit for bit, save/load round-trips, a training step moves only the adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from chat_fixtures import tiny_chat_model
from peft import LoraConfig as HFLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

import peftlab as pl
from peftlab.core.errors import TargetError

TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj", "down_proj"]}


def bert():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def build(arch):
    return bert() if arch == "bert" else tiny_chat_model()[0]


def ids(vocab=100):
    return torch.randint(1, vocab, (3, 10), generator=torch.Generator().manual_seed(0))


def perturb(model, seed=1, std=0.2):
    """Move every trainable tensor, as training would (B away from zero, m away from ||W||)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def ours(base, arch, variant="dora", **kw):
    cfg = pl.lora.LoraConfig(r=4, alpha=8, targets=TARGETS[arch], modules_to_save=[],
                             variant=variant, **kw)
    return pl.lora.apply(copy.deepcopy(base), cfg)


def loss_of(model, x):
    out = model(input_ids=x).logits
    return out.float().pow(2).mean()


def hf_name(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".default", "")


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_same_logits_and_gradients_as_peft(arch, tmp_path):
    base = build(arch)
    x = ids()
    model = ours(base, arch)
    perturb(model)
    pl.save_adapter(model, tmp_path, format="hf-peft")
    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    assert hf.peft_config["default"].use_dora
    with torch.no_grad():
        want, got = model(input_ids=x).logits, hf(input_ids=x).logits
    assert (want - got).abs().max() <= 1e-5
    assert (want - base(input_ids=x).logits).abs().max() > 1e-4      # DoRA did something

    loss_of(model, x).backward()
    loss_of(hf, x).backward()
    mine = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    theirs = {hf_name(n): p.grad for n, p in hf.named_parameters() if p.requires_grad}
    assert mine.keys() == theirs.keys() and any("lora_magnitude_vector" in n for n in mine)
    for n, grad in mine.items():
        torch.testing.assert_close(grad, theirs[n], atol=1e-6, rtol=1e-4, msg=n)


def test_a_peft_dora_adapter_loads_with_the_same_logits(tmp_path):
    base = bert()
    hf = get_peft_model(copy.deepcopy(base), HFLoraConfig(r=4, lora_alpha=8, use_dora=True,
                                                          target_modules=["query", "value"]))
    perturb(hf)
    hf.save_pretrained(tmp_path)
    loaded = pl.load_adapter(copy.deepcopy(base), tmp_path)
    assert pl.core.get_config(loaded).variant == "dora"
    with torch.no_grad():
        diff = (loaded(input_ids=ids()).logits - hf(input_ids=ids()).logits).abs().max()
    assert diff <= 1e-5


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_starts_at_base_merges_exactly_and_unloads_bit_for_bit(arch, tmp_path):
    base = build(arch)
    x = ids()
    want = base(input_ids=x).logits
    model = ours(base, arch)
    m = model.get_submodule(pl.core.get_targets(model)[0]).lora_magnitude_vector.weight
    w = model.get_submodule(pl.core.get_targets(model)[0]).base_layer.weight
    torch.testing.assert_close(m, torch.linalg.norm(w, dim=1))       # m = ||W|| per row
    assert torch.equal(model(input_ids=x).logits, want) or \
        (model(input_ids=x).logits - want).abs().max() <= 1e-6        # B = 0: the base model
    perturb(model)
    with torch.no_grad():
        unmerged = model(input_ids=x).logits
        pl.lora.merge(model)
        assert (model(input_ids=x).logits - unmerged).abs().max() <= 1e-5
        pl.lora.unmerge(model)
        assert (model(input_ids=x).logits - unmerged).abs().max() <= 1e-5

    pl.save_adapter(model, tmp_path / "a")
    back = pl.load_adapter(copy.deepcopy(base), tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(back(input_ids=x).logits, unmerged)

    pl.lora.unload(back)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                 base.state_dict().values()))
    merged = pl.lora.unload(model, merge=True)           # a plain model, DoRA baked in
    assert not pl.lora.lora_layers(merged)
    with torch.no_grad():
        assert (merged(input_ids=x).logits - unmerged).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_a_training_step_moves_only_the_adapter(arch):
    base = build(arch)
    model = ours(base, arch)
    frozen = {n: t.clone() for n, t in model.state_dict().items() if ".lora_" not in n}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        loss_of(model, ids()).backward()
        opt.step()
        opt.zero_grad()
    layer = model.get_submodule(pl.core.get_targets(model)[0])
    w = layer.base_layer.weight
    assert not torch.equal(layer.lora_magnitude_vector.weight, torch.linalg.norm(w, dim=1))
    after = model.state_dict()
    assert all(torch.equal(after[n], t) for n, t in frozen.items())


def test_trainable_count_equals_peft():
    base = bert()
    cfg = pl.lora.LoraConfig(r=4, alpha=8, targets=["query", "value"], modules_to_save=[],
                             variant="dora")
    hf = get_peft_model(copy.deepcopy(base), HFLoraConfig(r=4, lora_alpha=8, use_dora=True,
                                                          target_modules=["query", "value"]))
    n = hf.get_nb_trainable_parameters()[0]
    assert pl.lora.count_parameters(base, cfg) == n == 4 * (4 * 64 + 32)
    assert pl.trainable_report(pl.lora.apply(copy.deepcopy(base), cfg)).trainable == n


def test_bad_targets_are_refused_by_name_before_anything_changes():
    base = bert()
    model = copy.deepcopy(base)
    with pytest.raises(TargetError, match="DoRA adapts linear layers.*word_embeddings"):
        pl.lora.apply(model, pl.lora.LoraConfig(targets=["word_embeddings"], variant="dora"))
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight[3].zero_()
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TargetError, match=r"layer\.0\.attention\.self\.query: output row\(s\) "
                                          r"\[3\].*all zeros"):
        pl.lora.apply(model, pl.lora.LoraConfig(targets=["query"], variant="dora"))
    assert pl.core.get_method(model) is None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshot.items())
    assert not any(isinstance(m, pl.lora.LoraLayer) for m in model.modules())
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, nn.Linear)

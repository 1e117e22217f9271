"""IA3 (peftlab/ia3/) against Hugging Face peft 0.21's IA3: the same default layers per model
type, the same vectors give the same logits and gradients, adapters both ways through the HF
format; its invariants (ones change nothing, merge equals unmerged, unload gives the base back
bit for bit, save/load), a training step on tiny BERT, Llama and GPT-2, and the errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from chat_fixtures import tiny_chat_model
from peft import IA3Config as HFIA3Config
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from test_dora import bert, hf_name, ids, loss_of, perturb
from torch import nn

import peftlab as pl
from peftlab.core.errors import TargetError


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=64)).eval()


def build(arch):
    return {"bert": bert, "llama": lambda: tiny_chat_model()[0], "gpt2": gpt2}[arch]()


ARCHS = ["bert", "llama", "gpt2"]


def ours(base):
    return pl.ia3.apply(copy.deepcopy(base), pl.ia3.IA3Config(modules_to_save=[]))


@pytest.mark.parametrize("arch", ARCHS)
def test_same_layers_logits_and_gradients_as_peft(arch, tmp_path):
    base = build(arch)
    x = ids()
    model = ours(base)
    hf0 = get_peft_model(copy.deepcopy(base), HFIA3Config())        # peft's defaults
    assert sorted(pl.core.get_targets(model)) == sorted(
        hf_name(n) for n, m in hf0.named_modules() if hasattr(m, "ia3_l") and "base_model"
        in n and not n.endswith("ia3_l"))
    with torch.no_grad():                                           # ones: the base model
        assert torch.equal(model(input_ids=x).logits, base(input_ids=x).logits)
    perturb(model, std=0.5)
    pl.save_adapter(model, tmp_path, format="hf-peft")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "IA3"
    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    with torch.no_grad():
        want, got = model(input_ids=x).logits, hf(input_ids=x).logits
    assert (want - got).abs().max() <= 1e-5
    assert (want - base(input_ids=x).logits).abs().max() > 2e-5     # IA3 did something
    loss_of(model, x).backward()
    loss_of(hf, x).backward()
    mine = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    theirs = {hf_name(n): p.grad for n, p in hf.named_parameters() if p.requires_grad}
    assert mine.keys() == theirs.keys()
    for n, grad in mine.items():
        torch.testing.assert_close(grad, theirs[n], atol=1e-6, rtol=1e-4, msg=n)


def test_a_peft_ia3_adapter_loads_with_the_same_logits(tmp_path):
    base = bert()
    hf = get_peft_model(copy.deepcopy(base), HFIA3Config(task_type="SEQ_CLS"))  # + the head
    perturb(hf)
    hf.save_pretrained(tmp_path)
    assert any(k.endswith("ia3_l") for k in load_file(tmp_path / "adapter_model.safetensors"))
    loaded = pl.load_adapter(copy.deepcopy(base), tmp_path)
    assert pl.core.get_config(loaded).modules_to_save == ["classifier"]
    with torch.no_grad():
        diff = (loaded(input_ids=ids()).logits - hf(input_ids=ids()).logits).abs().max()
    assert diff <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_unload_and_save_load(arch, tmp_path):
    base = build(arch)
    x = ids()
    model = ours(base)
    perturb(model, std=0.5)
    with torch.no_grad():
        unmerged = model(input_ids=x).logits
        pl.ia3.merge(model)
        assert (model(input_ids=x).logits - unmerged).abs().max() <= 1e-5
        pl.ia3.unmerge(model)
        assert (model(input_ids=x).logits - unmerged).abs().max() <= 1e-5
    pl.save_adapter(model, tmp_path)
    back = pl.load_adapter(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        assert torch.equal(back(input_ids=x).logits, unmerged)
    pl.ia3.unload(back)
    assert back.state_dict().keys() == base.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                 base.state_dict().values()))
    merged = pl.ia3.unload(model, merge=True)
    assert not pl.ia3.ia3_layers(merged)
    with torch.no_grad():
        assert (merged(input_ids=x).logits - unmerged).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_a_training_step_moves_only_the_vectors(arch):
    model = ours(build(arch))
    frozen = {n: t.clone() for n, t in model.state_dict().items() if not n.endswith("ia3_l")}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        loss_of(model, ids()).backward()
        opt.step()
        opt.zero_grad()
    assert {n.rsplit(".", 1)[1] for n, p in model.named_parameters() if p.requires_grad} == \
        {"ia3_l"}
    assert any(not torch.equal(m.ia3_l, torch.ones_like(m.ia3_l))
               for m in pl.ia3.ia3_layers(model).values())
    after = model.state_dict()
    assert all(torch.equal(after[n], t) for n, t in frozen.items())


def test_the_feedforward_vector_scales_the_input_the_others_the_output():
    model = ours(tiny_chat_model()[0])
    layers = pl.ia3.ia3_layers(model)
    down = layers["model.layers.0.mlp.down_proj"]
    assert down.feedforward and down.ia3_l.shape == (1, 64)
    assert layers["model.layers.0.self_attn.v_proj"].ia3_l.shape == (16, 1)   # GQA: 2 x 8
    assert pl.ia3.count_parameters(tiny_chat_model()[0], pl.ia3.IA3Config()) == \
        pl.trainable_report(model).trainable == 2 * (16 + 16 + 64)


def test_bad_configs_are_refused_by_name_before_anything_changes():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(TargetError, match="no default targets for Sequential.*Name them"):
        pl.ia3.apply(mlp, pl.ia3.IA3Config())
    base = bert()
    model = copy.deepcopy(base)
    with pytest.raises(TargetError, match="Target 'k_proj' matched no module"):
        pl.ia3.apply(model, pl.ia3.IA3Config(targets=["k_proj"]))
    with pytest.raises(TargetError, match="IA3 scales linear layers.*word_embeddings"):
        pl.ia3.apply(model, pl.ia3.IA3Config(targets=["key", "word_embeddings"]))
    with pytest.raises(TargetError, match="feedforward module 'intermediate.dense' is not among"):
        pl.ia3.apply(model, pl.ia3.IA3Config(targets=["key"],
                                             feedforward_modules=["intermediate.dense"]))
    assert pl.core.get_method(model) is None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 base.state_dict().values()))
    assert not any(isinstance(m, pl.ia3.IA3Linear) for m in model.modules())

"""VeRA (peftlab/lora/vera.py) against Hugging Face peft 0.21 (VeraConfig, peft_type VERA): the
same shared random pair (drawn from the same seed), the same logits and gradients, adapters
both ways through the HF format; its invariants (b = 0 starts at the base model, merge equals
unmerged, unload gives the base back bit for bit, save/load with and without the projections),
a training step, and the errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from chat_fixtures import tiny_chat_model
from peft import PeftModel, get_peft_model
from peft import VeraConfig as HFVeraConfig
from safetensors.torch import load_file
from test_dora import bert, hf_name, ids, loss_of, perturb

import peftlab as pl
from peftlab.core.errors import TargetError

TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj", "down_proj"]}  # 3 shapes


def build(arch):
    return bert() if arch == "bert" else tiny_chat_model()[0]


def ours(base, arch, **kw):
    cfg = pl.lora.VeraConfig(r=8, targets=TARGETS[arch], modules_to_save=[], **kw)
    return pl.lora.apply(copy.deepcopy(base), cfg)


def hf_vera(base, arch, **kw):
    return get_peft_model(copy.deepcopy(base), HFVeraConfig(r=8, target_modules=TARGETS[arch],
                                                            **kw))


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_the_same_random_pair_as_peft_from_the_same_seed(arch):
    base = build(arch)
    model, hf = ours(base, arch, projection_seed=7), hf_vera(base, arch, projection_prng_key=7)
    shared = next(m for m in model.modules() if isinstance(m, pl.lora.vera.VeraProjections))
    assert torch.equal(shared.vera_A, hf.base_model.vera_A["default"])
    assert torch.equal(shared.vera_B, hf.base_model.vera_B["default"])
    with torch.no_grad():                                   # both start at the base model
        assert torch.equal(model(input_ids=ids()).logits, base(input_ids=ids()).logits)
    assert pl.trainable_report(model).trainable == hf.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_same_logits_and_gradients_as_peft(arch, tmp_path):
    base = build(arch)
    x = ids()
    model = ours(base, arch)
    perturb(model, std=1.0)
    pl.save_adapter(model, tmp_path, format="hf-peft")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "VERA" and cfg["save_projection"] is True
    assert {"base_model.vera_A", "base_model.vera_B"} <= set(load_file(tmp_path /
                                                                       "adapter_model.safetensors"))
    hf = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    with torch.no_grad():
        want, got = model(input_ids=x).logits, hf(input_ids=x).logits
    assert (want - got).abs().max() <= 1e-5
    assert (want - base(input_ids=x).logits).abs().max() > 1e-4          # VeRA did something
    loss_of(model, x).backward()
    loss_of(hf, x).backward()
    mine = {n.replace("lora_lambda", "vera_lambda"): p.grad
            for n, p in model.named_parameters() if p.requires_grad}
    theirs = {hf_name(n): p.grad for n, p in hf.named_parameters() if p.requires_grad}
    assert mine.keys() == theirs.keys()
    for n, grad in mine.items():
        torch.testing.assert_close(grad, theirs[n], atol=1e-6, rtol=1e-4, msg=n)


@pytest.mark.parametrize("save_projection", [True, False])
def test_a_peft_vera_adapter_loads_with_the_same_logits(save_projection, tmp_path):
    base = tiny_chat_model()[0]
    hf = hf_vera(base, "llama", save_projection=save_projection, projection_prng_key=3)
    perturb(hf)
    hf.save_pretrained(tmp_path)
    loaded = pl.load_adapter(copy.deepcopy(base), tmp_path)
    cfg = pl.core.get_config(loaded)
    assert (cfg.variant, cfg.projection_seed, cfg.save_projection) == ("vera", 3, save_projection)
    with torch.no_grad():
        diff = (loaded(input_ids=ids()).logits - hf(input_ids=ids()).logits).abs().max()
    assert diff <= 1e-5


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_merge_unload_and_save_load(arch, tmp_path):
    base = build(arch)
    x = ids()
    model = ours(base, arch)
    perturb(model)
    with torch.no_grad():
        unmerged = model(input_ids=x).logits
        pl.lora.merge(model)
        assert (model(input_ids=x).logits - unmerged).abs().max() <= 1e-5
        pl.lora.unmerge(model)
        assert (model(input_ids=x).logits - unmerged).abs().max() <= 1e-5
    for save in (True, False):                      # with the pair, or only its seed
        m = ours(base, arch, save_projection=save)
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(dict(model.named_parameters())[n])
        pl.save_adapter(m, tmp_path / str(save))
        keys = set(load_file(tmp_path / str(save) / "adapter_model.safetensors"))
        assert any("lora_vera.vera_A" in k for k in keys) == save
        back = pl.load_adapter(copy.deepcopy(base), tmp_path / str(save))
        with torch.no_grad():
            assert torch.equal(back(input_ids=x).logits, unmerged)
    pl.lora.unload(back)
    assert back.state_dict().keys() == base.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                 base.state_dict().values()))


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_a_training_step_moves_only_the_vectors(arch):
    model = ours(build(arch), arch)
    frozen = {n: t.clone() for n, t in model.state_dict().items() if ".lora_lambda" not in n}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        loss_of(model, ids()).backward()
        opt.step()
        opt.zero_grad()
    assert sorted({n.rsplit(".", 1)[1] for n, p in model.named_parameters()
                   if p.requires_grad}) == ["lora_lambda_b", "lora_lambda_d"]
    b = model.get_submodule(pl.core.get_targets(model)[0]).lora_lambda_b
    assert b.abs().sum() > 0
    after = model.state_dict()
    assert all(torch.equal(after[n], t) for n, t in frozen.items())


def test_lora_config_variant_vera_is_the_same_with_defaults():
    base = bert()
    a = pl.lora.apply(copy.deepcopy(base), pl.lora.LoraConfig(r=8, targets=["query"],
                                                              variant="vera"))
    b = ours(base, "bert")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if "lora_vera" in k)


def test_bad_configs_are_refused_by_name_before_anything_changes():
    base = bert()
    model = copy.deepcopy(base)
    with pytest.raises(TargetError, match="VeRA adapts linear layers.*word_embeddings"):
        pl.lora.apply(model, pl.lora.VeraConfig(targets=["word_embeddings"]))
    with pytest.raises(ValueError, match="same rank"):
        pl.lora.apply(model, pl.lora.VeraConfig(r=4, targets=["query"],
                                                rank_pattern={"layer.0.attention.self.query": 2}))
    with pytest.raises(ValueError, match="VeraConfig is the VeRA variant"):
        pl.lora.VeraConfig(variant="dora")
    assert pl.core.get_method(model) is None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 base.state_dict().values()))


def test_the_default_rank_256_exceeds_a_tiny_layer_as_in_peft():
    base = bert()                                        # 32 wide: LoRA's r would stop at 32
    model = pl.lora.apply(copy.deepcopy(base), pl.lora.VeraConfig(modules_to_save=[]))
    hf = get_peft_model(copy.deepcopy(base), HFVeraConfig(target_modules=["query", "value"]))
    assert pl.trainable_report(model).trainable == hf.get_nb_trainable_parameters()[0] \
        == 4 * (256 + 32)

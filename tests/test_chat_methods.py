"""Every registered method on a chat model: applies, trains with fit on answer-only batches,
round-trips save/load, unloads to the base bit for bit; BitFit says the model has no biases.

The tiny Llama causal LM (tests/chat_fixtures.py: GQA, RoPE, RMSNorm, a tied head, no biases)
with the real SmolLM2 tokenizer and template; the real model is checked against Hugging Face
PEFT in tests/test_chat_model.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from chat_fixtures import smollm2_tokenizer, tiny_chat_model

import peftlab as pl
from peftlab.chat import ChatSplit

CONVS = [[{"role": "user", "content": f"Repeat the word {w}."},
          {"role": "assistant", "content": w}] for w in ("apple", "river", "stone", "cloud")]


def _split():
    return ChatSplit(CONVS * 2, "train")


def _loss(model, batch):
    return pl.train.loss_fn(model, batch)


def configure(name: str, model, tok):
    """Apply method `name` to the causal LM `model` with a small config."""
    if name == "lora":
        return pl.lora.apply(model, pl.lora.LoraConfig(r=2, alpha=4, targets="all-linear"))
    if name == "adalora":
        return pl.adalora.apply(model, pl.adalora.AdaLoraConfig(
            init_r=4, target_r=2, targets=["q_proj", "v_proj"], total_steps=2, tinit=0, tfinal=1))
    if name == "selection":
        loader = _split().loader(tok, batch_size=4)
        return pl.selection.apply(model, pl.selection.SelectionConfig(fraction=0.01),
                                  batches=list(loader), loss_fn=_loss)
    if name == "prefix":
        return pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=3))
    if name == "prompt":
        return pl.prompt.apply(model, pl.prompt.PromptConfig(num_virtual_tokens=3, init="normal"))
    if name == "full":
        return pl.full.apply(model, pl.full.FullConfig(mode="all"))
    extra = EXTRA.get(name)
    if extra is None:
        raise KeyError(f"tests/test_chat_methods.py has no small config for method {name!r}: "
                       f"add one to EXTRA.")
    return extra(model, tok)


EXTRA: dict = {       # name -> apply(model, tok) for the methods of the third edition
    # keep_base: the original float weights kept aside, so unload gives them back bit for bit
    "qlora": lambda m, tok: pl.qlora.apply(m, pl.qlora.QLoraConfig(
        r=2, alpha=4, targets="all-linear", keep_base=True)),
    "ia3": lambda m, tok: pl.ia3.apply(m, pl.ia3.IA3Config()),
    "bottleneck": lambda m, tok: pl.bottleneck.apply(m, pl.bottleneck.BottleneckConfig(
        bottleneck_size=4)),
}


@torch.no_grad()
def _logits(model, batch):
    return pl.train.forward(model, batch)[0]


@pytest.mark.parametrize("name", pl.core.registry.names())
def test_every_method_trains_and_round_trips_on_a_chat_model(name, tmp_path):
    tok = smollm2_tokenizer()
    base, _ = tiny_chat_model()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    probe = next(iter(_split().loader(tok, batch_size=4)))
    model = configure(name, copy.deepcopy(base), tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = pl.train.fit(model, _split(), tokenizer=tok, max_steps=2, batch_size=4, lr=1e-2,
                          progress=False)
    assert len(result.history) == 2 and all(h["loss"] == h["loss"] for h in result.history)
    moved = [n for n, p in model.named_parameters() if p.requires_grad
             and not torch.equal(p, before[n])]
    assert moved, f"{name}: training moved no trainable parameter"
    want = _logits(model, probe)
    if name == "full":
        return                              # the whole model is the result; nothing to load
    pl.save_adapter(model, tmp_path / name)
    loaded = pl.load_adapter(copy.deepcopy(base), tmp_path / name)
    torch.testing.assert_close(_logits(loaded, probe), want, atol=0, rtol=0)
    getattr(pl, name).unload(loaded)
    now = loaded.state_dict()
    assert now.keys() == base_state.keys()
    assert all(torch.equal(now[k], base_state[k]) for k in base_state)


def test_bitfit_says_the_model_has_no_biases():
    model, _ = tiny_chat_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no biases"):
        pl.full.apply(model, pl.full.FullConfig(mode="bitfit"))
    assert pl.core.get_method(model) is None
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

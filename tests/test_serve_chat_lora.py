"""Stacked per-row LoRA (peftlab/serve/chat_lora.py): a mixed batch through every adapter's
stacked A and B computes what pl.lora.route computes (logits within 1e-5, prefill and decoding
steps), base rows exactly the base; a replaced adapter is used once invalidate() ran; models it
does not cover (another variant) fall back to pl.lora.route."""

from __future__ import annotations

import pytest
import torch
from chat_fixtures import smollm2_tokenizer
from serve_chat_fixtures import PROMPTS, base_model, messages, save_adapters, with_adapters

import peftlab as pl
from peftlab.chat import ChatTemplate
from peftlab.serve.chat_batch import Batch
from peftlab.serve.chat_lora import StackedLora


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return save_adapters(tmp_path_factory.mktemp("stacked_adapters"))


@pytest.fixture(scope="module")
def prompts(tok):
    return [ChatTemplate(tok).prompt_ids(messages(p)) for p in PROMPTS]


def _steps(model, routing, prompts, pad, n=4):
    """Every step's logits of a greedy batch: prefill, then n steps."""
    out = []
    with routing:
        batch = Batch.prefill(model, prompts, pad)
        for _ in range(n):
            out.append(batch.logits.clone())
            batch.step(model, batch.logits.argmax(-1))
    return torch.stack(out)


@torch.no_grad()
def test_a_mixed_batch_stacked_computes_what_route_computes(paths, tok, prompts):
    model = with_adapters(paths, ["a", "b", "c"])
    stacked = StackedLora(model)
    names = ["a", None, "b", "c", "a"]
    want = _steps(model, pl.lora.route(model, names), prompts, tok.pad_token_id)
    got = _steps(model, stacked.route(names), prompts, tok.pad_token_id)
    assert stacked.usable and len(stacked.plan) == len(pl.lora.lora_layers(model))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not any("forward" in vars(m) for m in pl.lora.lora_layers(model).values())
    base = base_model().eval()                   # rows of the base only: the base, exactly
    plain = _steps(base, torch.no_grad(), prompts[:2], tok.pad_token_id)
    assert torch.equal(_steps(model, stacked.route([None, None]), prompts[:2],
                              tok.pad_token_id), plain)
    with pytest.raises(KeyError, match="nope"), stacked.route(["a", "nope"]):
        pass
    with pytest.raises(ValueError, match="one adapter name per input"), \
            stacked.route(["a", "b"]):
        Batch.prefill(model, prompts[:3], tok.pad_token_id)


@torch.no_grad()
def test_a_replaced_adapter_is_used_after_invalidate(paths, tok, prompts):
    model = with_adapters(paths, ["a", "b"])
    stacked = StackedLora(model)
    with stacked.route(["b"]):
        Batch.prefill(model, prompts[:1], tok.pad_token_id)         # stacked copies made
    pl.load_adapter(model, paths["c"], name="b")                     # "b" is now c's weights
    stacked.invalidate()
    got = _steps(model, stacked.route(["b"]), prompts[:1], tok.pad_token_id)
    ref = with_adapters(paths, ["c"])
    want = _steps(ref, pl.lora.route(ref, ["c"]), prompts[:1], tok.pad_token_id)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@torch.no_grad()
def test_other_variants_fall_back_to_route(tok, prompts):
    model = pl.lora.apply(base_model(), pl.lora.LoraConfig(r=4, targets="all-linear",
                                                           variant="dora")).eval()
    stacked = StackedLora(model)
    want = _steps(model, pl.lora.route(model, ["default", None]), prompts[:2], tok.pad_token_id)
    got = _steps(model, stacked.route(["default", None]), prompts[:2], tok.pad_token_id)
    assert not stacked.usable and torch.equal(got, want)
    plain = base_model().eval()
    with StackedLora(plain).route([None]):          # no LoRA at all: nothing to route
        Batch.prefill(plain, prompts[:1], tok.pad_token_id)

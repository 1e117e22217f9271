"""TokenProbs without a browser, on the tiny chat model (random weights, the real tokenizer):
its numbers are the model's own softmax at the answer positions, with and without the adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from chat_fixtures import tiny_chat_model

import peftlab as pl
from peftlab.widgets.token_probs import TokenProbs, show_token

PROMPT = "Extract the name, city and day: Anna flies to Oslo on Friday."
ANSWER = "name=Anna; city=Oslo; day=Friday"


@pytest.fixture(scope="module")
def adapted():
    """(base copy, LoRA model with a non-zero update, tokenizer)."""
    base, tok = tiny_chat_model()
    model = copy.deepcopy(base)
    pl.lora.apply(model, pl.lora.LoraConfig(r=2, alpha=4, targets="all-linear"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)                  # B = 0 at init: make the adapter do something
    return base, model, tok


def _answer_logprobs(model, tok, prompt, answer):
    """log p of each supervised token, from a plain forward pass (the reference)."""
    ids, sup = pl.chat.ChatTemplate(tok).encode([{"role": "user", "content": prompt},
                                                 {"role": "assistant", "content": answer}])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    return [float(logp[t - 1, ids[t]]) for t, s in enumerate(sup) if s], ids, sup


def test_numbers_are_the_models_own_with_and_without_the_adapter(adapted):
    base, model, tok = adapted
    probs = TokenProbs(model, tok, PROMPT, ANSWER, top_k=3)
    want_with, _, sup = _answer_logprobs(model, tok, PROMPT, ANSWER)
    want_without, _, _ = _answer_logprobs(base, tok, PROMPT, ANSWER)
    rows = probs.rows()
    assert len(rows) == sum(sup) == len(probs.tokens)
    assert rows[-1]["token"] == "<|im_end|>"                  # the end of turn is part of it
    torch.testing.assert_close(torch.tensor(probs.logp_adapter), torch.tensor(want_with,
                               dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(probs.logp_base), torch.tensor(want_without,
                               dtype=torch.float64), atol=1e-5, rtol=0)
    assert not torch.allclose(torch.tensor(want_with), torch.tensor(want_without), atol=1e-3)
    for r in rows:
        assert len(r["top_adapter"]) == len(r["top_base"]) == 3
        ps = [p for _, p in r["top_adapter"]]
        assert ps == sorted(ps, reverse=True) and ps[0] >= r["p_adapter"] - 1e-6
    # a base model passed explicitly gives the same numbers as disable_adapters
    other = TokenProbs(model, tok, PROMPT, ANSWER, top_k=3, base=base)
    assert torch.allclose(torch.tensor(other.p_base), torch.tensor(probs.p_base), atol=1e-6)
    assert pl.lora.named.active_adapter(model) == "default"   # the adapter is back on
    la, _ = probs.log_probs()
    assert la == pytest.approx(sum(want_with), abs=1e-4)
    assert "log p(answer)" in probs.summary() and "given answer" in probs.summary()


def test_controls_move_the_picture_and_generation_fills_the_answer(adapted):
    _, model, tok = adapted
    probs = TokenProbs(model, tok, PROMPT, ANSWER, top_k=2)
    png, table = probs.image.value, probs.table.value
    probs.position.value = probs.position.max
    assert probs.image.value != png and probs.table.value != table
    assert "im_end" in probs.table.value
    assert len(probs.figure().axes) == 2
    probs.answer.value = ""                                 # the model's own greedy answer
    want = pl.generate(model, tok, PROMPT, max_new_tokens=probs.max_new_tokens)
    assert probs.generated and probs.answer_text == want
    assert "own answer" in probs.summary()
    probs.answer.value = "name=Ben"
    probs.prompt.value = "Extract the name: Ben is here."
    assert probs.answer_text == "name=Ben" and probs.position.value <= probs.position.max
    assert probs.position.max == len(probs.tokens) - 1


def test_needs_lora_or_a_base_and_shows_tokens_plainly():
    model, tok = tiny_chat_model()
    with pytest.raises(ValueError, match="base="):
        TokenProbs(model, tok, PROMPT, ANSWER)
    pl.ia3.apply(model, pl.ia3.IA3Config())
    base, _ = tiny_chat_model()
    probs = TokenProbs(model, tok, PROMPT, ANSWER, base=base)     # any method with a base
    assert probs.rows()[0]["p_base"] > 0
    assert show_token(" Oslo") == "·Oslo" and show_token("\n") == "\\n"
    assert "peftlab-tokenprobs" in probs.widget._dom_classes

"""pl.generate: left padding equals one-by-one, the KV cache equals recomputing, transformers'
greedy generate agrees, adapters per row, prompt and prefix tuning, stop rules, sampling."""

from __future__ import annotations

import copy

import pytest
import torch
from chat_fixtures import smollm2_tokenizer, tiny_chat_model

import peftlab as pl
from peftlab.chat import ChatTemplate, decode, prefill

PROMPTS = ["Hi", "What is the capital of France?", "Name three colours of the rainbow, please.",
           "2+2?", [{"role": "system", "content": "Be terse."},
                    {"role": "user", "content": "Why is the sky blue?"}]]


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


@pytest.fixture
def model():
    m, _ = tiny_chat_model(seed=1)
    return m


def _ids(tok, prompts):
    t = ChatTemplate(tok)
    return [t.prompt_ids(p) for p in prompts]


@torch.no_grad()
def test_left_padded_first_step_logits_equal_one_by_one(model, tok):
    ids = _ids(tok, PROMPTS)
    batched, *_ = prefill(model, ids, tok.pad_token_id)
    alone = torch.cat([prefill(model, [p], tok.pad_token_id)[0] for p in ids])
    assert len({len(p) for p in ids}) > 1                   # there is padding
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=0)


@torch.no_grad()
def test_batched_tokens_equal_one_by_one_ties_reported(model, tok):
    ids = _ids(tok, PROMPTS)
    stop = {tok.eos_token_id}
    batched = decode(model, ids, pad=tok.pad_token_id, stop=stop, max_new_tokens=12)
    ties = []
    for p, (got, _) in zip(ids, batched):
        (want, _), = decode(model, [p], pad=tok.pad_token_id, stop=stop, max_new_tokens=12)
        if got != want:       # allowed only where the two best logits tie to float rounding
            k = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
            logits, *_ = prefill(model, [p + want[:k]], tok.pad_token_id)
            top = logits[0].topk(2).values
            ties.append(float(top[0] - top[1]))
    print(f"{len(ties)} of {len(ids)} prompts differ, at top-2 gaps {ties}")
    assert all(gap < 1e-4 for gap in ties), ties


@torch.no_grad()
def test_greedy_equals_transformers_generate_and_the_cache_equals_recomputing(model, tok):
    p = _ids(tok, [PROMPTS[1]])[0]
    (ours, reason), = decode(model, [p], pad=tok.pad_token_id, stop=set(), max_new_tokens=10)
    assert reason == "length" and len(ours) == 10
    hf = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                        max_new_tokens=10, do_sample=False, eos_token_id=None,
                        pad_token_id=tok.pad_token_id)
    assert hf[0, len(p):].tolist() == ours
    seq = list(p)
    for _ in range(10):                                      # no cache: the whole sequence again
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert seq[len(p):] == ours


def test_generate_returns_text_in_order_and_says_why_it_stopped(model, tok):
    one = pl.generate(model, tok, PROMPTS[1], max_new_tokens=6)
    many = pl.generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=2)
    assert isinstance(one, str) and many[1] == one and len(many) == len(PROMPTS)
    d = pl.generate(model, tok, PROMPTS[:2], max_new_tokens=6, details=True)
    assert all(g.finish_reason in ("stop", "length") and len(g.tokens) <= 6 for g in d)
    assert d[0].prompt_tokens == len(_ids(tok, PROMPTS[:1])[0])
    word = tok.decode(d[1].tokens[2:3])
    if word.strip():
        cut = pl.generate(model, tok, PROMPTS[1], max_new_tokens=6, stop=[word], details=True)
        assert cut.finish_reason == "stop" and word not in cut.text


def _train_to_answer(tok, loss=None):
    model, _ = tiny_chat_model(seed=0, hidden_size=64, intermediate_size=128)
    pl.full.apply(model, pl.full.FullConfig(mode="all"))
    convs = [[{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]
             for w in ("yes", "no", "maybe")]
    pl.train.fit(model, pl.chat.ChatSplit(convs * 4, "train"), tokenizer=tok, epochs=20,
                 batch_size=4, lr=1e-2, progress=False, loss=loss)
    return pl.generate(model, tok, [c[:1] for c in convs], max_new_tokens=8, details=True)


def test_a_trained_model_learns_to_stop(tok):
    """The pad == eos trap, end to end: trained on answers whose end-of-turn token is
    supervised (though it is also the pad id), the model says the answer and stops; trained
    with the end-of-turn masked as a mask by pad id would mask it, it never stops."""
    got = _train_to_answer(tok)
    assert [(g.text, g.finish_reason) for g in got] == [("yes", "stop"), ("no", "stop"),
                                                        ("maybe", "stop")], got

    def trap(model, batch):       # labels == pad id -> -100: the end-of-turn target is gone
        return pl.train.loss_fn(model, {**batch, "labels": batch["labels"].masked_fill(
            batch["labels"] == tok.pad_token_id, -100)})
    trapped = _train_to_answer(tok, loss=trap)
    assert all(g.finish_reason == "length" for g in trapped), trapped


def test_sampling_is_seeded(model, tok):
    a = pl.generate(model, tok, PROMPTS[:2], max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    b = pl.generate(model, tok, PROMPTS[:2], max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    c = pl.generate(model, tok, PROMPTS[:2], max_new_tokens=8, temperature=1.0, top_p=0.9, seed=4)
    assert a == b and a != c


def test_adapters_per_row_equal_each_adapter_alone(model, tok, tmp_path):
    base = copy.deepcopy(model)
    for name, seed in (("a", 0), ("b", 1)):
        m = copy.deepcopy(base)
        pl.lora.apply(m, pl.lora.LoraConfig(r=4, alpha=8, targets="all-linear"))
        torch.manual_seed(seed)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        pl.save_adapter(m, tmp_path / name)
    pl.load_adapter(model, tmp_path / "a", name="a")
    pl.load_adapter(model, tmp_path / "b", name="b")
    prompts = PROMPTS[:3]
    mixed = pl.generate(model, tok, prompts, max_new_tokens=6, adapter_names=["a", "b", None])
    alone = []
    for name, p in zip(["a", "b"], prompts):
        pl.set_adapter(model, name)
        alone.append(pl.generate(model, tok, p, max_new_tokens=6))
    with pl.disable_adapters(model):
        alone.append(pl.generate(model, tok, prompts[2], max_new_tokens=6))
    assert alone[0] != alone[1] or alone[1] != alone[2]     # the adapters do differ
    assert mixed == alone
    with pytest.raises(ValueError, match="one name per conversation"):
        pl.generate(model, tok, prompts, adapter_names=["a"])


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_prompt_and_prefix_tuning_generate_like_transformers(model, tok, method):
    if method == "prompt":
        pl.prompt.apply(model, pl.prompt.PromptConfig(num_virtual_tokens=4, init="normal"))
    else:
        pl.prefix.apply(model, pl.prefix.PrefixConfig(num_virtual_tokens=4))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.5)
    ids = _ids(tok, PROMPTS[:3])
    rows = decode(model, ids, pad=tok.pad_token_id, stop=set(), max_new_tokens=6)
    for p, (ours, _) in zip(ids, rows):
        with torch.no_grad():
            hf = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p),
                                dtype=torch.long), max_new_tokens=6, do_sample=False,
                                eos_token_id=None, pad_token_id=tok.pad_token_id)
        assert hf[0, len(p):].tolist() == ours


def test_bad_arguments_are_refused(model, tok):
    with pytest.raises(ValueError, match="needs a prompt"):
        pl.generate(model, tok, [])
    with pytest.raises(ValueError, match="max_new_tokens"):
        pl.generate(model, tok, "Hi", max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        pl.generate(model, tok, "Hi", top_p=0)
    with pytest.raises(pl.chat.ChatDataError, match="ends with an assistant message"):
        pl.generate(model, tok, [[{"role": "user", "content": "a"},
                                  {"role": "assistant", "content": "b"}]])

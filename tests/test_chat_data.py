"""Instruction data: the loss mask, the pad == eos trap, readers, errors, and causal-LM fit.

All on the tiny Llama (tests/chat_fixtures.py) with the real SmolLM2 tokenizer and template.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from chat_fixtures import smollm2_tokenizer, tiny_chat_model

import peftlab as pl
from peftlab.chat import (
    DEFAULT_SYSTEM,
    ChatDataError,
    ChatSplit,
    ChatTemplate,
    collate,
    load_chat_dataset,
)

QA = [{"role": "user", "content": "What is the capital of France?"},
      {"role": "assistant", "content": "Paris."}]
MULTI = [{"role": "user", "content": "Say one."}, {"role": "assistant", "content": "One."},
         {"role": "user", "content": "Say two."}, {"role": "assistant", "content": "Two."}]


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


def _answer(tok, ids, sup):
    return tok.decode([i for i, s in zip(ids, sup) if s])


def test_prompt_tokens_carry_no_loss_and_the_end_of_turn_is_learned(tok):
    ids, sup = ChatTemplate(tok).encode(QA)
    assert _answer(tok, ids, sup) == "Paris.<|im_end|>"
    prompt = ChatTemplate(tok).prompt_ids(QA[:1])
    assert ids[:len(prompt)] == prompt and not any(sup[:len(prompt)])
    assert sup[-2] and ids[-2] == tok.eos_token_id          # the end-of-turn token is learned
    assert not sup[-1] and tok.decode(ids[-1:]) == "\n"     # the template's newline after it is not


def test_pad_equals_eos_trap(tok):
    """The pad token is the end-of-turn token: a mask built from ids (labels = ids, pad ids set
    to -100) would drop every answer's end. Ours keeps it in every row of a padded batch."""
    assert tok.pad_token_id == tok.eos_token_id
    rows = [ChatTemplate(tok).encode(c) for c in (QA, MULTI, QA)]
    batch = collate(rows, tok.pad_token_id)
    labels = batch["labels"]
    for i in range(labels.shape[0]):
        assert (labels[i] == tok.eos_token_id).any(), f"row {i} lost its end-of-turn target"
    naive = batch["input_ids"].masked_fill(batch["input_ids"] == tok.pad_token_id, -100)
    assert not (naive == tok.eos_token_id).any()            # what the trap would have done


def test_every_assistant_turn_or_only_the_last(tok):
    ids, sup = ChatTemplate(tok).encode(MULTI)
    assert _answer(tok, ids, sup) == "One.<|im_end|>Two.<|im_end|>"
    ids, sup = ChatTemplate(tok, supervise="last").encode(MULTI)
    assert _answer(tok, ids, sup) == "Two.<|im_end|>"


def test_short_system_prompt_saves_tokens_and_own_system_is_kept(tok):
    ours = len(ChatTemplate(tok).encode(QA)[0])
    default = len(ChatTemplate(tok, system=None).encode(QA)[0])
    assert default - ours == 10, (default, ours)              # the docstring's numbers
    own = [{"role": "system", "content": "Be terse."}, *QA]
    text = ChatTemplate(tok).render(own)
    assert "Be terse." in text and DEFAULT_SYSTEM not in text and "SmolLM" not in text


def test_batches_are_left_padded_with_answer_only_targets(tok):
    rows = [ChatTemplate(tok).encode(c) for c in (QA, MULTI)]
    b = collate(rows, tok.pad_token_id)
    L, K = b["input_ids"].shape[1], b["logits_to_keep"]
    assert b["labels"].shape == (2, K) and K < L
    assert (b["attention_mask"][:, -1] == 1).all()           # every row ends at the right edge
    short = len(rows[0][0])
    assert b["attention_mask"][0, :L - short].sum() == 0
    assert b["position_ids"][0, L - short] == 0 and b["position_ids"][0, -1] == short - 1
    full = collate(rows, tok.pad_token_id, answer_only_logits=False)
    assert torch.equal(full["labels"][:, L - K:], b["labels"])
    assert (full["labels"][:, :L - K] == -100).all()          # nothing learned before the last K


def test_answer_only_loss_equals_transformers_shifted_loss(tok):
    model, _ = tiny_chat_model()
    split = ChatSplit([QA, MULTI, QA], "train")
    b = next(iter(split.loader(tok, batch_size=3)))
    ours = pl.train.loss_fn(model, b)
    ids, sup = b["input_ids"], torch.zeros_like(b["input_ids"], dtype=torch.bool)
    for i, (row_ids, row_sup) in enumerate(split.encode(tok)):
        sup[i, ids.shape[1] - len(row_ids):] = torch.tensor(row_sup)
    hf_labels = ids.masked_fill(~sup, -100)
    out = model(input_ids=ids, attention_mask=b["attention_mask"],
                position_ids=b["position_ids"], labels=hf_labels)
    torch.testing.assert_close(ours, out.loss, atol=1e-5, rtol=0)
    logits = model(input_ids=ids, attention_mask=b["attention_mask"],
                   position_ids=b["position_ids"]).logits
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                             hf_labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(ours, manual, atol=1e-5, rtol=0)


def test_clear_errors_before_training(tok):
    with pytest.raises(ChatDataError, match="no assistant message"):
        ChatTemplate(tok).encode([{"role": "user", "content": "hi"}], "train example 3")
    with pytest.raises(ChatDataError, match="unknown role 'bot'"):
        ChatTemplate(tok).encode([{"role": "bot", "content": "hi"}])
    long = [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}]
    split = ChatSplit([QA, long, long], "train")
    with pytest.raises(ChatDataError, match=r"2 of the 3 train examples .* max_length=40"):
        split.loader(tok, max_length=40)
    plain = smollm2_tokenizer()
    plain.chat_template = None
    with pytest.raises(ChatDataError, match="no chat template"):
        ChatTemplate(plain)
    with pytest.raises(ChatDataError, match="'messages' list or 'prompt'"):
        pl.chat.as_messages({"text": "hi"})


def test_readers_jsonl_dataframe_and_folder(tmp_path, tok):
    pd = pytest.importorskip("pandas")
    rows = [{"prompt": f"Repeat {i}", "response": f"{i}"} for i in range(20)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = pl.data.load_dataset(path)
    assert isinstance(ds, pl.chat.ChatDatasetSplits)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (16, 2, 2)
    assert ds.train.conversations[0][-1]["role"] == "assistant"
    df = pl.data.load_dataset(pd.DataFrame(rows))
    assert sorted(map(str, df.test.conversations)) == sorted(map(str, ds.test.conversations))
    folder = tmp_path / "f"
    folder.mkdir()
    msgs = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(12)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(m) for m in msgs))
    (folder / "test.jsonl").write_text(json.dumps(msgs[0]))
    with pytest.warns(UserWarning, match="no validation split"):
        f = load_chat_dataset(folder)
    assert len(f.test) == 1 and len(f.validation) == 1 and len(f.train) == 11
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(ChatDataError, match="line 2: not valid JSON"):
        load_chat_dataset(bad)


def test_fit_trains_a_causal_lm_with_the_same_loop(tok):
    model, _ = tiny_chat_model()
    pl.lora.apply(model, pl.lora.LoraConfig(r=4, alpha=8, targets="all-linear"))
    convs = [[{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]
             for w in ("yes", "no", "red", "blue")] * 4
    split = ChatSplit(convs, "train")
    result = pl.train.fit(model, split, ChatSplit(convs[:4], "validation"), tokenizer=tok,
                          epochs=3, batch_size=4, lr=2e-2, progress=False, generate_eval=4)
    losses = [e["loss"] for e in result.evals]
    assert losses[-1] < losses[0]                           # held-out loss per epoch falls
    assert result.evals[-1]["generated"] == 4 and 0 <= result.evals[-1]["exact_match"] <= 1
    assert result.evals[0]["n"] == 8                        # 4 answers x (word + end-of-turn)


def test_prompt_tuning_trains_with_answer_only_logits(tok):
    model, _ = tiny_chat_model()
    pl.prompt.apply(model, pl.prompt.PromptConfig(num_virtual_tokens=3, init="normal"))
    split = ChatSplit([QA, MULTI] * 2, "train")
    b = next(iter(split.loader(tok, batch_size=4)))
    answer_only = pl.train.loss_fn(model, b)
    full = next(iter(split.loader(tok, batch_size=4, answer_only_logits=False)))
    torch.testing.assert_close(answer_only, pl.train.loss_fn(model, full), atol=1e-5, rtol=0)
    answer_only.backward()
    assert model.get_input_embeddings().weight.grad is None
    result = pl.train.fit(model, split, tokenizer=tok, epochs=1, batch_size=2, lr=1e-2,
                          progress=False)
    assert len(result.history) == 2


def test_gradient_checkpointing_keeps_fewer_activations(tok):
    split = ChatSplit([QA, MULTI] * 4, "train")
    saved = {}
    for ckpt in (False, True):
        model, _ = tiny_chat_model(num_hidden_layers=8, hidden_size=128, intermediate_size=256)
        pl.lora.apply(model, pl.lora.LoraConfig(r=4, alpha=8, targets="all-linear"))
        r = pl.train.fit(model, split, tokenizer=tok, max_steps=2, batch_size=4, lr=1e-3,
                         progress=False, gradient_checkpointing=ckpt, seed=0)
        saved[ckpt] = (r.memory["activations"], r.history[0]["loss"])
        assert not model.is_activation_checkpointing          # put back as it was
    # what is left is mostly the answer logits and the layer inputs (measured 0.65 here)
    assert saved[True][0] < 0.7 * saved[False][0], saved
    assert saved[True][1] == pytest.approx(saved[False][1], abs=1e-5)
    with pytest.raises(ValueError, match="needs a transformers model"):
        pl.train.fit(torch.nn.Linear(2, 2), [(torch.zeros(1, 2), torch.zeros(1).long())],
                     gradient_checkpointing=True, progress=False)

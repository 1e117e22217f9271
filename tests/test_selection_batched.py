"""Per-example Fisher from one batched backward pass (selection/fisher.py) equals the
single-example loop, and falls back to that loop where its assumptions do not hold."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peftlab import selection as sel
from peftlab.selection import fisher as pe


def count_batched(monkeypatch) -> list:
    calls = []
    real = pe.accumulate

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(pe, "accumulate", spy)
    return calls


def text_batches(vocab, n=2, bs=5, seq=7, pad=0):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (bs, seq), generator=g)
        mask = torch.ones(bs, seq, dtype=torch.long)
        for i in range(bs):                        # ragged lengths: padding at the end
            keep = seq - i % 3
            ids[i, keep:] = pad
            mask[i, keep:] = 0
        ids[0, 1] = ids[0, 2]                      # one id twice in an example: rows add up first
        out.append({"input_ids": ids, "attention_mask": mask,
                    "labels": torch.randint(0, 2, (bs,), generator=g)})
    return out


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def assert_scores_equal(a, b):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-10, msg=n)


def test_batched_equals_loop_on_bert(tiny_bert, monkeypatch):
    """Linear, Embedding (word with padding_idx, broadcast positions, token types) and
    LayerNorm parameters of a BERT: every per-example squared gradient, summed, as the loop."""
    model = no_dropout(tiny_bert)
    batches = text_batches(100)
    calls = count_batched(monkeypatch)
    fast = sel.compute_scores(model, batches, per_example=True)
    assert len(calls) == 1 + len(batches)          # the first-batch check, then every batch
    slow = sel.compute_scores(model, batches, per_example=True, batched=False)
    assert len(calls) == 1 + len(batches)
    assert_scores_equal(fast, slow)
    pos = "bert.embeddings.position_embeddings.weight"
    assert fast[pos][:7].abs().sum() > 0 and fast[pos][7:].abs().sum() == 0
    word = "bert.embeddings.word_embeddings.weight"
    assert fast[word][0].abs().sum() == 0          # padding_idx gets no gradient


def test_batched_equals_loop_on_gpt2_conv1d(monkeypatch):
    from transformers import GPT2Config, GPT2ForSequenceClassification
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     num_labels=2, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0)
    model = GPT2ForSequenceClassification(cfg)
    batches = text_batches(100, pad=0)
    calls = count_batched(monkeypatch)
    fast = sel.compute_scores(model, batches, per_example=True, targets=["c_attn", "c_fc"])
    assert calls
    assert_scores_equal(fast, sel.compute_scores(model, batches, per_example=True,
                                                 targets=["c_attn", "c_fc"], batched=False))


def test_dropout_on_still_close_to_exact_in_expectation(tiny_bert):
    """With dropout the two paths draw different masks; both estimate the same Fisher."""
    batches = text_batches(100, n=4, bs=8)
    fast = sel.compute_scores(tiny_bert.train(), batches)
    slow = sel.compute_scores(tiny_bert, batches, batched=False)
    a = torch.cat([v.flatten() for v in fast.values()])
    b = torch.cat([v.flatten() for v in slow.values()])
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9


def test_sum_loss_is_caught_and_falls_back(tiny_mlp, monkeypatch):
    """A loss_fn that sums instead of averaging breaks loss * B = sum_i L_i: the first-batch
    check notices, warns, and the loop gives the exact answer."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 8, generator=g), torch.randint(0, 3, (6,), generator=g))]

    def sum_loss(model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="sum")

    with pytest.warns(UserWarning, match="is loss_fn a mean"):
        got = sel.compute_scores(tiny_mlp, batches, loss_fn=sum_loss)
    assert_scores_equal(got, sel.compute_scores(tiny_mlp, batches, loss_fn=sum_loss,
                                                batched=False))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


class SeqFirst(nn.Module):
    """A layer that sees (T, B, d): not batch-first."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):                      # x: (B, T, 4)
        h = self.lin(x.transpose(0, 1)).transpose(0, 1)
        return self.out(h.mean(1))


@pytest.mark.parametrize("make,shape", [(Twice, (6, 4)), (SeqFirst, (6, 3, 4))])
def test_unsupported_models_take_the_loop(make, shape, monkeypatch):
    torch.manual_seed(0)
    model = make()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(*shape, generator=g), torch.randint(0, 2, (6,), generator=g))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # a model that does not fit is no warning
        got = sel.compute_scores(model, batches)
    assert_scores_equal(got, sel.compute_scores(model, batches, batched=False))


def test_plan_refuses_tied_and_unknown_layers(tiny_gpt2):
    names = sel.candidate_names(tiny_gpt2)
    tied = pe.plan(tiny_gpt2, names)                  # wte is tied to lm_head: both are read
    assert tied["transformer.wte"] == tied["lm_head"] == {"weight": "transformer.wte.weight"}
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    assert pe.plan(conv, ["0.weight"]) is None
    lin = nn.Sequential(nn.Linear(2, 2))
    assert pe.plan(lin, ["0.weight", "0.bias"]) == {"0": {"weight": "0.weight", "bias": "0.bias"}}

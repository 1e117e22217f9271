"""The seams selection stands on: a wrapper layer where a selected Linear / Conv1D / Embedding
was (no class patched at run time), the batched per-example Fisher on a Llama (tied head,
RMSNorm, grouped-query attention, padded token labels) equal to the single-example loop, and
truly sparse training on a Llama and a GPT-2: unselected entries bit-identical, merge, unload."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftlab as pl
from peftlab import selection as sel
from peftlab.selection import fisher

SELECTION = Path(__file__).resolve().parents[1] / "peftlab" / "selection"


def tiny_llama(dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def tiny_gpt2(dtype=torch.float32):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).to(dtype).eval()


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
EMBEDDING = {"llama": "model.embed_tokens", "gpt2": "transformer.wte"}


def lm_batches(n=2, bs=5, seq=10):
    """Right-padded token batches; labels -100 on padding and on a ragged 'prompt' part, so
    every example's loss averages over its own number of tokens."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 100, (bs, seq), generator=g)
        mask = torch.ones_like(ids)
        labels = ids.clone()
        for i in range(bs):
            keep = seq - 2 * (i % 3)
            ids[i, keep:], mask[i, keep:], labels[i, keep:] = 0, 0, -100
            labels[i, :i % 4] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def lm_loss(model, batch):
    """transformers' causal-LM loss: the mean over the batch's counted tokens."""
    return model(**batch).loss


def assert_fisher_equal(fast, slow, tol=1e-6):
    assert fast.keys() == slow.keys()
    for n in fast:
        scale = float(slow[n].abs().max())
        assert float((fast[n] - slow[n]).abs().max()) <= tol * scale + 1e-30, n


def spy_batched(monkeypatch) -> list:
    calls, real = [], fisher.accumulate
    monkeypatch.setattr(fisher, "accumulate", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


# --- the batched per-example Fisher -----------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_fisher_equals_the_loop(arch, monkeypatch):
    """Tied embeddings / head, RMSNorm (Llama) or LayerNorm and Conv1D (GPT-2), GQA, padded
    token labels with -100: one batched pass per batch, the loop's numbers to 1e-6."""
    model = MODELS[arch](torch.float64)
    batches = lm_batches()
    names = sel.candidate_names(model)
    layers = fisher.plan(model, names)
    emb = EMBEDDING[arch]
    assert layers[emb] == layers["lm_head"] == {"weight": f"{emb}.weight"}       # tied: both
    counts = fisher.tokens_per_example(model, batches[0])
    assert torch.equal(counts, (batches[0]["labels"][:, 1:] != -100).sum(1))   # shifted labels
    assert len(set(counts.tolist())) > 1
    calls = spy_batched(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no fallback to the loop
        fast = sel.compute_scores(model, batches, lm_loss)
    assert len(calls) == 1 + len(batches)              # the first-batch check, then each batch
    slow = sel.compute_scores(model, batches, lm_loss, batched=False)
    assert len(calls) == 1 + len(batches)
    assert_fisher_equal(fast, slow)


class TorchRMSNormLM(nn.Module):
    """Embedding -> torch.nn.RMSNorm -> Linear -> head tied to the embedding; token logits."""

    def __init__(self, vocab=50, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.norm = nn.RMSNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, input_ids, attention_mask=None):
        return self.head(torch.tanh(self.mix(self.norm(self.emb(input_ids)))))


def test_batched_fisher_with_torch_rmsnorm_and_unshifted_token_labels(monkeypatch):
    torch.manual_seed(0)
    model = TorchRMSNormLM().double()
    batches = [{k: v.clamp(max=49) if k == "input_ids" else v for k, v in b.items()}
               for b in lm_batches()]

    def loss(m, b):                                    # token labels, no shift
        logits = m(b["input_ids"])
        return F.cross_entropy(logits.flatten(0, 1), b["labels"].clamp(max=49).flatten(),
                               ignore_index=-100)

    calls = spy_batched(monkeypatch)
    fast = sel.compute_scores(model, batches, loss)
    assert calls
    assert_fisher_equal(fast, sel.compute_scores(model, batches, loss, batched=False))


# --- no hidden machinery ----------------------------------------------------------------------

def test_selection_patches_no_class_at_run_time():
    patterns = [r"type\([^)]*\)\.forward\s*=", r"\.__class__\s*=(?!=)", r"__bases__"]
    found = [(p.name, pat) for p in sorted(SELECTION.glob("*.py"))
             for pat in patterns if re.search(pat, p.read_text(encoding="utf-8"))]
    assert not found, found


# --- truly sparse training on a Llama and a GPT-2 -----------------------------------------------

def train_steps(model, batches, steps=5):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                            weight_decay=0.01)
    model.train()
    for i in range(steps):
        lm_loss(model, batches[i % len(batches)]).backward()
        opt.step()
        pl.after_step(model, i)
        opt.zero_grad()
    model.eval()


@torch.no_grad()
def logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_selection_trains_only_selected_entries_merges_and_unloads(arch, tmp_path):
    base = MODELS[arch]()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model, batches, emb = copy.deepcopy(base), lm_batches(), EMBEDDING[arch]
    total = sum(p.numel() for p in base.parameters())
    sel.apply(model, sel.SelectionConfig(fraction=0.05, modules_to_save=[]), batches=batches,
              loss_fn=lm_loss)
    assert pl.trainable_report(model).trainable == round(0.05 * total)
    wte, head = model.get_submodule(emb), model.lm_head
    assert isinstance(wte, sel.SparseEmbedding) and isinstance(head, sel.SparseLinear)
    assert wte.delta is head.delta                                 # the tied weight: one delta
    assert any(isinstance(m, sel.SparseLinear) for m in model.modules() if m is not head)
    masks = sel.masks_of(model)
    assert set(masks) <= set(base_state)                           # plain-model names
    tensors = sel.adapter_state_dict(model)
    assert f"{emb}.weight.sparse_values" in tensors
    assert not any("base_layer" in k or "parametrizations" in k for k in tensors)

    train_steps(model, batches)
    want = logits(model, batches[0])
    twin = copy.deepcopy(model)
    merged = sel.merge(twin)                                       # a copy's merge ...
    torch.testing.assert_close(logits(merged, batches[0]), want, atol=1e-5, rtol=0)
    assert torch.equal(logits(model, batches[0]), want)           # ... leaves this one alone
    after = merged.state_dict()
    assert after.keys() == base_state.keys()
    moved, masks["lm_head.weight"] = 0, masks[f"{emb}.weight"]     # one tensor, two names
    for k, v in base_state.items():
        keep = ~masks[k] if k in masks else torch.ones_like(v, dtype=torch.bool)
        assert torch.equal(after[k][keep], v[keep]), k            # unselected: bit-identical
        moved += int((after[k] != v).sum())
    assert moved > 0
    assert merged.lm_head.weight is merged.get_submodule(emb).weight   # still tied

    pl.save_adapter(model, tmp_path / "sel")
    loaded = pl.load_adapter(copy.deepcopy(base), tmp_path / "sel")
    assert torch.equal(logits(loaded, batches[0]), want)

    sel.unload(model)
    assert pl.core.get_method(model) is None
    assert not any(isinstance(m, sel.SparseLayer) for m in model.modules())
    now = model.state_dict()
    assert now.keys() == base_state.keys()
    assert all(torch.equal(now[k], v) for k, v in base_state.items())
    assert model.lm_head.weight is model.get_submodule(emb).weight
    assert torch.equal(logits(model, batches[0]), logits(base, batches[0]))


# --- the base-layer seam: a Linear that stores its weight transposed --------------------------

class TransposedLinear(nn.Module):
    """y = x @ W + b with W stored (d_in, d_out): a base layer peftlab does not know."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out) * 0.3)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        return x @ self.weight + self.bias


@pytest.fixture
def transposed_kind():
    from peftlab.core import base

    def add_(m, delta):
        with torch.no_grad():
            m.weight.add_(delta.T)

    kind = base.register(base.BaseKind(
        "TransposedLinear", "linear", lambda m: isinstance(m, TransposedLinear),
        lambda m: tuple(m.weight.shape), lambda m: m.weight.T, add_,
        lambda m: m.weight.numel() * m.weight.element_size()))
    yield kind
    base.unregister(kind.name)


def test_row_selection_follows_the_base_layer_seam(transposed_kind):
    """"row" is an output neuron in the canonical (d_out, d_in) layout that base_weight gives:
    for a weight stored (d_in, d_out) it is a column, as for GPT-2's Conv1D."""
    torch.manual_seed(0)
    model = nn.Sequential(TransposedLinear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    scores = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1))
              for n, p in model.named_parameters()}
    cfg = sel.SelectionConfig(count=40, granularity="row", targets=["0"], modules_to_save=[])
    sel.apply(model, cfg, scores=scores)
    w = sel.masks_of(model)["0.weight"]                            # (6 in, 10 out)
    assert (w.sum(dim=0) >= 40 // (10 + 1)).all()                  # every output neuron
    x = torch.randn(4, 6)
    before = model(x)
    with torch.no_grad():
        sel.sparse_layers(model)["0.weight"].values.fill_(0.5)
    assert not torch.equal(model(x), before)                      # the delta is read
    sel.unload(model)
    assert torch.equal(model(x), before)

"""Selection sparse in compute: the fast Linear / Conv1D / Embedding paths give the outputs of
the dense W + delta forward bit for bit, and the values' gradient of dense autograd gathered at
the selected entries, without building the dense W + delta or its dense gradient."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import peftlab as pl
from peftlab import selection as sel
from peftlab.selection import sparse


def random_delta(shape, k, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(shape[0] * shape[1], generator=g)[:k].sort().values
    d = sparse.SparseDelta(shape, idx, dtype=dtype)
    with torch.no_grad():
        d.values.copy_(torch.randn(k, generator=g, dtype=dtype))
    return d


def dense_reference(w, d):
    """W_eff as a leaf with its own dense gradient: the plain-autograd reference."""
    return sparse.effective_weight(w, d.indices, d.values).detach().requires_grad_(True)


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize("k", [7, 60, 480])
@pytest.mark.parametrize("block", [False, True])     # gathered products | one block matmul
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_matches_dense_autograd(conv1d, k, block, bias, monkeypatch):
    monkeypatch.setattr(sparse, "DENSE_BLOCK", 10 ** 9 if block else 0)
    monkeypatch.setattr(sparse, "CHUNK", 64)            # several chunks of gathered products
    torch.manual_seed(0)
    d_in, d_out = 24, 20
    shape = (d_in, d_out) if conv1d else (d_out, d_in)
    w = torch.randn(shape)
    b = torch.randn(d_out, requires_grad=True) if bias else None
    d = random_delta(shape, k)
    d.values.requires_grad_(True)
    assert d.plan("conv1d" if conv1d else "linear")[-1] == block
    x = torch.randn(3, 5, d_in, requires_grad=True)                      # (B, T, d_in)
    y = sparse.sparse_linear(x, w, b, d, conv1d=conv1d)
    w_eff = dense_reference(w, d)
    x_ref = x.detach().clone().requires_grad_(True)
    b_ref = b.detach().clone().requires_grad_(True) if bias else None
    y_ref = sparse._linear(x_ref, w_eff, b_ref, conv1d)
    assert torch.equal(y, y_ref)                                         # forward: bit for bit
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    expected = w_eff.grad.reshape(-1)[d.indices]                         # dense grad, gathered
    torch.testing.assert_close(d.values.grad, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
    if bias:
        torch.testing.assert_close(b.grad, b_ref.grad, rtol=1e-6, atol=1e-6)


def test_sparse_embedding_matches_dense_autograd():
    torch.manual_seed(0)
    w = torch.randn(50, 8)
    d = random_delta((50, 8), 40)
    d.values.requires_grad_(True)
    ids = torch.randint(0, 50, (4, 9))
    ids[0, :3] = 7                                      # repeated ids sum their gradients
    y = sparse.sparse_embedding(ids, w, d)
    w_eff = dense_reference(w, d)
    y_ref = F.embedding(ids, w_eff)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(d.values.grad, w_eff.grad.reshape(-1)[d.indices],
                               rtol=1e-6, atol=1e-6)


def with_dense_path(model):
    """A copy whose parametrized layers read W + delta through the parametrization (the
    dense path): each gets its own class with the base class's forward back."""
    model = copy.deepcopy(model)
    for mod in model.modules():
        if hasattr(mod, "parametrizations"):
            cls = type(mod)
            mod.__class__ = type(cls.__name__, cls.__bases__,
                                 {**cls.__dict__, "forward": cls.__bases__[0].forward})
    return model


def graph_names(t):
    seen, stack, names = set(), [t.grad_fn], []
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        names.append(type(f).__name__)
        stack.extend(n for n, _ in f.next_functions)
    return names


def lm_loss(model, batch):
    return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss


def batches_of(vocab=100, n=2, bs=4, seq=10):
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        out.append({"input_ids": torch.randint(1, vocab, (bs, seq), generator=g),
                    "attention_mask": torch.ones(bs, seq, dtype=torch.long),
                    "labels": torch.randint(0, 2, (bs,), generator=g)})
    return out


@pytest.mark.parametrize("which", ["tiny_bert", "tiny_gpt2"])
@pytest.mark.parametrize("granularity", ["global", "row"])
def test_model_values_gradient_is_the_dense_gradient_gathered(which, granularity, request):
    model = request.getfixturevalue(which)
    loss_fn = lm_loss if which == "tiny_gpt2" else None
    batches = batches_of()
    sel.apply(model, sel.SelectionConfig(fraction=0.05, granularity=granularity,
                                         modules_to_save=[] if loss_fn else None),
              batches=batches, loss_fn=loss_fn)
    deltas = sel.sparse_layers(model)
    with torch.no_grad():
        for d in deltas.values():
            d.values.normal_(0, 0.02)
    loss_fn = loss_fn or pl.train.loss_fn
    model.eval()                                        # no dropout: both passes see the same
    merged = sel.merge(copy.deepcopy(model))            # plain weights W + delta
    for p in merged.parameters():
        p.requires_grad_(True)
    loss = loss_fn(model, batches[0])
    ref = loss_fn(merged, batches[0])
    assert torch.equal(loss, ref)                       # the outputs, bit for bit
    names = graph_names(loss)
    assert "_SparseLinearBackward" in names
    # a dense W + delta is built only for tensors off the fast path (biases, LayerNorm); an
    # embedding builds its small table of selected rows
    slow = [(m, a) for m in model.modules() for a in getattr(m, "parametrizations", {})
            if not (a == "weight" and sparse.has_fast_path(m))]
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)
              and "weight" in getattr(m, "parametrizations", {})]
    assert names.count("IndexAddBackward0") == len(slow) + len(tables)
    loss.backward()
    ref.backward()
    params = dict(merged.named_parameters())
    for n, d in deltas.items():
        expected = params[n].grad.reshape(-1)[d.indices]
        torch.testing.assert_close(d.values.grad, expected, rtol=1e-5, atol=1e-6, msg=n)


def test_fast_path_saves_less_for_backward(tiny_bert):
    sel.apply(tiny_bert, sel.SelectionConfig(fraction=0.05), batches=batches_of())
    dense = with_dense_path(tiny_bert)
    saved = {}
    for name, m in (("fast", tiny_bert), ("dense", dense)):
        with pl.measure.SavedTensorMeter(m) as meter:
            pl.train.loss_fn(m.eval(), batches_of()[0])
        saved[name] = meter.bytes
    assert saved["fast"] < saved["dense"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_with_fp32_values(tiny_bert, dtype):
    tiny_bert.to(dtype)
    sel.apply(tiny_bert, sel.SelectionConfig(fraction=0.05, per_example=False),
              batches=batches_of(n=1))
    with torch.no_grad():
        for d in sel.sparse_layers(tiny_bert).values():
            d.values.normal_(0, 0.02)
    dense = with_dense_path(tiny_bert)
    batch = batches_of()[0]
    out = [pl.train.loss_fn(m.eval(), batch) for m in (tiny_bert, dense)]
    assert torch.equal(out[0], out[1])                  # W + fp16/bf16(values) in both
    out[0].backward()
    out[1].backward()
    for n, d in sel.sparse_layers(tiny_bert).items():
        other = sel.sparse_layers(dense)[n]
        assert d.values.grad.dtype == torch.float32
        torch.testing.assert_close(d.values.grad, other.values.grad, rtol=0.05, atol=2e-3,
                                   msg=n)


def test_autocast_matches_the_dense_path(tiny_bert):
    sel.apply(tiny_bert, sel.SelectionConfig(fraction=0.05), batches=batches_of())
    with torch.no_grad():
        for d in sel.sparse_layers(tiny_bert).values():
            d.values.normal_(0, 0.02)
    dense = with_dense_path(tiny_bert)
    batch = batches_of()[0]
    losses = []
    for m in (tiny_bert, dense):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = m.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits
        assert logits.dtype == torch.bfloat16
        losses.append(F.cross_entropy(logits.float(), batch["labels"]))
    assert torch.equal(losses[0], losses[1])
    for loss in losses:
        loss.backward()
    for n, d in sel.sparse_layers(tiny_bert).items():
        torch.testing.assert_close(d.values.grad, sel.sparse_layers(dense)[n].values.grad,
                                   rtol=0.05, atol=2e-3, msg=n)


def test_selected_padding_row_gets_no_gradient():
    emb = torch.nn.Embedding(10, 4, padding_idx=0)
    model = torch.nn.Sequential(emb, torch.nn.Flatten(), torch.nn.Linear(12, 2))
    mask = torch.zeros(10, 4, dtype=torch.bool)
    mask[0, 1] = mask[3, 2] = True                      # one entry in the padding row
    sel.surgery._install(model, {"0.weight": mask}, [])
    d = sel.sparse_layers(model)["0.weight"]
    with torch.no_grad():
        d.values.fill_(0.5)
    ids = torch.tensor([[0, 3, 5], [3, 0, 0]])
    out = model(ids)
    assert torch.equal(out, with_dense_path(model)(ids))   # the padding row's value is added
    out.sum().backward()
    assert d.values.grad[0] == 0 and d.values.grad[1] != 0   # as F.embedding's padding_idx

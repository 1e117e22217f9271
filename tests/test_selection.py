"""Gradient-based selection: scores vs autograd, exact budgets, truly sparse updates, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import peftlab as pl
from peftlab import selection as sel
from peftlab.core.errors import AdapterError


def bert_batches(n=3, bs=4, seq=10, vocab=100):
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        out.append({"input_ids": torch.randint(0, vocab, (bs, seq), generator=g),
                    "attention_mask": torch.ones(bs, seq, dtype=torch.long),
                    "labels": torch.randint(0, 2, (bs,), generator=g)})
    return out


def mlp_batches(n=3, bs=5):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(bs, 8, generator=g), torch.randint(0, 3, (bs,), generator=g))
            for _ in range(n)]


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before):
    after = model.state_dict()
    assert set(after) == set(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k


def inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


# --- scores ----------------------------------------------------------------------------------

def manual_grads(model, batches):
    """Per-batch gradients with plain autograd: [{name: grad}]."""
    params = dict(model.named_parameters())
    out = []
    for x, y in batches:
        gs = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
        out.append(dict(zip(params, gs)))
    return out


def test_scores_match_autograd(tiny_mlp):
    batches = mlp_batches()
    before = state_of(tiny_mlp)
    per_batch = manual_grads(tiny_mlp, batches)
    mean = {n: sum(g[n] for g in per_batch) / len(per_batch) for n in per_batch[0]}
    grad = sel.compute_scores(tiny_mlp, batches, kind="grad")
    sens = sel.compute_scores(tiny_mlp, batches, kind="sensitivity")
    fish_b = sel.compute_scores(tiny_mlp, batches, kind="fisher", per_example=False)
    params = dict(tiny_mlp.named_parameters())
    for n in params:
        torch.testing.assert_close(grad[n], mean[n].abs())
        torch.testing.assert_close(sens[n], (params[n].detach() * mean[n]).abs())
        torch.testing.assert_close(fish_b[n], sum(g[n] ** 2 for g in per_batch) / len(per_batch))
    assert_same_state(tiny_mlp, before)


def test_per_example_fisher_matches_vmap(tiny_mlp):
    """The per-example empirical Fisher (1/N) sum_i g_i^2 against torch.func per-sample grads."""
    from torch.func import functional_call, grad, vmap
    batches = mlp_batches(n=2, bs=4)
    params = {n: p.detach() for n, p in tiny_mlp.named_parameters()}

    def one(p, x, y):
        return F.cross_entropy(functional_call(tiny_mlp, p, (x[None],)), y[None])

    sq = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in batches:
        g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)   # {name: (B, *shape)}
        for n in sq:
            sq[n] += g[n].square().sum(0)
    fisher = sel.compute_scores(tiny_mlp, batches, kind="fisher")
    for n in sq:
        torch.testing.assert_close(fisher[n], sq[n] / 8)


def test_scores_leave_model_untouched(tiny_bert):
    for p in tiny_bert.bert.embeddings.parameters():
        p.requires_grad_(False)
    tiny_bert.classifier.weight.grad = torch.ones_like(tiny_bert.classifier.weight)
    flags = {n: p.requires_grad for n, p in tiny_bert.named_parameters()}
    before = state_of(tiny_bert)
    rng = torch.get_rng_state()
    scores = sel.compute_scores(tiny_bert, bert_batches(1, bs=4))
    assert set(scores) == set(flags)                        # frozen ones are scored too
    assert not tiny_bert.training                           # mode restored (fixture is eval)
    assert {n: p.requires_grad for n, p in tiny_bert.named_parameters()} == flags
    assert torch.equal(tiny_bert.classifier.weight.grad, torch.ones(2, 32))
    assert all(p.grad is None for n, p in tiny_bert.named_parameters() if "classifier" not in n)
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same_state(tiny_bert, before)


def test_masks_deterministic_for_a_seed(tiny_bert):
    """Dropout is on while scoring; the seed fixes it, another seed changes the scores."""
    a = sel.compute_scores(tiny_bert, bert_batches(2), kind="sensitivity", seed=3)
    b = sel.compute_scores(tiny_bert, bert_batches(2), kind="sensitivity", seed=3)
    c = sel.compute_scores(tiny_bert, bert_batches(2), kind="sensitivity", seed=4)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    for gran in sel.GRANULARITIES:
        ma = sel.make_masks(a, fraction=0.05, granularity=gran)
        mb = sel.make_masks(b, fraction=0.05, granularity=gran)
        assert all(torch.equal(ma[n], mb[n]) for n in ma)


# --- masks -----------------------------------------------------------------------------------

def test_global_ties_broken_by_position():
    scores = {"a": torch.ones(2, 3), "b": torch.ones(4)}
    m = sel.make_masks(scores, count=7)
    assert m["a"].all() and m["b"].tolist() == [True, False, False, False]
    m = sel.make_masks(scores, count=4)
    assert m["a"].flatten().tolist() == [True] * 4 + [False] * 2 and not m["b"].any()
    scores = {"a": torch.tensor([0.0, 5.0, 1.0, 1.0]), "b": torch.tensor([1.0, 1.0])}
    m = sel.make_masks(scores, count=3)
    assert m["a"].tolist() == [False, True, True, True] and not m["b"].any()


@pytest.mark.parametrize("count", [1, 7, 50, 100, 119])
def test_row_granularity_exact_count_and_per_row_floor(count):
    g = torch.Generator().manual_seed(0)
    scores = {"w1": torch.rand(10, 8, generator=g), "b1": torch.rand(10, generator=g),
              "w2": torch.rand(3, 10, generator=g)}
    m = sel.make_masks(scores, count=count, granularity="row")
    assert sum(int(v.sum()) for v in m.values()) == count
    per_row = count // (10 + 1 + 3)
    for n, s in scores.items():
        rows = m[n].reshape(s.shape[0], -1) if s.dim() > 1 else m[n].reshape(1, -1)
        sr = s.reshape(rows.shape)
        assert (rows.sum(1) >= min(per_row, rows.shape[1])).all()
        # the chosen entries of a row are its best ones
        for r in range(rows.shape[0]):
            if 0 < rows[r].sum() < rows.shape[1]:
                assert sr[r][rows[r]].min() >= sr[r][~rows[r]].max()


def test_global_is_top_k_and_tensor_is_whole():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(20, 5, generator=g), "b": torch.rand(30, generator=g) * 3,
              "c": torch.rand(7, generator=g) * 0.1}
    m = sel.make_masks(scores, fraction=0.2)
    flat = torch.cat([s.flatten() for s in scores.values()])
    chosen = torch.cat([m[n].flatten() for n in scores])
    assert chosen.sum() == round(0.2 * 137)
    assert flat[chosen].min() > flat[~chosen].max()
    t = sel.make_masks(scores, count=40, granularity="tensor")
    assert t["b"].all() and not t["a"].any() and t["c"].all()      # 30 + 7 <= 40; "a" won't fit
    rows = sel.layer_summary(m)
    assert sum(r.total for r in rows) == 137 and sum(r.selected for r in rows) == chosen.sum()


def test_layer_summary_groups_by_block(tiny_bert):
    masks = sel.make_masks(sel.compute_scores(tiny_bert, bert_batches(1)), fraction=0.1)
    rows = sel.layer_summary(masks)
    q = [r for r in rows if r.module == "attention.self.query"]
    assert [r.layer for r in q] == [0, 1] and all(r.total == 32 * 32 + 32 for r in q)
    assert sum(r.total for r in rows) == sum(p.numel() for p in tiny_bert.parameters())


# --- apply: truly sparse training --------------------------------------------------------------

def train_steps(model, batches, steps=20, wd=0.01, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    model.train()
    for i in range(steps):
        pl.train.loss_fn(model, batches[i % len(batches)]).backward()
        opt.step()
        pl.after_step(model, i)
        opt.zero_grad()
    return opt


@pytest.mark.parametrize("granularity", ["global", "row"])
def test_unselected_entries_bit_identical_after_adamw(tiny_bert, granularity):
    base = state_of(tiny_bert)
    batches = bert_batches()
    total = sum(p.numel() for p in tiny_bert.parameters())
    sel.apply(tiny_bert, sel.SelectionConfig(fraction=0.02, granularity=granularity),
              batches=batches)
    masks = sel.masks_of(tiny_bert)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.02 * total)   # head included
    assert pl.trainable_report(tiny_bert).trainable == round(0.02 * total)
    assert masks["classifier.weight"].all()
    train_steps(tiny_bert, batches)
    sel.merge(tiny_bert)
    after = tiny_bert.state_dict()
    assert set(after) == set(base)
    moved = 0
    for k in base:
        if k in masks:
            assert torch.equal(after[k][~masks[k]], base[k][~masks[k]]), k
            moved += int((after[k] != base[k]).sum())
        else:
            assert torch.equal(after[k], base[k]), k
    assert moved > 0.9 * round(0.02 * total)


def test_optimizer_state_scales_with_selected_count(tiny_bert):
    sizes = {}
    for count in (200, 800):
        m = copy.deepcopy(tiny_bert)
        sel.apply(m, sel.SelectionConfig(count=count, modules_to_save=[]),
                  batches=bert_batches(1))
        opt = train_steps(m, bert_batches(1), steps=1)
        params = [p for g in opt.param_groups for p in g["params"]]
        assert sum(p.numel() for p in params) == count
        moments = sum(v.numel() for s in opt.state.values() for k, v in s.items()
                      if k in ("exp_avg", "exp_avg_sq"))
        assert moments == 2 * count
        sizes[count] = pl.measure.optimizer_state_bytes(opt)
    full = sum(p.numel() for p in tiny_bert.parameters())
    assert sizes[800] - sizes[200] == 600 * 2 * 4            # two fp32 moments per entry
    assert sizes[800] < full * 2 * 4 / 10


def test_tensor_granularity_trains_whole_tensors(tiny_bert):
    sel.apply(tiny_bert, sel.SelectionConfig(fraction=0.1, granularity="tensor"),
              batches=bert_batches(1))
    assert not sel.sparse_layers(tiny_bert)
    masks = sel.masks_of(tiny_bert)
    n = sum(int(m.sum()) for m in masks.values())
    assert 0 < n <= round(0.1 * sum(p.numel() for p in tiny_bert.parameters()))


def test_save_load_rebuilds_selection_without_batches(tiny_bert, tmp_path):
    base = copy.deepcopy(tiny_bert)
    batches = bert_batches()
    sel.apply(tiny_bert, sel.SelectionConfig(fraction=0.02, granularity="row"), batches=batches)
    train_steps(tiny_bert, batches, steps=5)
    tiny_bert.eval()
    path = pl.save_adapter(tiny_bert, tmp_path / "sel")
    tensors = sel.adapter_state_dict(tiny_bert)
    k = sum(v.numel() for n, v in tensors.items() if n.endswith(".sparse_values"))
    dense = sum(v.numel() for n, v in tensors.items() if not n.endswith(sel.SUFFIXES))
    assert k + dense == round(0.02 * sum(p.numel() for p in base.parameters()))
    assert pl.measure.folder_size(path) < 4 * 12 * (k + dense) + 8000
    pl.load_adapter(base, path)
    assert pl.core.get_method(base) == "selection"
    with torch.no_grad():
        torch.testing.assert_close(base(**inputs(batches[0])).logits,
                                   tiny_bert(**inputs(batches[0])).logits, rtol=0, atol=0)
    merged = sel.merge(copy.deepcopy(tiny_bert))
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs(batches[0])).logits,
                                   tiny_bert(**inputs(batches[0])).logits)


def test_tied_weights_share_one_delta(tiny_gpt2):
    def lm_loss(model, batch):
        return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
    base_w = tiny_gpt2.transformer.wte.weight.detach().clone()
    sel.apply(tiny_gpt2, sel.SelectionConfig(fraction=0.02, modules_to_save=[]),
              batches=bert_batches(1), loss_fn=lm_loss)
    wte = tiny_gpt2.transformer.wte.parametrizations.weight
    assert tiny_gpt2.lm_head.parametrizations.weight[0] is wte[0]
    with torch.no_grad():
        wte[0].values.fill_(1.0)
    assert torch.equal(tiny_gpt2.lm_head.weight, tiny_gpt2.transformer.wte.weight)
    sel.merge(tiny_gpt2)
    assert tiny_gpt2.lm_head.weight is tiny_gpt2.transformer.wte.weight
    diff = tiny_gpt2.transformer.wte.weight - base_w
    assert diff.abs().max() == 1.0 and int((diff != 0).sum()) == wte[0].indices.numel()


# --- bad input: clear errors, model unchanged ------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 0.0}, "fraction must be in"),
    ({"fraction": 1.5}, "fraction must be in"),
    ({"fraction": -0.1}, "fraction must be in"),
    ({"count": 0}, "count must be a positive"),
    ({"fraction": 0.1, "count": 10}, "exactly one of"),
    ({"granularity": "block"}, "granularity must be one of"),
    ({"score": "hessian"}, "score must be one of"),
])
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sel.SelectionConfig(**kwargs)


@pytest.mark.parametrize("config, batches, match", [
    (sel.SelectionConfig(count=10 ** 9), bert_batches(1), "larger than the"),
    (sel.SelectionConfig(count=50), bert_batches(1), "does not exceed the head"),
    (sel.SelectionConfig(), [], "no batches"),
    (sel.SelectionConfig(), None, "needs batches="),
    (sel.SelectionConfig(targets=["nonexistent"]), bert_batches(1), "matched no module"),
])
def test_bad_apply_leaves_model_unchanged(tiny_bert, config, batches, match):
    before = state_of(tiny_bert)
    flags = [p.requires_grad for p in tiny_bert.parameters()]
    with pytest.raises(ValueError, match=match):
        sel.apply(tiny_bert, config, batches=batches)
    assert_same_state(tiny_bert, before)
    assert [p.requires_grad for p in tiny_bert.parameters()] == flags
    assert pl.core.get_method(tiny_bert) is None


def test_load_onto_other_shape_raises_and_changes_nothing(tiny_bert, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification
    sel.apply(tiny_bert, sel.SelectionConfig(fraction=0.02), batches=bert_batches(1))
    path = pl.save_adapter(tiny_bert, tmp_path / "sel")
    torch.manual_seed(0)
    other = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2))
    before = state_of(other)
    with pytest.raises(AdapterError, match="shape"):
        pl.load_adapter(other, path)
    assert_same_state(other, before)
    assert pl.core.get_method(other) is None


def test_apply_twice_and_merge_plain_raise(tiny_bert):
    with pytest.raises(ValueError, match="needs a model carrying"):
        sel.merge(tiny_bert)
    sel.apply(tiny_bert, sel.SelectionConfig(fraction=0.02), batches=bert_batches(1))
    with pytest.raises(RuntimeError, match="already carries"):
        sel.apply(tiny_bert, sel.SelectionConfig(fraction=0.02), batches=bert_batches(1))


def test_empty_scores_and_unknown_kind(tiny_mlp):
    with pytest.raises(ValueError, match="no scores"):
        sel.make_masks({}, fraction=0.1)
    with pytest.raises(ValueError, match="Unknown score kind"):
        sel.compute_scores(tiny_mlp, mlp_batches(), kind="hessian")
    with pytest.raises(ValueError, match="larger than"):
        sel.make_masks({"a": torch.ones(3)}, count=4)


def test_plots_draw_from_scores_and_masks(tiny_bert):
    import matplotlib
    matplotlib.use("Agg")
    from peftlab.plots import selection as plots
    scores = sel.compute_scores(tiny_bert, bert_batches(1), kind="grad")
    rows = {g: sel.layer_summary(sel.make_masks(scores, fraction=0.05, granularity=g))
            for g in sel.GRANULARITIES}
    masks = sel.make_masks(scores, fraction=0.05)
    for fig in (plots.layer_heatmap(rows["global"]), plots.score_histogram(scores, masks),
                plots.granularity_bars(rows)):
        assert fig.axes
    mods, blocks, chosen, total = plots.grid(rows["row"])
    assert blocks == [0, 1] and chosen.sum() <= total.sum()


# --- models users bring: BatchNorm, Conv1D rows, unload, half precision ----------------------

class BNNet(torch.nn.Module):
    """A small CNN with BatchNorm2d, then BatchNorm1d before the head."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.hidden = torch.nn.Linear(4, 6)
        self.bn1 = torch.nn.BatchNorm1d(6)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc(torch.relu(self.bn1(self.hidden(h))))


def bn_batches(n=2, bs=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(bs, 3, 6, 6, generator=g), torch.randint(0, 3, (bs,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("per_example", [False, True])
def test_scoring_leaves_batchnorm_statistics_and_modes_alone(per_example):
    """Scoring runs in training mode, which updated BatchNorm's running statistics (the
    docstring says it only reads the model); per-example scoring crashed on BatchNorm1d."""
    torch.manual_seed(0)
    model = BNNet().eval()
    model.bn1.train()                                         # a mixed mode, kept as it was
    before = state_of(model)
    scores = sel.compute_scores(model, bn_batches(), per_example=per_example)
    assert_same_state(model, before)
    assert not model.training and model.bn1.training and not model.bn.training
    assert all(torch.isfinite(s).all() for s in scores.values())
    sel.apply(model, sel.SelectionConfig(fraction=0.2, per_example=per_example),
              batches=bn_batches())
    for bn in ("bn", "bn1"):                                  # apply scores: still untouched
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(getattr(model, bn), k), before[f"{bn}.{k}"])


def test_per_example_fisher_with_batchnorm_uses_running_statistics():
    """Per example, BatchNorm normalises with its running statistics: the mean squared
    gradient of single examples through the model in eval mode."""
    torch.manual_seed(0)
    model = BNNet()
    with torch.no_grad():
        model.bn1.running_mean.normal_()
        model.bn1.running_var.uniform_(0.5, 2.0)
    batches = bn_batches(1, bs=3)
    scores = sel.compute_scores(model, batches, per_example=True)
    ref = copy.deepcopy(model).eval()
    params = dict(ref.named_parameters())
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    x, y = batches[0]
    for i in range(3):
        gs = torch.autograd.grad(F.cross_entropy(ref(x[i:i + 1]), y[i:i + 1]), list(params.values()))
        for n, gr in zip(params, gs):
            acc[n] += gr.square() / 3
    for n in params:
        torch.testing.assert_close(scores[n], acc[n], msg=n)


def test_row_granularity_ranks_output_neurons_of_conv1d(tiny_gpt2):
    """GPT-2's Conv1D stores W as (d_in, d_out): "row" (an output neuron's incoming weights)
    is a column there. Every output neuron must get its share."""
    scores = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(0))
              for n, p in tiny_gpt2.named_parameters()}
    cfg = sel.SelectionConfig(count=4000, granularity="row", targets=["c_fc"],
                              modules_to_save=[])
    sel.apply(tiny_gpt2, cfg, scores=scores)
    masks = sel.masks_of(tiny_gpt2)
    w = masks["transformer.h.0.mlp.c_fc.weight"]              # (32 in, 128 out)
    rows = 2 * (128 + 1)                                      # weight columns + bias per layer
    per_row = 4000 // rows
    assert (w.sum(dim=0) >= per_row).all()                    # per output neuron
    s = scores["transformer.h.0.mlp.c_fc.weight"]
    for o in range(0, 128, 17):                               # the best inputs of each neuron
        col, chosen = s[:, o], w[:, o]
        if 0 < chosen.sum() < 32:
            assert col[chosen].min() >= col[~chosen].max()


def test_unload_gives_the_base_back_bit_for_bit(tiny_bert):
    before = state_of(tiny_bert)
    cfg = sel.SelectionConfig(fraction=0.05)
    sel.apply(tiny_bert, cfg, batches=bert_batches())
    train_steps(tiny_bert, bert_batches(), steps=3)
    assert not torch.equal(tiny_bert.classifier.weight, before["classifier.weight"])
    twin = copy.deepcopy(tiny_bert)
    sel.unload(tiny_bert)
    assert pl.core.get_method(tiny_bert) is None
    assert_same_state(tiny_bert, before)
    sel.unload(twin, merge=True)                               # = merge: the trained model
    assert not torch.equal(twin.classifier.weight, before["classifier.weight"])


def test_sparse_values_are_fp32_on_a_bf16_base(tiny_bert):
    tiny_bert.to(torch.bfloat16)
    sel.apply(tiny_bert, sel.SelectionConfig(fraction=0.05, per_example=False),
              batches=bert_batches(1))
    deltas = sel.sparse_layers(tiny_bert)
    assert deltas and all(d.values.dtype == torch.float32 for d in deltas.values())
    out = tiny_bert(**inputs(bert_batches(1)[0])).logits
    assert out.dtype == torch.bfloat16

"""peftlab.lora: the layers against dense references, apply / merge / unmerge / unload, bad inputs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import peftlab as pl
from peftlab.core.errors import AlreadyAdaptedError, TargetError
from peftlab.lora import LoraConfig, LoraConv2d, LoraEmbedding, LoraLayer, LoraLinear


def randomize_b(model: nn.Module, std: float = 0.1, seed: int = 1) -> None:
    """Give every adapter a non-zero update (B starts at zero; the embedding's A does)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, snap: dict) -> bool:
    now = model.state_dict()
    return now.keys() == snap.keys() and all(torch.equal(now[k], snap[k]) for k in snap)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, (3, 2), stride=2, dilation=(1, 2))
        self.emb = nn.Embedding(20, 5, padding_idx=0)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = self.conv2(F.relu(self.conv(x)))
        return self.fc(h.mean((2, 3)))


# --- the layers against a dense reference ----------------------------------------------------

def test_zero_initialised_lora_leaves_outputs_unchanged(tiny_bert):
    ids = torch.randint(0, 100, (2, 7))
    before = tiny_bert(input_ids=ids).logits
    pl.lora.apply(tiny_bert, LoraConfig(r=4, targets=["query", "value", "dense",
                                                      "word_embeddings"]))
    assert torch.equal(tiny_bert(input_ids=ids).logits, before)


def test_linear_matches_dense_reference_and_merge_formula():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoraLinear(copy.deepcopy(base), r=3, alpha=6)
    randomize_b(layer)
    a, b = layer.lora_A.weight, layer.lora_B.weight                  # (3, 6), (5, 3)
    assert a.shape == (3, 6) and b.shape == (5, 3) and layer.scale == 2.0
    x = torch.randn(4, 2, 6)
    dense = base.weight + 2.0 * b @ a
    torch.testing.assert_close(layer(x), x @ dense.T + base.bias)
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, dense)
    torch.testing.assert_close(layer(x), x @ dense.T + base.bias)


def test_conv2d_matches_dense_reference():
    torch.manual_seed(0)
    model = TinyCNN()
    ref = copy.deepcopy(model)
    pl.lora.apply(model, LoraConfig(r=2, alpha=3, targets=["conv", "conv2"]))
    randomize_b(model)
    x = torch.randn(2, 3, 9, 9)
    for name in ("conv", "conv2"):
        layer, base = getattr(model, name), getattr(ref, name)
        assert isinstance(layer, LoraConv2d)
        dense = base.weight + pl.lora.delta_weight(layer)
        inp = x if name == "conv" else F.relu(ref.conv(x))
        want = F.conv2d(inp, dense, base.bias, base.stride, base.padding, base.dilation)
        got = layer(inp if name == "conv" else F.relu(model.conv.base_layer(x)))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    out = model(x)
    pl.lora.merge(model)
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)


def test_conv2d_delta_is_scale_b_times_a():
    torch.manual_seed(0)
    layer = LoraConv2d(nn.Conv2d(4, 6, 3), r=2, alpha=4)
    randomize_b(layer)
    a = layer.lora_A.weight.reshape(2, -1)                            # (r, 4*3*3)
    b = layer.lora_B.weight.reshape(6, 2)                             # (6, r)
    want = (2.0 * b @ a).reshape(6, 4, 3, 3)
    torch.testing.assert_close(pl.lora.delta_weight(layer), want)


def test_embedding_matches_dense_reference_and_hf_init():
    torch.manual_seed(0)
    base = nn.Embedding(20, 5, padding_idx=0)
    layer = LoraEmbedding(copy.deepcopy(base), r=3, alpha=3)
    assert torch.equal(layer.lora_embedding_A, torch.zeros(3, 20))    # HF: A zero, B normal
    assert layer.lora_embedding_B.shape == (5, 3) and layer.lora_embedding_B.abs().sum() > 0
    randomize_b(layer)
    ids = torch.randint(0, 20, (4, 6))
    dense = base.weight + (layer.lora_embedding_B @ layer.lora_embedding_A).T
    torch.testing.assert_close(layer(ids), F.embedding(ids, dense))
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, dense)


def test_conv1d_gpt2_fan_in_fan_out(tiny_gpt2):
    from transformers.pytorch_utils import Conv1D

    ids = torch.randint(0, 100, (2, 8))
    pl.lora.apply(tiny_gpt2, LoraConfig(r=4, alpha=8, targets=["c_attn"]))
    layer = tiny_gpt2.transformer.h[0].attn.c_attn
    assert isinstance(layer, LoraLinear) and isinstance(layer.base_layer, Conv1D)
    assert layer.fan_in_fan_out and layer.lora_A.weight.shape == (4, 32)
    randomize_b(tiny_gpt2)
    w = layer.base_layer.weight.clone()                               # (d_in, d_out) = (32, 96)
    assert pl.lora.delta_weight(layer).shape == w.shape
    out = tiny_gpt2(input_ids=ids).logits
    pl.lora.merge(tiny_gpt2)
    torch.testing.assert_close(layer.base_layer.weight,
                               w + (2.0 * layer.lora_B.weight @ layer.lora_A.weight).T)
    torch.testing.assert_close(tiny_gpt2(input_ids=ids).logits, out, atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(d_in=st.integers(1, 12), d_out=st.integers(1, 12), data=st.data(),
       rslora=st.booleans(), alpha=st.floats(0.1, 64))
def test_property_linear_any_shape_and_rank(d_in, d_out, data, rslora, alpha):
    r = data.draw(st.integers(1, min(d_in, d_out)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d_in, d_out))
    w0 = model[0].weight.clone()
    pl.lora.apply(model, LoraConfig(r=r, alpha=alpha, targets=["0"], rslora=rslora))
    layer = model[0]
    assert layer.scale == pytest.approx(alpha / (math.sqrt(r) if rslora else r))
    randomize_b(model)
    x = torch.randn(3, d_in)
    delta = layer.scale * layer.lora_B.weight @ layer.lora_A.weight
    assert torch.linalg.matrix_rank(delta).item() <= r
    torch.testing.assert_close(model(x), x @ (w0 + delta).T + layer.base_layer.bias,
                               atol=1e-4, rtol=1e-4)
    pl.lora.merge(model)
    pl.lora.merge(model)                                            # twice: no-op
    torch.testing.assert_close(layer.base_layer.weight, w0 + delta, atol=1e-5, rtol=1e-5)
    pl.lora.unmerge(model)
    torch.testing.assert_close(layer.base_layer.weight, w0, atol=1e-5, rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(c_in=st.integers(1, 4), c_out=st.integers(1, 5), k=st.integers(1, 3), data=st.data())
def test_property_conv2d_any_shape_and_rank(c_in, c_out, k, data):
    r = data.draw(st.integers(1, min(c_out, c_in * k * k)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2))
    pl.lora.apply(model, LoraConfig(r=r, alpha=2 * r, targets=[nn.Conv2d]))
    randomize_b(model)
    x = torch.randn(2, c_in, 5, 5)
    layer = model[0]
    dense = layer.base_layer.weight + pl.lora.delta_weight(layer)
    want = F.conv2d(x, dense, layer.base_layer.bias, padding=k // 2)
    torch.testing.assert_close(model(x), want, atol=1e-4, rtol=1e-4)


# --- apply: what trains ----------------------------------------------------------------------

def test_apply_freezes_base_and_trains_adapters_and_head(tiny_bert):
    pl.lora.apply(tiny_bert, LoraConfig(r=2, targets=["query"]))
    train = {n for n, p in tiny_bert.named_parameters() if p.requires_grad}
    assert train == {f"bert.encoder.layer.{i}.attention.self.query.lora_{x}.weight"
                     for i in range(2) for x in "AB"} | {"classifier.weight", "classifier.bias"}
    assert pl.core.get_config(tiny_bert).modules_to_save == ["classifier"]
    assert pl.lora.count_parameters(tiny_bert.__class__(tiny_bert.config), LoraConfig(
        r=2, targets=["query"]), include_modules_to_save=True) == pl.trainable_report(
        tiny_bert).trainable


def test_modules_to_save_explicit_and_empty(tiny_bert):
    m = copy.deepcopy(tiny_bert)
    pl.lora.apply(m, LoraConfig(r=2, targets=["query"], modules_to_save=[]))
    assert not m.classifier.weight.requires_grad
    pl.lora.apply(tiny_bert, LoraConfig(r=2, targets=["query"], modules_to_save=["pooler.dense"]))
    assert tiny_bert.bert.pooler.dense.weight.requires_grad
    assert not tiny_bert.classifier.weight.requires_grad


def test_gpt2_default_does_not_train_tied_lm_head(tiny_gpt2):
    pl.lora.apply(tiny_gpt2, LoraConfig(r=2, targets=["c_attn"]))
    assert not tiny_gpt2.lm_head.weight.requires_grad
    assert pl.core.get_config(tiny_gpt2).modules_to_save == []


def test_one_step_leaves_base_weights_bit_identical(tiny_bert):
    pl.lora.apply(tiny_bert, LoraConfig(r=4, dropout=0.1, targets=["query", "value",
                                                                   "word_embeddings"]))
    frozen = {n: p.clone() for n, p in tiny_bert.named_parameters() if not p.requires_grad}
    lora = {n: p.clone() for n, p in tiny_bert.named_parameters() if ".lora_B" in n}
    tiny_bert.train()
    opt = torch.optim.AdamW([p for p in tiny_bert.parameters() if p.requires_grad], lr=1e-2)
    loss = pl.train.loss_fn(tiny_bert, {"input_ids": torch.randint(0, 100, (4, 9)),
                                        "labels": torch.tensor([0, 1, 0, 1])})
    loss.backward()
    assert all(p.grad is None for p in tiny_bert.parameters() if not p.requires_grad)
    opt.step()
    for n, p in tiny_bert.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(not torch.equal(dict(tiny_bert.named_parameters())[n], v) for n, v in lora.items())


def test_dropout_only_touches_the_adapter_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16))
    ref = copy.deepcopy(model)
    pl.lora.apply(model, LoraConfig(r=4, dropout=0.5, targets=["0"]))
    model.train()
    x = torch.randn(8, 16)
    assert torch.equal(model(x), ref(x))          # B = 0: dropout changes nothing yet
    randomize_b(model)
    assert not torch.equal(model(x), model(x))    # train: the adapter input is dropped at random
    model.eval()
    assert torch.equal(model(x), model(x))


def test_same_seed_same_adapter(tiny_mlp):
    torch.manual_seed(3)
    a = pl.lora.apply(copy.deepcopy(tiny_mlp), LoraConfig(r=2, targets=["0"]))
    torch.manual_seed(3)
    b = pl.lora.apply(copy.deepcopy(tiny_mlp), LoraConfig(r=2, targets=["0"]))
    assert torch.equal(a[0].lora_A.weight, b[0].lora_A.weight)
    bound = 1 / math.sqrt(8)                       # kaiming-uniform(a=sqrt 5) == U(-1/sqrt(d_in), ..)
    assert a[0].lora_A.weight.abs().max() <= bound and a[0].lora_A.weight.std() > 0.1 * bound


def test_adapters_follow_base_dtype():
    model = nn.Sequential(nn.Linear(4, 4)).double()
    pl.lora.apply(model, LoraConfig(r=2, targets=["0"]))
    assert model[0].lora_A.weight.dtype == torch.float64
    assert model(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64


# --- merge / unmerge / unload ----------------------------------------------------------------

def test_merge_twice_noop_unmerge_restores_unload_plain(tiny_bert):
    base = snapshot(tiny_bert)
    ids = torch.randint(0, 100, (2, 7))
    pl.lora.apply(tiny_bert, LoraConfig(r=4, alpha=8, targets="all-linear"))
    randomize_b(tiny_bert)
    out = tiny_bert(input_ids=ids).logits
    q = tiny_bert.bert.encoder.layer[0].attention.self.query
    w0 = q.base_layer.weight.clone()
    pl.lora.merge(tiny_bert)
    assert q.merged
    torch.testing.assert_close(q.base_layer.weight, w0 + 2.0 * q.lora_B.weight @ q.lora_A.weight)
    once = snapshot(tiny_bert)
    pl.lora.merge(tiny_bert)
    assert same_state(tiny_bert, once)
    torch.testing.assert_close(tiny_bert(input_ids=ids).logits, out, atol=1e-5, rtol=1e-5)
    pl.lora.unmerge(tiny_bert)
    assert not q.merged
    torch.testing.assert_close(q.base_layer.weight, w0, atol=1e-6, rtol=0)
    pl.lora.unmerge(tiny_bert)                               # unmerge twice: no-op too
    torch.testing.assert_close(q.base_layer.weight, w0, atol=1e-6, rtol=0)
    pl.lora.merge(tiny_bert, unload=True)
    assert not pl.lora.lora_layers(tiny_bert) and pl.core.get_method(tiny_bert) is None
    assert set(tiny_bert.state_dict()) == set(base)
    torch.testing.assert_close(tiny_bert(input_ids=ids).logits, out, atol=1e-5, rtol=1e-5)
    pl.lora.apply(tiny_bert, LoraConfig(r=2, targets=["query"]))     # plain again


def test_unload_without_merge_gives_back_the_base(tiny_bert):
    base = snapshot(tiny_bert)
    pl.lora.apply(tiny_bert, LoraConfig(r=4, targets=["query", "word_embeddings"]))
    randomize_b(tiny_bert)
    pl.lora.merge(tiny_bert)
    pl.lora.unload(tiny_bert, merge=False)
    now = tiny_bert.state_dict()
    assert set(now) == set(base)
    for k in base:
        torch.testing.assert_close(now[k], base[k], atol=1e-6, rtol=0)


def test_delta_weight_and_spectrum(tiny_bert):
    pl.lora.apply(tiny_bert, LoraConfig(r=3, alpha=6, targets=["value"]))
    randomize_b(tiny_bert)
    spec = pl.lora.spectrum(tiny_bert)
    assert list(spec) == [f"bert.encoder.layer.{i}.attention.self.value" for i in range(2)]
    layer = tiny_bert.bert.encoder.layer[0].attention.self.value
    d = pl.lora.delta_weight(layer)
    assert d.shape == (32, 32) and not d.requires_grad
    full = torch.linalg.svdvals(d)
    torch.testing.assert_close(spec["bert.encoder.layer.0.attention.self.value"], full[:3])
    assert full[3:].max() < 1e-5 * full[0]                      # rank 3, no more
    with pytest.raises(TypeError, match="LoRA layer"):
        pl.lora.delta_weight(tiny_bert.classifier)


def test_merge_without_lora_raises(tiny_mlp):
    with pytest.raises(ValueError, match="no LoRA layers"):
        pl.lora.merge(tiny_mlp)


# --- bad inputs: a clear error, and the model unchanged -----------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"r": 0}, "positive int"), ({"r": -2}, "positive int"), ({"r": 2.5}, "positive int"),
    ({"alpha": 0}, "alpha must be a positive"), ({"alpha": -1.0}, "alpha"),
    ({"alpha": float("nan")}, "alpha"), ({"dropout": 1.0}, "dropout"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**kwargs)


@pytest.mark.parametrize("config, exc, match", [
    (LoraConfig(r=33, targets=["query"]), ValueError, r"r=33 is larger .*at most 32"),
    (LoraConfig(r=2, targets=["nonexistent"]), TargetError, r"matched no module.*query.*Linear"),
    (LoraConfig(r=2, targets=["LayerNorm"]), TargetError, "can wrap Linear, Conv2d, Embedding"),
    (LoraConfig(r=2, targets=["query"], modules_to_save=["nope"]), TargetError, "nope"),
    (LoraConfig(r=2, targets=["classifier"], modules_to_save=["classifier"]), TargetError,
     "both a LoRA target"),
    (LoraConfig(r=2, targets=["re:("]), TargetError, "not a valid regular expression"),
])
def test_bad_targets_leave_model_unchanged(tiny_bert, config, exc, match):
    snap = snapshot(tiny_bert)
    grads = [p.requires_grad for p in tiny_bert.parameters()]
    with pytest.raises(exc, match=match):
        pl.lora.apply(tiny_bert, config)
    assert same_state(tiny_bert, snap)
    assert grads == [p.requires_grad for p in tiny_bert.parameters()]
    assert pl.core.get_method(tiny_bert) is None
    with pytest.raises(exc):
        pl.lora.count_parameters(tiny_bert, config)


def test_rank_limit_for_embedding_and_grouped_conv():
    model = nn.Sequential(nn.Embedding(3, 10), nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="at most 3"):
        pl.lora.apply(model, LoraConfig(r=4, targets=["0"]))
    with pytest.raises(TargetError, match="groups=2"):
        pl.lora.apply(model, LoraConfig(r=1, targets=["1"]))
    assert not pl.lora.lora_layers(model)


def test_double_apply_raises(tiny_bert):
    pl.lora.apply(tiny_bert, LoraConfig(r=2, targets=["query"]))
    snap = snapshot(tiny_bert)
    with pytest.raises(AlreadyAdaptedError, match="already carries a peftlab 'lora'"):
        pl.lora.apply(tiny_bert, LoraConfig(r=2, targets=["value"]))
    with pytest.raises(AlreadyAdaptedError, match="already carries"):
        pl.full.apply(tiny_bert, pl.full.FullConfig(mode="head"))
    assert same_state(tiny_bert, snap)


def test_lora_after_another_method_raises(tiny_bert):
    pl.full.apply(tiny_bert, pl.full.FullConfig(mode="bitfit"))
    with pytest.raises(AlreadyAdaptedError, match="'full'"):
        pl.lora.apply(tiny_bert, LoraConfig(r=2, targets=["query"]))
    assert not pl.lora.lora_layers(tiny_bert)


def test_apply_rejects_other_config_types(tiny_mlp):
    with pytest.raises(TypeError, match="LoraConfig"):
        pl.lora.apply(tiny_mlp, pl.full.FullConfig())


def test_layer_repr_and_isinstance(tiny_mlp):
    pl.lora.apply(tiny_mlp, LoraConfig(r=2, alpha=4, targets=["0"]))
    assert isinstance(tiny_mlp[0], LoraLayer)
    assert "r=2, alpha=4, scale=2, merged=False" in repr(tiny_mlp[0])


def test_plots_draw_without_changing_the_model(tiny_bert):
    import matplotlib
    matplotlib.use("Agg")
    from peftlab.plots import lora as lora_plots

    snap = snapshot(tiny_bert)
    fig = lora_plots.params_vs_rank(tiny_bert, ["query"], ranks=(1, 2, 4))
    assert same_state(tiny_bert, snap) and pl.core.get_method(tiny_bert) is None
    assert len(fig.axes[0].lines[0].get_xdata()) == 3
    pl.lora.apply(tiny_bert, LoraConfig(r=2, targets=["query"]))
    randomize_b(tiny_bert)
    assert len(lora_plots.spectrum(pl.lora.spectrum(tiny_bert)).axes[0].lines) == 2
    layer = tiny_bert.bert.encoder.layer[0].attention.self.query
    assert lora_plots.delta(pl.lora.delta_weight(layer)).axes
    assert lora_plots.loss_curves({"a": [{"loss": 1.0}] * 8, "b": [0.5] * 3}).axes[0].lines


# --- models users bring: tied weights, heads, half precision, per-layer ranks ----------------

def test_merge_of_a_tied_embedding_keeps_outputs_and_unmerge_reties(tiny_gpt2, tmp_path):
    """LoRA on GPT-2's wte, whose matrix lm_head also reads: merging must not write the update
    into the head (it did: logits moved by ~0.6 on this tiny model)."""
    ids = torch.randint(0, 100, (2, 6))
    wte = tiny_gpt2.transformer.wte.weight
    pl.lora.apply(tiny_gpt2, LoraConfig(r=4, targets=["wte", "c_attn"]))
    randomize_b(tiny_gpt2)
    with torch.no_grad():
        want = tiny_gpt2(input_ids=ids).logits
    pl.lora.merge(tiny_gpt2)
    layer = tiny_gpt2.transformer.wte
    assert layer.merged and layer.untied and tiny_gpt2.lm_head.weight is wte
    with torch.no_grad():
        torch.testing.assert_close(tiny_gpt2(input_ids=ids).logits, want, atol=1e-5, rtol=0)
    w0 = wte.clone()
    pl.lora.unmerge(tiny_gpt2)
    assert layer.base_layer.weight is wte is tiny_gpt2.lm_head.weight     # the tie is back
    assert torch.equal(wte, w0)
    pl.lora.unload(tiny_gpt2, merge=True)
    assert tiny_gpt2.config.tie_word_embeddings is False
    assert tiny_gpt2.transformer.wte.weight is not tiny_gpt2.lm_head.weight
    assert torch.equal(tiny_gpt2.lm_head.weight, w0)                      # the head is the base's
    with torch.no_grad():
        torch.testing.assert_close(tiny_gpt2(input_ids=ids).logits, want, atol=1e-5, rtol=0)
    tiny_gpt2.save_pretrained(tmp_path)                  # untied on disk too: same outputs back
    again = type(tiny_gpt2).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, want, atol=1e-5, rtol=0)


def test_unload_without_merge_restores_trained_modules_to_save(tiny_bert):
    """modules_to_save train the real head in place; unload(merge=False) must put the base
    model's head back (HF PEFT keeps a copy of the original module for this)."""
    base = snapshot(tiny_bert)
    ids = torch.randint(0, 100, (4, 7))
    pl.lora.apply(tiny_bert, LoraConfig(r=2, targets=["query"]))
    opt = torch.optim.SGD([p for p in tiny_bert.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        F.cross_entropy(tiny_bert(input_ids=ids).logits, torch.tensor([0, 1, 1, 0])).backward()
        opt.step()
        opt.zero_grad()
    assert not torch.equal(tiny_bert.classifier.weight, base["classifier.weight"])
    twin = copy.deepcopy(tiny_bert)
    pl.lora.unload(tiny_bert, merge=False)
    assert same_state(tiny_bert, base)                                    # bit for bit
    pl.lora.unload(twin, merge=True)                                      # the trained head stays
    assert not torch.equal(twin.classifier.weight, base["classifier.weight"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adapters_are_fp32_on_half_bases_and_outputs_keep_the_base_dtype(dtype):
    """As HF PEFT: fp32 adapters on fp16/bf16 bases (GradScaler refuses fp16 gradients), the
    update cast back so the layer returns the base dtype."""
    torch.manual_seed(0)
    model = TinyCNN().to(dtype)
    pl.lora.apply(model, LoraConfig(r=2, targets=["conv", "fc", "emb"], modules_to_save=[]))
    randomize_b(model)
    for m in pl.lora.lora_layers(model).values():
        assert all(p.dtype == torch.float32 for n, p in m.named_parameters() if "lora_" in n)
        assert m.base_layer.weight.dtype == dtype
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    out = model(x)
    assert out.dtype == dtype and model.emb(torch.tensor([[1, 2]])).dtype == dtype
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scaler.scale(out.float().sum()).backward()
    assert model.fc.lora_A.weight.grad.dtype == torch.float32
    scaler.unscale_(opt)                    # raised "Attempting to unscale FP16 gradients"
    opt.zero_grad()
    want = model(x).float()
    pl.lora.merge(model)
    torch.testing.assert_close(model(x).float(), want, atol=0.05, rtol=0.05)


def test_embedding_max_norm_applies_to_the_adapted_rows():
    """nn.Embedding(max_norm=...) renormalises looked-up rows; the LoRA path ignored it, so
    merged and unmerged outputs differed and rows exceeded max_norm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(12, 6, max_norm=1.0))
    with torch.no_grad():
        model[0].weight.mul_(0.3)                            # most rows below max_norm
    pl.lora.apply(model, LoraConfig(r=2, targets=["0"], modules_to_save=[]))
    with torch.no_grad():
        model[0].lora_embedding_A.normal_()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    out = model(ids)
    assert (out.norm(dim=-1) <= 1.0 + 1e-5).all() and (out.norm(dim=-1) > 0.99).any()
    pl.lora.merge(model)
    torch.testing.assert_close(model(ids), out, atol=1e-5, rtol=0)


def test_rank_and_alpha_pattern(tiny_bert, tmp_path):
    cfg = LoraConfig(r=4, alpha=8, targets=["query", "value"],
                     rank_pattern={"layer.1.attention.self.query": 2},
                     alpha_pattern={"layer.1.attention.self.query": 6})
    pl.lora.apply(tiny_bert, cfg)
    q1 = tiny_bert.bert.encoder.layer[1].attention.self.query
    q0 = tiny_bert.bert.encoder.layer[0].attention.self.query
    assert (q1.r, q1.scale, q0.r, q0.scale) == (2, 3.0, 4, 2.0)
    assert pl.lora.count_parameters(tiny_bert.__class__(tiny_bert.config), cfg) == 3 * 4 * 64 + 2 * 64
    with pytest.raises(TargetError, match="'nowhere' matches no LoRA target"):
        pl.lora.apply(copy.deepcopy(tiny_bert).__class__(tiny_bert.config),
                      LoraConfig(r=2, targets=["query"], rank_pattern={"nowhere": 1}))
    with pytest.raises(ValueError, match=r"rank_pattern\['q'\] must be a positive int"):
        LoraConfig(rank_pattern={"q": 0})


def test_lora_from_adalora_with_uneven_ranks_saves_and_loads(tiny_bert, tmp_path):
    """AdaLoRA -> to_lora keeps different ranks per layer; save_adapter recorded one r and
    load_adapter refused its own file (both formats)."""
    from peft import PeftModel

    fresh = copy.deepcopy(tiny_bert)
    pl.adalora.apply(tiny_bert, pl.adalora.AdaLoraConfig(init_r=4, target_r=2,
                                                         targets=["query", "value"],
                                                         total_steps=10))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, layer in enumerate(pl.adalora.layers(tiny_bert).values()):
            layer.lora_lambda.copy_(torch.randn(4, generator=g))
            layer.lora_mask.copy_(torch.arange(4) <= i % 4)         # ranks 1, 2, 3, 4
            layer.lora_lambda.masked_fill_(~layer.lora_mask, 0.0)
    pl.adalora.to_lora(tiny_bert)
    ranks = {n: m.r for n, m in pl.lora.lora_layers(tiny_bert).items()}
    assert sorted(ranks.values()) == [1, 2, 3, 4]
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        want = tiny_bert(input_ids=ids).logits
    for fmt in ("peftlab", "hf-peft"):
        pl.save_adapter(tiny_bert, tmp_path / fmt, format=fmt)
        loaded = pl.load_adapter(copy.deepcopy(fresh), tmp_path / fmt)
        assert {n: m.r for n, m in pl.lora.lora_layers(loaded).items()} == ranks
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=ids).logits, want, atol=1e-6, rtol=0)
    hf = PeftModel.from_pretrained(copy.deepcopy(fresh), tmp_path / "hf-peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, want, atol=1e-5, rtol=0)

"""Mixed precision: the choice of format on each kind of CPU, and what stays float32."""

from __future__ import annotations

import warnings

import pytest
import torch

import peftlab as pl
from peftlab.train import precision as P


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setenv(P.FORCE_ENV, "0")


@pytest.fixture
def with_bf16(monkeypatch):
    monkeypatch.setenv(P.FORCE_ENV, "1")


def _data(n=3):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


def test_detection_reads_the_cpu_and_can_be_forced(monkeypatch):
    info = P.cpu_bf16_support()
    assert set(info) == {"supported", "flags", "source", "isa", "processor"}
    assert info["supported"] == bool(info["flags"]) or info["source"].startswith("$")
    monkeypatch.setenv(P.FORCE_ENV, "1")
    assert P.cpu_bf16_support()["supported"] is True
    monkeypatch.setenv(P.FORCE_ENV, "0")
    assert P.cpu_bf16_support()["supported"] is False


def test_cpu_without_bf16_runs_fp32_with_a_note(no_bf16):
    p = P.resolve_precision("bf16", "cpu")
    assert p.name == "fp32" and p.dtype is None and "no bf16 instructions" in p.note
    auto = P.resolve_precision("auto", "cpu")
    assert auto.name == "fp32" and auto.note == ""        # auto never complains
    assert P.resolve_precision("fp32", "cpu", amp=True).requested == "auto"   # amp=True synonym


def test_cpu_with_bf16_uses_bf16_autocast(with_bf16):
    p = P.resolve_precision("bf16", "cpu")
    assert p.name == "bf16" and p.dtype == torch.bfloat16 and not p.scaler and not p.note
    lin = torch.nn.Linear(4, 4)
    with p.autocast(torch.device("cpu")):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16


def test_auto_picks_bf16_only_where_it_is_measured_faster(with_bf16, monkeypatch):
    monkeypatch.setattr(P, "_bf16_faster_on_cpu", lambda: False)
    assert P.resolve_precision("auto", "cpu").name == "fp32"
    monkeypatch.setattr(P, "_bf16_faster_on_cpu", lambda: True)
    assert P.resolve_precision("auto", "cpu").name == "bf16"


@pytest.mark.parametrize("bad, match", [("fp8", "must be one of"), ("fp16", "needs a CUDA GPU")])
def test_bad_precision_is_refused_before_training(tiny_mlp, bad, match):
    pl.full.apply(tiny_mlp, pl.full.FullConfig())
    before = {k: v.clone() for k, v in tiny_mlp.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        pl.train.fit(tiny_mlp, _data(), precision=bad, progress=False)
    assert all(torch.equal(before[k], v) for k, v in tiny_mlp.state_dict().items())


def test_requesting_bf16_without_support_trains_exactly_like_fp32(tiny_mlp, no_bf16):
    import copy
    a, b = copy.deepcopy(tiny_mlp), copy.deepcopy(tiny_mlp)
    for m in (a, b):
        pl.full.apply(m, pl.full.FullConfig())
    ra = pl.train.fit(a, _data(), progress=False)
    with pytest.warns(UserWarning, match="no bf16 instructions"):
        rb = pl.train.fit(b, _data(), precision="bf16", progress=False)
    assert rb.precision == "fp32" == ra.precision
    assert [h["loss"] for h in ra.history] == [h["loss"] for h in rb.history]


def test_bf16_run_keeps_weights_adapters_optimizer_and_scores_in_fp32(tiny_bert, with_bf16):
    """AdaLoRA under bf16 autocast: parameters, gradients, optimizer state and the
    importance EMAs stay float32 and finite; the matrix products ran in bf16."""
    cfg = pl.adalora.AdaLoraConfig(init_r=4, target_r=2, targets=["query", "value"],
                                   total_steps=4, tinit=1, tfinal=1)
    pl.adalora.apply(tiny_bert, cfg)
    seen = []
    q = tiny_bert.bert.encoder.layer[0].attention.self.query.base_layer
    q.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    ids = torch.randint(1, 100, (8, 6))
    data = [{"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.randint(0, 2, (8,))}] * 4
    grads = []
    res = pl.train.fit(tiny_bert, data, precision="bf16", progress=False, lr=1e-2,
                       callbacks=[lambda s: grads.extend(p.grad.dtype for p in s.model.parameters()
                                                         if p.grad is not None)])
    assert res.precision == "bf16" and torch.bfloat16 in seen
    assert all(p.dtype == torch.float32 for p in tiny_bert.parameters())
    assert grads and all(d == torch.float32 for d in grads)
    for layer in pl.adalora.layers(tiny_bert).values():
        assert layer.ipt_lambda.dtype == torch.float32 and torch.isfinite(layer.ipt_lambda).all()
        assert layer.ipt_lambda.abs().sum() > 0
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)


def test_announce_is_one_line():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        P.announce(P.Precision("fp32", "bf16", note="x"))
        P.announce(P.Precision("fp32", "fp32"))
    assert len(w) == 1 and "\n" not in str(w[0].message)

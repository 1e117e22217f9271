"""LoRA's fused step (peftlab/core/lowrank.py): the same outputs and gradients as the module
path (base(x) + lora_B(lora_A(x)) * scale, what HF PEFT runs), and taken only when nothing else
(dropout, casts, autocast, hooks, merged weights, mixed batches) is asked for."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftlab as pl
from peftlab.core.lowrank import lowrank_linear
from peftlab.lora.lora import LoraLayer, LoraLinear


def layer_of(kind: str, bias: bool = True, alpha: float = 6.0) -> LoraLinear:
    torch.manual_seed(0)
    base = nn.Linear(12, 10, bias=bias) if kind == "linear" else Conv1D(10, 12)
    layer = LoraLinear(base, r=4, alpha=alpha)          # scale 1.5: not a power of two
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    return layer.requires_grad_(False).train()


def fused_name(y: torch.Tensor) -> str:
    return type(y.grad_fn).__name__


@pytest.mark.parametrize("kind, bias", [("linear", True), ("linear", False), ("conv1d", True)])
def test_fused_step_matches_the_module_path(kind, bias):
    layer = layer_of(kind, bias)
    for p in (layer.lora_A.weight, layer.lora_B.weight):
        p.requires_grad_(True)
    if bias:
        layer.base_layer.bias.requires_grad_(True)       # a trained bias gets its gradient too
    x = torch.randn(3, 5, 12, requires_grad=True)
    g = torch.randn(3, 5, 10)
    results = []
    for forward in (layer.forward, lambda t: LoraLayer.forward(layer, t)):   # fused | modules
        y = forward(x)
        y.backward(g)
        params = [layer.lora_A.weight, layer.lora_B.weight] + ([layer.base_layer.bias] if bias
                                                                else [])
        results.append((y.detach(), fused_name(y), x.grad.clone(),
                        [p.grad.clone() for p in params]))
        x.grad = None
        for p in params:
            p.grad = None
    (y1, name1, gx1, gp1), (y2, name2, gx2, gp2) = results
    assert name1 == "_LowRankLinearBackward" and name2 != name1
    # the same products; only where the scale (1.5) multiplies may round differently
    torch.testing.assert_close(y1, y2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx1, gx2, rtol=1e-6, atol=1e-6)
    for a, b in zip(gp1, gp2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_zero_update_leaves_the_base_output_bit_for_bit():
    layer = layer_of("linear")
    with torch.no_grad():
        layer.lora_B.weight.zero_()
    x = torch.randn(4, 12)
    assert torch.equal(layer(x), layer.base_layer(x))


def test_function_without_grad_mode_and_frozen_inputs():
    torch.manual_seed(0)
    x, w, a, b = torch.randn(6, 5), torch.randn(4, 5), torch.randn(2, 5), torch.randn(4, 2)
    with torch.no_grad():
        y = lowrank_linear(x, w, None, a, b, 0.5)
    torch.testing.assert_close(y, x @ w.T + 0.5 * (x @ a.T) @ b.T)


@pytest.mark.parametrize("kind, bias", [("linear", True), ("linear", False), ("conv1d", True)])
def test_inference_skips_the_autograd_function_with_the_same_numbers(kind, bias):
    """Without grad (decoding) lowrank_linear runs the same matmuls outside the Function: no
    graph node, and bit for bit the outputs the Function gives when a gradient is recorded."""
    layer = layer_of(kind, bias)
    layer.lora_A.weight.requires_grad_(True)
    x = torch.randn(3, 7, 12)
    recorded = layer(x)
    assert fused_name(recorded) == "_LowRankLinearBackward"
    with torch.no_grad():
        plain = layer(x)
    assert plain.grad_fn is None and torch.equal(plain, recorded.detach())
    layer.lora_A.weight.requires_grad_(False)
    frozen = layer(x)                                   # grad mode on, nothing requires grad
    assert frozen.grad_fn is None and torch.equal(frozen, recorded.detach())


@pytest.mark.parametrize("case", ["dropout", "autocast", "half_base", "merged", "other_adapter",
                                  "hook", "trained_weight"])
def test_the_module_path_where_the_fused_step_does_not_apply(case):
    layer = layer_of("linear")
    x = torch.randn(2, 12)
    if case == "dropout":
        layer = LoraLinear(nn.Linear(12, 10).requires_grad_(False), r=4, alpha=4,
                           dropout=0.5).train()
        x.requires_grad_(True)
    elif case == "half_base":
        layer = LoraLinear(nn.Linear(12, 10).to(torch.bfloat16), r=4, alpha=4)
        x = x.to(torch.bfloat16).requires_grad_(True)
    elif case == "merged":
        layer.merge()
        x.requires_grad_(True)
    elif case == "other_adapter":
        layer.add_adapter("b", layer.make_parts(2, 2.0))
        layer.active = "b"
        x.requires_grad_(True)
    elif case == "hook":
        layer.base_layer.register_forward_hook(lambda m, i, o: o * 2)
        x.requires_grad_(True)
    elif case == "trained_weight":
        layer.base_layer.weight.requires_grad_(True)
    if case == "autocast":
        x.requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
    else:
        y = layer(x)
    assert fused_name(y) != "_LowRankLinearBackward"
    if case == "hook":       # the module path runs the base layer, hook included
        torch.testing.assert_close(y, layer.base_layer(x) + layer._update(layer, x))
    if case == "dropout":
        layer.eval()         # dropout is off in eval mode: fused again
        assert fused_name(layer(x)) == "_LowRankLinearBackward"


def test_model_training_matches_the_module_path(tiny_bert):
    """Three SGD steps with the fused LoRA layers equal three with the module path."""
    pl.lora.apply(tiny_bert, pl.lora.LoraConfig(r=4, alpha=6, targets=["query", "value"]))
    twin = copy.deepcopy(tiny_bert)
    for layer in twin.modules():
        if isinstance(layer, LoraLinear):
            layer.forward = lambda x, layer=layer: LoraLayer.forward(layer, x)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (4, 10), generator=g)
    labels = torch.randint(0, 2, (4,), generator=g)
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
            for m in (tiny_bert, twin)]
    for _ in range(3):
        for m, opt in zip((tiny_bert, twin), opts):
            m.eval()                                       # no dropout: same numbers
            nn.functional.cross_entropy(m(input_ids=ids).logits, labels).backward()
            opt.step()
            opt.zero_grad()
    for (n, p), q in zip(tiny_bert.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=n)
    assert tiny_bert.bert.encoder.layer[0].attention.self.query.lora_B.weight.abs().max() > 0

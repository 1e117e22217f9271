"""The two seams of issue 25: a LoRA variant is one class behind peftlab/lora/variants.py, and
a new kind of base layer is one entry in peftlab/core/base.py.

- A DoRA-shaped toy variant (a learned per-output-column scale m on the adapted weight,
  y = m * ((W + s B A) x) + b) plugs in as one class: it starts at the base model, trains,
  merges to the same outputs, saves and loads, and unloads to the base bit for bit.
- A toy base layer (a Linear that stores its weight transposed, with no `.weight`) plugs in as
  one BaseKind: LoRA wraps it ("all-linear" finds it), merges into it, measure counts it, and
  selection trains it; unload gives it back bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import peftlab as pl
from peftlab.core import base as base_seam
from peftlab.lora import variants


# --- the toy variant: one class -------------------------------------------------------------

class ColumnScale(variants.LoraVariant):
    """y = m * ((W + s B A) x) + b, m a learned (d_out,) scale starting at 1."""

    name = "toy_column_scale"

    def build(self, layer, p):
        d_out = layer.lora_B.weight.shape[0] if p is layer else p.lora_B.weight.shape[0]
        p.lora_column_scale = nn.Parameter(torch.ones(d_out, dtype=p.lora_B.weight.dtype,
                                                      device=p.lora_B.weight.device))

    def update(self, layer, p, x, y):
        b = layer.base_layer.bias
        core = y - b if b is not None else y                     # W x
        out = (core + layer._update(p, x).to(y.dtype)) * p.lora_column_scale.to(y.dtype)
        return out + b if b is not None else out

    def delta(self, layer, p):
        w = base_seam.base_weight(layer.base_layer).float()      # (d_out, d_in)
        adapted = w + layer._delta(p)
        return adapted * p.lora_column_scale.float()[:, None] - w

    def unmerge_delta(self, layer, p):                           # W' = m (W + s B A)
        merged = base_seam.base_weight(layer.base_layer).float()
        return merged - (merged / p.lora_column_scale.float()[:, None] - layer._delta(p))


@pytest.fixture
def toy_variant():
    variants.register(ColumnScale)
    yield ColumnScale.name
    variants.VARIANTS.pop(ColumnScale.name)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_a_variant_is_one_class_through_the_protocol(toy_variant, tmp_path):
    base = mlp()
    model = copy.deepcopy(base)
    x = torch.randn(5, 6)
    want = base(x)
    cfg = pl.lora.LoraConfig(r=2, alpha=4, targets=["0", "2"], modules_to_save=[],
                             variant=toy_variant)
    pl.lora.apply(model, cfg)
    assert torch.equal(model(x), want)                           # starts at the base model
    scales = [n for n, p in model.named_parameters() if "lora_column_scale" in n]
    assert len(scales) == 2 and all(p.requires_grad for n, p in model.named_parameters()
                                    if n in scales)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    scale = model[0].lora_column_scale
    assert not torch.equal(scale, torch.ones_like(scale))        # m trained
    trained = model(x).detach()
    pl.lora.merge(model)
    torch.testing.assert_close(model(x), trained, atol=1e-5, rtol=1e-5)   # merge folds m in
    pl.lora.unmerge(model)
    torch.testing.assert_close(model(x), trained, atol=1e-5, rtol=0)

    with pytest.raises(pl.core.AdapterError, match="variant 'toy_column_scale'"):
        pl.save_adapter(model, tmp_path / "hf", format="hf-peft")
    assert not (tmp_path / "hf").exists()
    pl.save_adapter(model, tmp_path / "v")                       # lora_* tensors: saved
    loaded = pl.load_adapter(copy.deepcopy(base), tmp_path / "v")
    assert pl.core.get_config(loaded).variant == toy_variant
    assert torch.equal(loaded(x), trained)                       # the unmerged numbers

    pl.lora.unload(loaded)                                       # merge=False: the base back
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 base.state_dict().values()))


def test_an_unknown_variant_is_refused_before_anything_changes():
    with pytest.raises(ValueError, match="Unknown LoRA variant 'nope'; known: lora"):
        pl.lora.LoraConfig(variant="nope")


# --- the toy base layer: one dispatch entry ----------------------------------------------------

class TransposedLinear(nn.Module):
    """y = x @ weight_t + bias, weight_t stored (d_in, d_out): no `.weight` at all."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight_t = nn.Parameter(torch.randn(d_in, d_out) / d_in ** 0.5)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        return x @ self.weight_t + self.bias


def _add_transposed(m, delta):
    with torch.no_grad():
        m.weight_t.add_(delta.T.to(m.weight_t.dtype))


TOY_KIND = base_seam.BaseKind(
    "TransposedLinear", "linear", lambda m: isinstance(m, TransposedLinear),
    lambda m: tuple(m.weight_t.shape), lambda m: m.weight_t.T, _add_transposed,
    lambda m: m.weight_t.numel() * m.weight_t.element_size())


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = TransposedLinear(6, 8)
        self.down = TransposedLinear(8, 4)
        self.classifier = nn.Linear(4, 2)

    def forward(self, x):
        return self.classifier(torch.relu(self.down(torch.relu(self.up(x)))))


@pytest.fixture
def toy_kind():
    base_seam.register(TOY_KIND)
    yield TOY_KIND
    base_seam.unregister(TOY_KIND.name)


def test_a_new_base_layer_is_one_dispatch_entry(toy_kind, tmp_path):
    base = Toy()
    x = torch.randn(5, 6)
    want = base(x)
    model = copy.deepcopy(base)
    pl.lora.apply(model, pl.lora.LoraConfig(r=2, alpha=4, targets="all-linear"))
    assert sorted(pl.lora.lora_layers(model)) == ["down", "up"]    # all-linear found them
    assert torch.equal(model(x), want)
    with torch.no_grad():
        for layer in pl.lora.lora_layers(model).values():
            layer.lora_B.weight.normal_()
    adapted = model(x).detach()
    plain = copy.deepcopy(model)
    pl.lora.merge(model)                                          # through kind.add_
    torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=1e-5)
    pl.lora.unmerge(model)

    state = pl.measure.training_state_bytes(model, None)
    assert state["weights"] == sum(p.numel() * 4 for p in model.parameters())
    assert base_seam.weight_bytes(model.up.base_layer) == 6 * 8 * 4
    assert pl.measure.adapter_size(model) > 0

    pl.lora.unload(plain)                                         # never merged: bit for bit
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 base.state_dict().values()))


def test_selection_trains_the_toy_base_layer_and_gives_it_back(toy_kind):
    base = Toy()
    model = copy.deepcopy(base)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    pl.selection.apply(model, pl.selection.SelectionConfig(fraction=0.3), batches=[(x, y)],
                       loss_fn=loss_fn)
    mask = pl.selection.masks_of(model)["up.weight_t"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss_fn(model, (x, y)).backward()
    opt.step()
    w = model.up.weight_t.detach()
    assert torch.equal(w[~mask], base.up.weight_t[~mask])          # unselected: bit-identical
    assert not torch.equal(w[mask], base.up.weight_t[mask])
    pl.selection.unload(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 base.state_dict().values()))

"""The embedded vision default: checkpoint integrity, architecture, data splits, pretraining."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import peftlab as pl
from peftlab.models import vision as V

ROOT = Path(__file__).resolve().parent.parent


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def source():
    return V.digits_source()


# --- checkpoint ------------------------------------------------------------------------------

def test_checkpoint_scores_well_above_chance_on_source_test(source):
    model = pl.models.vision_classifier()
    acc = pl.train.evaluate(model, V.loader(source[1], 256))["accuracy"]
    assert acc > 0.95  # chance is 0.2; the sidecar records the measured value
    assert acc == pytest.approx(V.read_sidecar()["source_accuracy"]["test"], abs=1e-4)
    assert not model.training


def test_checkpoint_file_matches_its_sidecar():
    path = V.checkpoint_path()
    meta = V.read_sidecar()
    assert path.stat().st_size <= 10 * 2**20
    assert meta["sha256"] == pl.models.sha256_file(path)
    assert meta["architecture"] == V.ARCH
    assert meta["size_bytes"] == path.stat().st_size
    assert meta["num_parameters"] == pl.measure.count_parameters(V.vision_classifier())[1]
    assert (path.parent / "README.md").is_file()


def test_architecture_is_a_torchvision_resnet():
    model = V.vision_classifier()
    assert isinstance(model, torchvision.models.ResNet)
    assert isinstance(model.layer1[0], torchvision.models.resnet.BasicBlock)
    assert (model.conv1.in_channels, model.conv1.kernel_size, model.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert [getattr(model, f"layer{i}")[0].conv1.out_channels for i in range(1, 5)] == V.ARCH["widths"]
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 5)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert "layer1.0.conv1" in convs and len(convs) == 12  # stem + 8 block convs + 3 downsamples


def test_missing_checkpoint_raises_with_the_way_out(tmp_path):
    with pytest.raises(V.CheckpointError, match="make_vision_checkpoint.py") as e:
        V.vision_classifier(path=tmp_path / "nope.safetensors")
    assert "nope.safetensors" in str(e.value)
    shutil.copy(V.checkpoint_path(), tmp_path / "w.safetensors")   # weights without sidecar
    with pytest.raises(pl.models.ModelNotFoundError, match=r"w\.json"):
        V.vision_classifier(path=tmp_path / "w.safetensors")


def test_sha256_mismatch_raises_with_the_way_out(tmp_path):
    p = tmp_path / "w.safetensors"
    shutil.copy(V.checkpoint_path(), p)
    shutil.copy(V.checkpoint_path().with_suffix(".json"), tmp_path / "w.json")
    assert isinstance(V.vision_classifier(path=p), torchvision.models.ResNet)  # intact copy loads
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF                                   # one flipped byte in the last tensor
    p.write_bytes(bytes(raw))
    with pytest.raises(V.CheckpointError, match="Checksum mismatch") as e:
        V.vision_classifier(path=p)
    assert V.REGENERATE in str(e.value) and "git checkout" in str(e.value)


def test_broken_sidecar_raises(tmp_path):
    p = tmp_path / "w.safetensors"
    shutil.copy(V.checkpoint_path(), p)
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(V.CheckpointError, match="not valid JSON"):
        V.vision_classifier(path=p)
    (tmp_path / "w.json").write_text('{"architecture": {}}')
    with pytest.raises(V.CheckpointError, match="lacks 'sha256'"):
        V.vision_classifier(path=p)


def test_new_head_is_seeded_and_leaves_body_and_global_rng_alone():
    base = _state(V.vision_classifier())
    rng = torch.get_rng_state()
    a, b = V.vision_classifier(3, seed=1), V.vision_classifier(3, seed=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert _same(_state(a), _state(b))
    assert a.fc.out_features == 3
    assert not torch.equal(a.fc.weight, V.vision_classifier(3, seed=2).fc.weight)
    body = {k: v for k, v in _state(a).items() if not k.startswith("fc.")}
    assert _same(body, {k: v for k, v in base.items() if not k.startswith("fc.")})


@pytest.mark.parametrize("bad", [0, -1, "5", 2.0, True])
def test_bad_num_classes_raises(bad):
    with pytest.raises(ValueError, match="num_classes"):
        V.vision_classifier(bad)


def test_scratch_model_is_seeded_and_not_pretrained():
    a, b = V.vision_classifier(pretrained=False, seed=3), V.vision_classifier(pretrained=False, seed=3)
    assert _same(_state(a), _state(b))
    assert not torch.equal(a.conv1.weight, V.vision_classifier().conv1.weight)


# --- data -----------------------------------------------------------------------------------

def test_source_split_sizes_and_labels(source):
    train, test = source
    assert (len(train), len(test)) == (721, 180)
    assert Counter(test.tensors[1].tolist()) == {c: 36 for c in range(5)}
    assert set(train.tensors[1].tolist()) == {0, 1, 2, 3, 4}
    assert train.tensors[0].shape[1:] == (1, 8, 8) and train.tensors[0].dtype == torch.float32
    x = train.tensors[0]
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3  # PIXEL_MEAN / STD


@pytest.mark.parametrize("shots", [10, 20])
def test_transfer_split_sizes_and_labels(shots):
    train, test = V.digits_transfer(shots_per_class=shots, seed=0)
    assert (len(train), len(test)) == (5 * shots, 896 - 5 * shots)
    assert Counter(train.tensors[1].tolist()) == {c: shots for c in range(5)}
    assert set(test.tensors[1].tolist()) == {0, 1, 2, 3, 4}
    x, y = V.digits_arrays()
    digits = x[(y >= 5)]                            # every target image is in exactly one split
    both = torch.cat([train.tensors[0], test.tensors[0]]).double()
    assert torch.allclose(both.sum(0), digits.double().sum(0), atol=1e-6)


@pytest.mark.parametrize("shots, seed", [(10, 0), (20, 1)])
def test_validation_and_test_split_the_held_out_pool(shots, seed):
    """digits_splits: train untouched, 20 per class of the held-out pool for validation, the
    rest for test, pairwise disjoint, all of the pool used; the same positions as compare's."""
    train, pool = V.digits_transfer(shots, seed)
    tr, val, test = V.digits_splits(shots, seed)
    assert torch.equal(tr.tensors[0], train.tensors[0])
    assert (len(val), len(test)) == (100, 896 - 5 * shots - 100)
    assert Counter(val.tensors[1].tolist()) == {c: V.VAL_PER_CLASS for c in range(5)}
    rows = [{tuple(r) for r in ds.tensors[0].flatten(1).tolist()} for ds in (tr, val, test)]
    assert not rows[0] & rows[1] and not rows[0] & rows[2] and not rows[1] & rows[2]
    both = torch.cat([val.tensors[0], test.tensors[0]]).double()
    assert torch.allclose(both.sum(0), pool.tensors[0].double().sum(0), atol=1e-6)
    vi, ti = V.held_out_split(pool, V.VAL_PER_CLASS, seed)
    assert torch.equal(val.tensors[0], pool.tensors[0][vi])
    assert torch.equal(test.tensors[0], pool.tensors[0][ti])


def test_transfer_split_depends_on_seed_only():
    a, b, c = (V.digits_transfer(10, s)[0].tensors[0] for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("bad", [0, 171, 2.5])
def test_bad_shots_raise(bad):
    with pytest.raises(ValueError, match="shots_per_class"):
        V.digits_transfer(bad)


def test_shift_augment_moves_pixels_by_one(source):
    train = source[0]
    aug = V.shift_augment(train)
    n, x = len(train), train.tensors[0]
    assert len(aug) == 5 * n and torch.equal(aug.tensors[1][:n], aug.tensors[1][n:2 * n])
    right = aug.tensors[0][n:2 * n]                 # first copy: shifted one pixel right
    assert torch.equal(right[..., 1:], x[..., :-1])
    assert torch.allclose(right[..., 0], torch.tensor(-V.PIXEL_MEAN / V.PIXEL_STD))


def test_transfer_task_gives_model_and_loaders():
    model, train, test = V.transfer_task(shots_per_class=10, seed=0, batch_size=16)
    x, y = next(iter(train))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,)
    assert model(x).shape == (16, 5)
    assert sum(len(b[1]) for b in test) == 746                    # the test split


def test_head_only_training_leaves_the_frozen_body_bitwise_unchanged():
    """GroupNorm has no running statistics: a frozen body really stays frozen in train mode."""
    model, train, _ = V.transfer_task(10, seed=0)
    body = {k: v for k, v in _state(model).items() if not k.startswith("fc.")}
    head = model.fc.weight.clone()
    pl.full.apply(model, pl.full.FullConfig(mode="head"))
    pl.train.fit(model, train, None, max_steps=3, lr=1e-2, device="cpu", progress=False)
    after = _state(model)
    assert _same(body, {k: after[k] for k in body})
    assert not torch.equal(head, model.fc.weight)


# --- pretraining ----------------------------------------------------------------------------

def test_pretraining_is_deterministic():
    cfg = V.PretrainConfig(max_steps=3, batch_size=32)
    threads = torch.get_num_threads()
    (a, ia), (b, _) = V.pretrain(cfg), V.pretrain(cfg)
    assert torch.get_num_threads() == threads          # the caller's setting is restored
    assert ia["steps"] == 3
    assert _same(_state(a), _state(b))
    c, _ = V.pretrain(V.PretrainConfig(max_steps=3, batch_size=32, seed=1))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_script_writes_a_loadable_checkpoint_with_a_true_sidecar(tmp_path):
    spec = importlib.util.spec_from_file_location("mk", ROOT / "data" / "make_vision_checkpoint.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    out = tmp_path / "ck.safetensors"
    meta = mk.make_checkpoint(out, V.PretrainConfig(max_steps=2))
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == pl.models.sha256_file(out)
    assert meta["training"]["steps"] == 2
    model = V.vision_classifier(path=out)
    assert isinstance(model, torchvision.models.ResNet)

"""The embedded vision default: a small torchvision ResNet pretrained on digits 0-4.

    model = pl.models.vision_classifier()            # pretrained, source head (digits 0-4)
    model = pl.models.vision_classifier(5)           # pretrained body, fresh 5-class head
    from peftlab.models import vision
    train, val, test = vision.digits_splits(shots_per_class=10, seed=0)   # digits 5-9
    model, train_loader, test_loader = vision.transfer_task(10, seed=0)

Why this model: every vision PEFT idea (LoRA on convolutions, gradient selection, head-only
probing) needs a *pretrained* network and a *different* task to transfer to, offline, on a
laptop CPU, in seconds. scikit-learn ships the UCI handwritten digits (1,797 images, 8x8,
grey levels 0-16). We pretrain on digits 0-4 (the source task) and transfer to digits 5-9
with a few labelled images per class (the target task).

The network is torchvision's own `ResNet` with `BasicBlock`s, sized for 8x8 images:
a 3x3 stride-1 stem and no max-pool (the ImageNet 7x7/2 stem + pool would shrink 8x8 to 2x2
at once), one block per stage, widths 16-32-64-128, about 0.3M parameters. Its norm layer
is GroupNorm, not BatchNorm: BatchNorm keeps *running statistics* as buffers that change in
train mode even when every parameter is frozen, so a "frozen" base would drift and an
adapter file would not capture the change. GroupNorm has no such state.

Shapes: images x (B, 1, 8, 8) float, standardised with the source-train pixel mean and std;
labels y (B,) int64 in 0..4 for both tasks (target labels are digit - 5).

The checkpoint is data/vision/resnet_digits.safetensors, made by
data/make_vision_checkpoint.py (deterministic); its JSON sidecar records the architecture,
the training settings, the source accuracy and the file's sha256, which loading verifies.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.resnet import BasicBlock, ResNet

from peftlab.data import data_dir
from peftlab.models.checksums import ModelNotFoundError, sha256_file

SOURCE_CLASSES = (0, 1, 2, 3, 4)       # digits the checkpoint was trained on
TARGET_CLASSES = (5, 6, 7, 8, 9)       # digits of the transfer task (labels = digit - 5)
SOURCE_TEST_PER_CLASS = 36             # source test split: 36 per class = 180; train: 721
SPLIT_SEED = 0                         # the source train/test split never changes
PIXEL_MEAN, PIXEL_STD = 0.3053, 0.3785  # of x/16 over the source train split (a test checks)
# the shipped architecture (also written to the sidecar, which is what loading uses)
ARCH = {"in_channels": 1, "widths": [16, 32, 64, 128], "blocks": [1, 1, 1, 1],
        "norm_groups": 8, "num_classes": len(SOURCE_CLASSES)}
REGENERATE = "python data/make_vision_checkpoint.py"
VAL_PER_CLASS = 20   # validation images per class, drawn from the held-out pool (rates: on them)
# the transfer runs measured in data/vision/README.md: AdamW, batch 16, 30 epochs, peak lr per
# method, chosen on the validation split by the committed sweep (notebooks/results/sweep_vision,
# `peftlab sweep --task vision`; tests/test_sweep.py keeps them equal); scratch: full's rate
TRANSFER_EPOCHS, TRANSFER_BATCH = 30, 16
TRANSFER_LR = {"head": 3e-2, "full": 3e-3, "lora": 1e-2, "selection": 1e-1, "scratch": 3e-3}


class CheckpointError(ModelNotFoundError):
    """The vision checkpoint or its sidecar is missing, or its sha256 differs from the record."""


# --- architecture ---------------------------------------------------------------------------

def build_resnet(num_classes: int = 5, in_channels: int = 1, widths=(16, 32, 64, 128),
                 blocks=(1, 1, 1, 1), norm_groups: int = 8) -> ResNet:
    """A torchvision ResNet for tiny images: 3x3 stem, no max-pool, GroupNorm, given widths.

    Spatial sizes for an 8x8 input: stem 8x8 -> layer1 8x8 -> layer2 4x4 -> layer3 2x2
    -> layer4 1x1 -> global average pool (B, widths[3]) -> fc (B, num_classes).
    """
    if len(widths) != 4 or len(blocks) != 4:
        raise ValueError(f"ResNet has 4 stages: widths and blocks need 4 entries each, got "
                         f"widths={list(widths)}, blocks={list(blocks)}.")
    if any(w % norm_groups for w in widths):
        raise ValueError(f"GroupNorm({norm_groups}) needs widths divisible by {norm_groups}; "
                         f"got {list(widths)}.")
    norm = partial(nn.GroupNorm, norm_groups)            # norm(C) -> GroupNorm(groups, C)
    # torchvision's ResNet-10 shape, then resized: its own _make_layer builds every stage
    model = ResNet(BasicBlock, list(blocks), num_classes=num_classes, norm_layer=norm)
    model.inplanes = widths[0]
    model.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1,
                            bias=False)
    model.bn1 = norm(widths[0])                          # keeps torchvision's attribute name
    model.maxpool = nn.Identity()
    for i, (w, b) in enumerate(zip(widths, blocks)):
        setattr(model, f"layer{i + 1}", model._make_layer(BasicBlock, w, b, stride=1 if i == 0 else 2))
    model.fc = nn.Linear(widths[3], num_classes)
    for m in model.modules():                            # torchvision's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _check_num_classes(num_classes) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (or None to keep the source "
                         f"head), got {num_classes!r}.")


def new_head(model: ResNet, num_classes: int, seed: int = 0) -> ResNet:
    """Replace `model.fc` by a fresh Linear(in, num_classes), seeded; the global RNG is untouched."""
    _check_num_classes(num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


# --- the checkpoint -------------------------------------------------------------------------

def checkpoint_path() -> Path:
    return data_dir() / "vision" / "resnet_digits.safetensors"


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | Path | None = None) -> dict:
    """The JSON record next to the checkpoint: architecture, sha256, training, accuracies."""
    path = Path(path) if path is not None else checkpoint_path()
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        missing = path if not path.is_file() else side
        raise CheckpointError(
            f"The vision checkpoint file {missing} is missing. Regenerate it (about 20 s on a "
            f"CPU) from the repository root with `{REGENERATE}`, restore it with "
            f"`git checkout -- data/vision`, or use vision_classifier(pretrained=False).")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"The sidecar {side} is not valid JSON ({e}); restore it with "
                              f"`git checkout -- data/vision` or regenerate with `{REGENERATE}`.") from e
    if not isinstance(meta, dict) or "sha256" not in meta or "architecture" not in meta:
        raise CheckpointError(f"The sidecar {side} lacks 'sha256' or 'architecture'; restore "
                              f"it with `git checkout -- data/vision` or regenerate with "
                              f"`{REGENERATE}`.")
    return meta


def load_checkpoint(path: str | Path | None = None) -> tuple[dict, dict]:
    """(state_dict, sidecar) of the checkpoint, after checking its sha256 against the sidecar."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else checkpoint_path()
    meta = read_sidecar(path)
    got = sha256_file(path)
    if got != meta.get("sha256"):
        raise CheckpointError(
            f"Checksum mismatch for {path}: its sidecar {sidecar_path(path).name} records "
            f"sha256 {meta.get('sha256')}, the file has {got}. The file is corrupted or was "
            f"changed: restore it with `git checkout -- data/vision`, or regenerate both files "
            f"with `{REGENERATE}`.")
    return load_file(str(path)), meta


def vision_classifier(num_classes: int | None = None, pretrained: bool = True, seed: int = 0,
                      path: str | Path | None = None) -> ResNet:
    """The project's ResNet (eval mode).

    num_classes: None keeps the source head (5 classes, digits 0-4); an int replaces `fc` by a
    fresh head seeded with `seed`. pretrained: False gives the same architecture, randomly
    initialised with `seed` (the "from scratch" baseline). path: another checkpoint file.
    """
    if num_classes is not None:
        _check_num_classes(num_classes)                  # validate before any work
    if pretrained:
        state, meta = load_checkpoint(path)
        with torch.random.fork_rng(devices=[]):
            model = build_resnet(**meta["architecture"])
        model.load_state_dict(state)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_resnet(**ARCH)
    if num_classes is not None:
        new_head(model, num_classes, seed)
    return model.eval()


# --- data -----------------------------------------------------------------------------------

def digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: x (N, 1, 8, 8) float32 standardised, y (N,) int64 digit 0-9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0   # (N, 1, 8, 8) in [0, 1]
    return (x - PIXEL_MEAN) / PIXEL_STD, torch.tensor(d.target, dtype=torch.long)


def _by_class(y: torch.Tensor, classes, seed: int) -> dict[int, list[int]]:
    """Indices of each class, shuffled by a seeded Python RNG (stable across versions)."""
    rng = random.Random(seed)
    out = {}
    for c in classes:
        idx = torch.nonzero(y == c).flatten().tolist()
        rng.shuffle(idx)
        out[c] = idx
    return out


def _subset(x, y, idx, offset: int) -> TensorDataset:
    idx = torch.tensor(sorted(idx), dtype=torch.long)
    return TensorDataset(x[idx], y[idx] - offset)


def digits_source() -> tuple[TensorDataset, TensorDataset]:
    """The source task, digits 0-4: (train 721, test 180 = 36 per class), fixed split."""
    x, y = digits_arrays()
    per = _by_class(y, SOURCE_CLASSES, SPLIT_SEED)
    test = [i for c in SOURCE_CLASSES for i in per[c][:SOURCE_TEST_PER_CLASS]]
    train = [i for c in SOURCE_CLASSES for i in per[c][SOURCE_TEST_PER_CLASS:]]
    return _subset(x, y, train, 0), _subset(x, y, test, 0)


def digits_transfer(shots_per_class: int = 10, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """The target task, digits 5-9 as labels 0-4: (`shots_per_class` images per class to train
    on (5 * shots), the held-out pool: every other image of those digits (896 - 5 * shots)).
    digits_splits divides the pool into validation and test."""
    if not isinstance(shots_per_class, int) or not 1 <= shots_per_class <= 170:
        raise ValueError(f"shots_per_class must be an int in 1..170 (the rarest target digit "
                         f"has 174 images), got {shots_per_class!r}.")
    x, y = digits_arrays()
    per = _by_class(y, TARGET_CLASSES, seed)
    train = [i for c in TARGET_CLASSES for i in per[c][:shots_per_class]]
    test = [i for c in TARGET_CLASSES for i in per[c][shots_per_class:]]
    off = TARGET_CLASSES[0]
    return _subset(x, y, train, off), _subset(x, y, test, off)


def held_out_split(pool: TensorDataset, per_class: int = VAL_PER_CLASS,
                   seed: int = 0) -> tuple[list[int], list[int]]:
    """(validation positions, test positions) in the held-out pool, disjoint: `per_class`
    images of each class drawn at random (seeded) for validation, the rest for test. The few
    training images are never touched, so rates chosen on validation cost no training data."""
    labels = pool.tensors[1].tolist()
    g = torch.Generator().manual_seed(10_000 + seed)
    val = []
    for c in sorted(set(labels)):
        where = [i for i, y in enumerate(labels) if y == c]
        val += [where[k] for k in torch.randperm(len(where), generator=g)[:per_class].tolist()]
    val = sorted(val)
    taken = set(val)
    return val, [i for i in range(len(labels)) if i not in taken]


def digits_splits(shots_per_class: int = 10, seed: int = 0, val_per_class: int = VAL_PER_CLASS
                  ) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """(train, validation, test) of the target task: digits_transfer's training images, and its
    held-out pool split by held_out_split (at 10 shots: 50, 100, 746), pairwise disjoint."""
    train, pool = digits_transfer(shots_per_class, seed)
    val, test = held_out_split(pool, val_per_class, seed)
    x, y = pool.tensors
    return train, TensorDataset(x[val], y[val]), TensorDataset(x[test], y[test])


def loader(ds: TensorDataset, batch_size: int = 32, shuffle: bool = False,
           seed: int = 0) -> DataLoader:
    """A DataLoader of (x (B,1,8,8), y (B,)) tuples; shuffling is seeded."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g)


def transfer_task(shots_per_class: int = 10, seed: int = 0, batch_size: int = 16,
                  pretrained: bool = True) -> tuple[ResNet, DataLoader, DataLoader]:
    """Everything a transfer run needs: (model with a fresh 5-class head, train, test loaders).

    The model is pretrained on digits 0-4 (or random with pretrained=False: the scratch
    baseline); the loaders hold the seeded few-shot split of digits 5-9 (labels 0-4) and its
    test split (digits_splits: the held-out pool less the validation images).
    """
    train, _, test = digits_splits(shots_per_class, seed)
    model = vision_classifier(num_classes=len(TARGET_CLASSES), pretrained=pretrained, seed=seed)
    return (model, loader(train, batch_size, shuffle=True, seed=seed),
            loader(test, 256, shuffle=False))


# --- pretraining ----------------------------------------------------------------------------

def shift_augment(ds: TensorDataset) -> TensorDataset:
    """The images plus 4 copies shifted by one pixel (right, left, down, up): 5x the data.

    Digits are centred by hand, so one-pixel shifts are realistic variation; training on them
    makes the features less tied to exact pixel positions, which is what transfers.
    """
    x, y = ds.tensors                                    # (N, 1, 8, 8), (N,)
    background = (0.0 - PIXEL_MEAN) / PIXEL_STD          # a blank pixel after standardising
    out = [x]
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        z = torch.full_like(x, background)
        h, w = x.shape[-2:]
        z[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
        out.append(z)
    return TensorDataset(torch.cat(out), y.repeat(len(out)))


@dataclass
class PretrainConfig:
    seed: int = 0                  # seeds the initialisation and the batch order
    augment: bool = True           # train on shift_augment(train): 721 x 5 = 3,605 images
    epochs: float = 4              # passes over the (augmented) source training images
    batch_size: int = 64           # 57 steps per epoch with augmentation
    lr: float = 3e-3               # AdamW peak learning rate (linear decay, 6% warm-up)
    weight_decay: float = 0.05     # keeps the features general (helps transfer)
    max_steps: int | None = None   # cap on steps (tests use a few); None: epochs decide
    threads: int = 1               # CPU threads while training: part of what fixes the bits


def pretrain(config: PretrainConfig | None = None) -> tuple[ResNet, dict]:
    """Train build_resnet(**ARCH) on digits 0-4 with pl.train.fit, on CPU (reproducible).

    Returns (model in eval mode, {"train_accuracy", "test_accuracy", "steps", ...}); the
    accuracies are on the un-augmented splits. The same config gives bitwise the same weights
    on the same machine and torch version (it trains on `config.threads` threads).
    """
    from peftlab import train as T

    config = config or PretrainConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)    # float sums depend on how work is split
    try:
        torch.manual_seed(config.seed)
        model = build_resnet(**ARCH)
        train, test = digits_source()
        data = shift_augment(train) if config.augment else train
        res = T.fit(model, loader(data, config.batch_size, shuffle=True, seed=config.seed),
                    None, epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                    max_steps=config.max_steps, device="cpu", seed=config.seed, progress=False)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, {
        "train_accuracy": T.evaluate(model, loader(train, 256))["accuracy"],
        "test_accuracy": T.evaluate(model, loader(test, 256))["accuracy"],
        "steps": len(res.history), "final_loss": res.history[-1]["loss"],
        "train_seconds": round(res.train_time, 2), "config": asdict(config)}

"""Generate the embedded vision checkpoint, deterministically.

Run from the repository root:

    python data/make_vision_checkpoint.py             # ~10-20 s on one CPU thread
    python data/make_vision_checkpoint.py --transfer  # also measure the transfer table of
                                                      # the datasheet (~2 min on a quiet CPU)

It writes data/vision/resnet_digits.safetensors (the weights) and resnet_digits.json (the
sidecar: architecture, sha256, training settings, accuracies). Determinism: one thread,
seeded, torch's deterministic algorithms, a seeded batch order, no timestamps in the files.
Re-running on the same machine and torch version reproduces the file byte for byte; another
CPU family or torch version may round differently and give a different (equally valid)
sha256, which the sidecar then records.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # use this checkout's peftlab even if another is installed

from peftlab.models import vision
from peftlab.io.files import atomic_write
from peftlab.models import sha256_file

OUT = ROOT / "data" / "vision" / "resnet_digits.safetensors"

# the transfer runs of the datasheet: few-shot digits 5-9, settings from peftlab.models.vision
# (TRANSFER_LR, _EPOCHS, _BATCH). lora: r=4, alpha=8 on every Conv2d (+ the head);
# selection: Fisher scores on the training images, as many trainable entries as that LoRA.
TRANSFER = vision.TRANSFER_LR
TRANSFER_EPOCHS, TRANSFER_BATCH = vision.TRANSFER_EPOCHS, vision.TRANSFER_BATCH
LORA_BUDGET = 17_257





def make_checkpoint(out: Path = OUT, config: vision.PretrainConfig | None = None) -> dict:
    """Pretrain, write weights + sidecar, return the sidecar dict."""
    from safetensors.torch import save_file

    config = config or vision.PretrainConfig()
    t0 = time.perf_counter()
    model, info = vision.pretrain(config)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: save_file(state, p))
    src_train, src_test = vision.digits_source()
    meta = {
        "what": "torchvision ResNet (BasicBlock, GroupNorm) pretrained on sklearn digits 0-4",
        "architecture": vision.ARCH,
        "sha256": sha256_file(out),
        "num_parameters": sum(v.numel() for v in state.values()),
        "size_bytes": out.stat().st_size,
        "training": {**info["config"], "optimizer": "AdamW", "schedule": "linear, 6% warm-up",
                     "max_grad_norm": 1.0, "augmentation": "1-pixel shifts (x5)" if
                     config.augment else "none", "steps": info["steps"],
                     "final_loss": round(info["final_loss"], 6),
                     "torch": torch.__version__.split("+")[0]},
        "data": {"source": "sklearn.datasets.load_digits (UCI optdigits test set)",
                 "source_classes": list(vision.SOURCE_CLASSES),
                 "source_train": len(src_train), "source_test": len(src_test),
                 "split_seed": vision.SPLIT_SEED,
                 "normalisation": f"(x / 16 - {vision.PIXEL_MEAN}) / {vision.PIXEL_STD}"},
        "source_accuracy": {"train": round(info["train_accuracy"], 4),
                            "test": round(info["test_accuracy"], 4)},
        "regenerate": vision.REGENERATE,
    }
    atomic_write(out.with_suffix(".json"),
                  lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
    meta["_seconds"] = round(time.perf_counter() - t0, 1)
    return meta


def transfer_run(kind: str, shots: int, seed: int) -> float:
    """Test accuracy on digits 5-9 after a short run of one method (a key of TRANSFER)."""
    from torch import nn

    import peftlab as pl

    model, train, test = vision.transfer_task(shots, seed, TRANSFER_BATCH,
                                              pretrained=kind != "scratch")
    if kind == "lora":
        pl.lora.apply(model, pl.lora.LoraConfig(r=4, alpha=8, targets=[nn.Conv2d]))
    elif kind == "selection":
        pl.selection.apply(model, pl.selection.SelectionConfig(count=LORA_BUDGET),
                           batches=list(train))
    else:
        pl.full.apply(model, pl.full.FullConfig(mode="head" if kind == "head" else "all"))
    res = pl.train.fit(model, train, test, epochs=TRANSFER_EPOCHS, lr=TRANSFER[kind],
                       device="cpu", seed=seed, progress=False, eval_every_epoch=False)
    return res.final["accuracy"]


def measure_transfer(shots=(10, 20), seeds=(0, 1, 2)) -> str:
    """A markdown table: mean (min-max) test accuracy over seeds, per method and shots."""
    lines = ["| method | lr | " + " | ".join(f"{k} shots/class" for k in shots) + " |",
             "|---|---|" + "---|" * len(shots)]
    for kind in TRANSFER:
        cells = []
        for k in shots:
            accs = [transfer_run(kind, k, s) for s in seeds]
            cells.append(f"{statistics.mean(accs):.3f} ({min(accs):.3f}-{max(accs):.3f})")
        lines.append(f"| {kind} | {TRANSFER[kind]:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transfer", action="store_true", help="also measure transfer baselines")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    meta = make_checkpoint()
    print(f"wrote {OUT.relative_to(ROOT)} ({meta['size_bytes']:,} bytes, "
          f"{meta['num_parameters']:,} parameters) in {meta['_seconds']} s")
    print(f"sha256 {meta['sha256']}")
    print(f"source accuracy: train {meta['source_accuracy']['train']:.4f}, "
          f"test {meta['source_accuracy']['test']:.4f}")
    if args.transfer:
        t0 = time.perf_counter()
        print(measure_transfer())
        print(f"(transfer runs: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

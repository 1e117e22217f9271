"""Train the two small LoRA adapters that notebook 14 serves side by side on one base.

    python benchmarks/make_chat_adapters.py            # writes notebooks/results/chat_adapters/
    python benchmarks/make_chat_adapters.py --only extract-r4 --steps 10 --out /tmp/x   # a try

Both are trained on the shipped chat task `data/chat_extract` (its datasheet:
data/chat_extract/README.md) from the embedded SmolLM2-135M-Instruct (pl.models.chat_model),
LoRA on the attention's query and value projections of all 30 layers, and differ on purpose
in two ways a multi-adapter server has to cope with:

    extract-r8   rank 8 (alpha 16), the even-numbered training conversations (240 of 480)
    extract-r4   rank 4 (alpha 8),  the odd-numbered ones (the other 240)

Each: one epoch of its half, 30 steps of 8 conversations, AdamW at lr 3e-3 with the default
linear schedule, seed 0 (pl.runtime.seed_everything and fit's own seed), float32 on the CPU.
The adapter is saved in peftlab's own format (adapter_config.json + adapter_model.safetensors,
never pickle), and scored greedily on all 128 test conversations (exact match and per field,
pl.chat.scoring). report.json beside the folders records the settings, the held-out loss on
the 64 validation conversations, the test scores, the seconds and the library versions, so
the notebook reads its numbers from there instead of training.

Deterministic on one machine (the same seed, data order and CPU kernels give the same
adapter); another CPU may differ in the last bits of the weights.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch

import peftlab as pl
from peftlab.chat import scoring

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "notebooks" / "results" / "chat_adapters"
TARGETS = ["q_proj", "v_proj"]
ADAPTERS = {                     # name -> (rank, alpha, which half of train: 0 even, 1 odd)
    "extract-r8": (8, 16, 0),
    "extract-r4": (4, 8, 1),
}
STEPS, BATCH, LR, SEED = 30, 8, 3e-3, 0


def train_one(name: str, out: Path, steps: int, lr: float, test_n: int | None) -> dict:
    """Train, save and score one adapter; its entry of report.json."""
    r, alpha, half = ADAPTERS[name]
    ds = pl.data.load_dataset(pl.data.data_dir() / "chat_extract")
    train = pl.chat.ChatSplit(ds.train.conversations[half::2], f"train[{half}::2]")
    pl.runtime.seed_everything(SEED)
    model, tokenizer = pl.models.chat_model()
    pl.lora.apply(model, pl.lora.LoraConfig(r=r, alpha=alpha, targets=TARGETS))
    t0 = time.perf_counter()
    run = pl.train.fit(model, train, ds.validation, tokenizer=tokenizer, batch_size=BATCH,
                       lr=lr, max_steps=steps, seed=SEED, progress=False, generate_eval=0)
    train_s = time.perf_counter() - t0
    folder = pl.save_adapter(model, out / name)
    test = ds.test if test_n is None else ds.test.subset(test_n, seed=0)
    categories = None
    if test_n is None:
        with open(pl.data.data_dir() / "chat_extract" / "test.jsonl", encoding="utf-8") as f:
            categories = [json.loads(line)["category"] for line in f]
    score = scoring.evaluate(model, tokenizer, test, batch_size=32, categories=categories,
                             examples=3)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    entry = {
        "rank": r, "alpha": alpha, "targets": TARGETS, "train": f"train[{half}::2]",
        "train_examples": len(train), "steps": len(run.history), "batch_size": BATCH, "lr": lr,
        "seed": SEED, "trainable": pl.trainable_report(model).trainable, "files": files,
        "adapter_bytes": sum(files.values()),
        "validation_loss": run.final["loss"], "first_batch_loss": run.history[0]["loss"],
        "train_s": round(train_s, 1),
        "test_n": score["n"], "exact_match": score["exact_match"], "fields": score["fields"],
        "by_category": score.get("categories"), "generate_s": round(score["generate_s"], 1),
        "examples": score["examples"],
    }
    print(f"{name}: r={r} on {TARGETS}, {len(train)} conversations, {len(run.history)} steps "
          f"in {train_s:.0f} s; validation loss {run.final['loss']:.4f}; test exact match "
          f"{score['exact_match']:.3f} of {score['n']}; {entry['adapter_bytes']:,} bytes")
    return entry


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT), help="where the adapter folders and report go")
    p.add_argument("--only", choices=sorted(ADAPTERS), action="append",
                   help="train only this adapter (repeatable; default: both)")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--test", type=int, default=None,
                   help="score a seeded subset of the test split (default: all 128)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"adapters": {}}
    for name in a.only or list(ADAPTERS):
        report["adapters"][name] = train_one(name, out, a.steps, a.lr, a.test)
    report["base"] = "SmolLM2-135M-Instruct (pl.models.chat_model, the embedded Q4_1 GGUF "\
                     "dequantized to float32)"
    report["task"] = "data/chat_extract"
    report["made_by"] = "python benchmarks/make_chat_adapters.py"
    report["machine"] = {"date": datetime.date.today().isoformat(),
                         "python": platform.python_version(), "torch": torch.__version__,
                         "peftlab": pl.__version__, "torch_threads": torch.get_num_threads(),
                         "cpu": platform.machine()}
    report_path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return report


if __name__ == "__main__":
    main()

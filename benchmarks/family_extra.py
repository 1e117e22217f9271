"""Two side runs of the family report (notebooks/results/compare_family), 3 seeds each.

    .venv/bin/python benchmarks/family_extra.py parallel-lr 3e-4,1e-3,3e-3
    .venv/bin/python benchmarks/family_extra.py matched-lora

parallel-lr: the parallel bottleneck adapter (He et al. 2022: reduction factor 2, scaling 4) at
    each learning rate, seeds 0, 1, 2, on the default text task and its one data budget;
    validation and test accuracy per run -> parallel_lr.json. The rate is chosen on validation
    only (the report's 3e-3 collapsed 2 of 3 seeds to one class).
matched-lora: LoRA at ranks whose trainable parameters match the smaller methods of the family
    (q,v r=2 ~ IA3, all-linear r=1 ~ VeRA, r=5 ~ the serial bottleneck adapter, r=21 ~ the
    parallel one), the same data budget and LoRA's learning rate -> matched_lora.json.

Each run is run_method of peftlab compare, in this process (the memory columns of the report
are not measured here, only accuracies, counts and step times).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from peftlab.compare import methods as M
from peftlab.compare.runner import make_task, run_method
from peftlab.io.files import atomic_write
from peftlab.runtime import seed_everything

OUT = Path(__file__).resolve().parents[1] / "notebooks" / "results" / "compare_family"
MATCHED = [("lora_qv", 2), ("lora", 1), ("lora", 5), ("lora", 21)]


def one(spec, seed: int, lora_r: int | None = None) -> dict:
    seed_everything(seed)
    task = make_task("text", seed, False)
    if lora_r is not None:
        task.ctx["lora_r"] = lora_r
    row = run_method(spec, task, seed=seed)
    return {"method": spec.name, "seed": seed, "trainable": row["trainable"], "lr": row["lr"],
            "val": row["val_accuracy"], "test": row["test_accuracy"],
            "step_s": row["step_time_s"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["parallel-lr", "matched-lora"])
    ap.add_argument("rates", nargs="?", default="3e-4,1e-3,3e-3")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    runs = []
    if a.what == "parallel-lr":
        spec0 = M.METHODS["text"]["bottleneck_parallel"]
        for lr in [float(x) for x in a.rates.split(",")]:
            spec = replace(spec0, budget=replace(spec0.budget, lr=lr))
            runs += [one(spec, seed) for seed in (0, 1, 2)]
            print(runs[-3:], flush=True)
        name = "parallel_lr.json"
    else:
        for base, r in MATCHED:
            spec = replace(M.METHODS["text"][base], name=f"{base}_r{r}")
            runs += [one(spec, seed, r) for seed in (0, 1, 2)]
            print(runs[-3:], flush=True)
        name = "matched_lora.json"
    text = json.dumps(runs, indent=1) + "\n"
    atomic_write(a.out / name, lambda t: Path(t).write_text(text, encoding="utf-8"))
    print(f"wrote {a.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

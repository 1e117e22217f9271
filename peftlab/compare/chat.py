"""`peftlab compare --task chat`: the methods on the chat model, one table.

    report = pl.compare.chat.run(["base", "lora", "ia3"])     # the default run (~6 min, 2 CPUs)
    print(report.table())
    report.write("out/")          # report.csv, report.json, compare.png

The task is the shipped chat_extract (data/chat_extract/README.md): SmolLM2-135M-Instruct
learns to answer "name=...; city=...; day=..." for sentences that mention a person, a city and
a weekday. Every row starts from the same base model (a fresh copy), trains on the same data
budget (DATA["chat"] in compare/methods.py: the same examples, epochs and batch size for
every method; each method its own learning rate) with the answer-only loss, and is measured
alike:

  exact match     greedy answers to the held-out test split (new names and cities, and half
                  of it on sentence templates never seen in training), scored by
                  pl.chat.scoring (normalised exact match), also per field and per category
  retention       exact match on data/chat_extract/retention.jsonl: questions the *base*
                  model answers right (it scores 1.0 there by construction), so a drop is
                  what adapting cost elsewhere (Biderman et al. 2024, "LoRA Learns Less and
                  Forgets Less")
  held-out loss   cross-entropy per answer token on the validation split after training
  step time       interleaved round robin after training (compare/timing.py), as for text
  state, adapter  the exact training-state count (peftlab.measure), adapter bytes on disk
  generate s      the wall time of the test split's greedy generation

"base" is the untrained model, measured the same way (0 trainable parameters). The methods
run one after another in this process (the chat model is loaded once): the memory columns are
exact counts, not measured peaks. With seeds=N each method runs N times: means, and sample
standard deviations of exact match and retention.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from peftlab import measure
from peftlab.compare.methods import DATA, MethodSpec, Task, rows
from peftlab.compare.report import ChatReport
from peftlab.compare.seeds import check_run

DATASET = "chat_extract"
BASE = "base"
# the default run: the base model, LoRA at its best placement and one cheap comparator (IA3:
# a hundredth of LoRA's trainable numbers); placements measured on validation, see the note of
# data/chat_extract/README.md
DEFAULT_METHODS = (BASE, "lora", "ia3")
QUICK = {"train": 32, "validation": 16, "test": 16, "retention": 8}


def methods() -> dict[str, MethodSpec]:
    """{name: MethodSpec} of every registered method's chat row, in table order."""
    return rows("chat")


def available() -> list[str]:
    """The --methods names of the chat task: the base model, then every method."""
    return [BASE, *methods()]


def _categories(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        cats = [json.loads(line).get("category") for line in f if line.strip()]
    return cats if all(cats) else None


def chat_task(seed: int = 0, quick: bool = False, model_fn=None, data=None) -> Task:
    """The embedded SmolLM2-135M-Instruct on chat_extract (or `data`: a chat JSONL file or
    folder, as for `peftlab train --task chat`), with the shipped retention set. model_fn() ->
    (model, tokenizer) replaces the embedded model (tests use a tiny one)."""
    from peftlab import data as pdata
    from peftlab import models
    folder = pdata.data_dir() / DATASET
    ds = pdata.load_dataset(data if data is not None else folder, seed=seed)
    if not isinstance(ds, pdata.ChatDatasetSplits):
        raise ValueError(f"{data}: not chat data (JSON Lines with 'messages', or 'prompt' and "
                         f"'response'); `compare --task chat` compares methods on a chat "
                         f"model.")
    base, tok = (model_fn or models.chat_model)()
    base.eval()
    from peftlab.data.chat import read_chat_jsonl
    retention = read_chat_jsonl(folder / "retention.jsonl", "retention")
    val, test = ds.validation, ds.test
    cats = _categories(folder / "test.jsonl") if data is None else None
    if quick:
        val, test = val.subset(QUICK["validation"], seed), test.subset(QUICK["test"], seed)
        retention = retention.subset(QUICK["retention"], seed)
        cats = None
    return Task("chat", lambda: copy.deepcopy(base), ds.train, val, test, tok, max_length=None,
                ctx={"lora_targets": ["all-linear"], "lora_qv_targets": ["q_proj", "v_proj"],
                     "selection_fraction": 0.005, "selection_examples": 64,
                     "retention": retention,
                     "dataset": ds.name},
                test_categories=cats)


def _scores(model, task: Task) -> dict:
    from peftlab.chat.scoring import evaluate
    test = evaluate(model, task.tokenizer, task.test, categories=task.test_categories,
                    batch_size=32, examples=3)
    keep = evaluate(model, task.tokenizer, task.ctx["retention"], batch_size=32, examples=3)
    return {"exact_match": test["exact_match"], "test_n": test["n"],
            "fields": test["fields"], "field_accuracy": test["field_accuracy"],
            "categories": test["categories"], "generate_s": test["generate_s"],
            "examples": test["examples"], "retention": keep["exact_match"],
            "retention_n": keep["n"], "retention_examples": keep["examples"]}


def run_method(name: str, spec: MethodSpec | None, task: Task, *, seed: int = 0, device=None,
               epochs: float | None = None, quick: bool = False, progress: bool = False,
               precision: str = "fp32") -> dict:
    """Train and measure one method (spec None: the base model, untrained); one row."""
    from peftlab import train as tr
    from peftlab.core.state import get_method
    from peftlab.runtime import get_device, seed_everything
    dev = get_device(device)
    seed_everything(seed)
    model = task.make_model().to(dev)
    row = {"method": name, "status": "ok", "note": "",
           "description": spec.description if spec else "the base model, untrained"}
    total = sum(p.numel() for p in model.parameters())
    if spec is None:
        held = tr.evaluate(model, task.loader(task.validation, 16, False, seed))
        row.update(trainable=0, total=total, trainable_pct=0.0, held_out_loss=held["loss"],
                   steps=0, train_size=0, adapter_bytes=0, train_time_s=0.0,
                   training_state_bytes=None)
        row.update(_scores(model, task))
        return row
    budget = spec.budget
    if quick:
        budget = dataclasses.replace(budget, train_size=QUICK["train"], epochs=1)
    if epochs is not None:
        budget = dataclasses.replace(budget, epochs=epochs)
    data = task.subset(budget.train_size, seed)
    steps = math.ceil(math.ceil(len(data) / budget.batch_size) * budget.epochs)
    ctx = {**task.ctx, "tokenizer": task.tokenizer, "seed": seed, "total_steps": steps,
           "batch_size": budget.batch_size,
           "score_loader": lambda: task.loader(data, budget.batch_size, True, seed + 1)}
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    spec.build(model, ctx)
    setup = time.perf_counter() - t0
    if get_method(model) is None:
        raise RuntimeError(f"{name}: build() applied no method")
    result = tr.fit(model, data, task.validation, tokenizer=task.tokenizer,
                    epochs=budget.epochs, lr=budget.lr, batch_size=budget.batch_size,
                    device=dev, seed=seed, progress=progress, precision=precision,
                    generate_eval=0)
    mem = result.memory
    row.update(trainable=result.trainable, total=result.total,
               trainable_pct=100.0 * result.trainable / result.total,
               step_time_s=result.step_time, setup_s=setup, train_time_s=result.train_time,
               steps=len(result.history), lr=budget.lr, epochs=budget.epochs,
               train_size=len(data), batch_size=budget.batch_size,
               training_state_bytes=(mem["weights"] + mem["gradients"] + mem["optimizer"]
                                     + mem["activations"]),
               held_out_loss=result.final.get("loss"),
               final_train_loss=result.history[-1]["loss"],
               adapter_bytes=measure.adapter_size(model), device=result.device,
               precision=result.precision)
    row.update(_scores(model, task))
    return row


MEAN_KEYS = ("exact_match", "retention", "held_out_loss", "field_accuracy", "generate_s",
             "train_time_s", "step_time_s", "setup_s", "final_train_loss")


def _aggregate(runs: list[dict], seeds: list[int]) -> dict:
    bad = next((r for r in runs if r["status"] != "ok"), None)
    if bad is not None:
        return bad
    row = dict(runs[0])
    for k in MEAN_KEYS:
        vals = [r[k] for r in runs if r.get(k) is not None]
        row[k] = statistics.fmean(vals) if vals else None
    for k in ("exact_match", "retention"):
        vals = [r[k] for r in runs]
        row[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        row[f"{k}_runs"] = ";".join(f"{v:.4f}" for v in vals)
    row["seeds"] = ";".join(map(str, seeds))
    cats = runs[0].get("categories") or {}
    row["categories"] = {c: (statistics.fmean(r["categories"][c][0] for r in runs), n)
                         for c, (_, n) in cats.items()}
    return row


def run(methods_: list[str] | None = None, *, seed: int = 0, seeds: int = 1, device=None,
        epochs: float | None = None, quick: bool = False, progress: bool = False,
        log: Callable[[str], None] | None = None, model_fn=None, data=None,
        precision: str = "fp32", interleave: bool = True) -> ChatReport:
    """Run `methods_` (default DEFAULT_METHODS; "all": every one) with `seeds` seeds each on the
    chat task; the ChatReport. Arguments as pl.compare.run."""
    from peftlab.compare.timing import interleaved_step_times
    from peftlab.runtime import get_device
    from peftlab.train.precision import cpu_bf16_support, resolve_precision
    specs = methods()
    names = list(DEFAULT_METHODS) if methods_ is None else (
        available() if list(methods_) == ["all"] else list(methods_))
    unknown = [m for m in names if m not in available()]
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(unknown)} for task 'chat'; known: "
                         f"{', '.join(available())}.")
    check_run(epochs, seeds)
    dev = get_device(device)
    prec = resolve_precision(precision, dev)
    seed_list = [seed + i for i in range(seeds)]
    t0 = time.perf_counter()
    task = chat_task(seed, quick, model_fn, data)
    out = []
    for name in names:
        runs = []
        for s in (seed_list if name != BASE else seed_list[:1]):   # the base has no seed
            if log:
                log(f"[{time.perf_counter() - t0:6.1f}s] {name} (seed {s}) ...")
            try:
                runs.append(run_method(name, specs.get(name), task, seed=s, device=dev,
                                       epochs=epochs, quick=quick, progress=progress,
                                       precision=precision))
            except Exception as e:  # noqa: BLE001  (report it, run the others)
                runs.append({"method": name, "status": "failed", "note":
                             f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                             "description": specs[name].description if name in specs else ""})
            r = runs[-1]
            if log and r["status"] == "ok":
                log(f"          exact match {r['exact_match']:.3f}, retention "
                    f"{r['retention']:.3f}, {r['steps']} steps, {r['train_time_s']:.1f}s")
            if r["status"] != "ok":
                break
        out.append(_aggregate(runs, seed_list if name != BASE else seed_list[:1]))
    trained = {r["method"]: r for r in out if r["status"] == "ok" and r["method"] != BASE}
    if interleave and trained:
        if log:
            log(f"[{time.perf_counter() - t0:6.1f}s] step times, all methods in turn ...")
        kw = {"rounds": 2, "steps_per_turn": 1, "warmup": 1} if quick else \
            {"rounds": 3, "steps_per_turn": 1, "warmup": 1}
        timing = interleaved_step_times(
            {m: specs[m] for m in trained}, task, seed=seed, device=dev, precision=prec,
            total_steps=lambda m: max(2, trained[m]["steps"]),
            batch_size=specs[next(iter(trained))].budget.batch_size, **kw)
        for m, t in timing.items():
            r = trained[m]
            r["train_step_time_s"] = r["step_time_s"]
            if "error" in t:
                r["note"] = f"interleaved timing failed ({t['error']}): step time from training"
                continue
            r["step_time_s"], r["step_time_spread"] = t["median"], t["spread"]
    ref = trained.get("lora")
    for r in out:
        ok = ref and r["status"] == "ok" and r.get("step_time_s") and ref.get("step_time_s")
        r["step_time_ratio"] = r["step_time_s"] / ref["step_time_s"] if ok else None
    settings = {"seed": seed, "seeds": seed_list, "device": str(dev), "quick": quick,
                "epochs": epochs, "dataset": task.ctx["dataset"], "threads": measure.threads(),
                "precision": prec.name, "precision_requested": precision,
                "cpu_bf16": cpu_bf16_support(),
                "timing": ("interleaved round robin after training (compare/timing.py)"
                           if trained and interleave else "median of training steps"),
                "torch": torch.__version__, "python": sys.version.split()[0],
                "budget": dataclasses.asdict(DATA["chat"]),
                "budgets": {m: dataclasses.asdict(specs[m].budget) for m in names if m in specs},
                "wall_s": time.perf_counter() - t0,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return ChatReport("chat", out, settings)

"""Running the comparison: each method on a fresh copy of the base model, measured alike.

One run of a method (`run_method`) is: build (apply the method; selection scores its Fisher
here, so that is "setup" time), train with pl.train.fit, then predict the test set once (test
accuracy, loss and accuracy per category of sentence). With isolate=True (the default of
`run`) every (method, seed) runs in a fresh process forked from a clean server process, so the
measured memory peak is that method's alone: no earlier method's freed memory is reused.
With several seeds, `run` aggregates: mean and sample standard deviation of the accuracies.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace

import torch

from peftlab import measure
from peftlab.compare.evaluation import (  # noqa: F401  (predict: re-exported)
    by_category,
    by_length,
    predict,
    predict_by_length,
)
from peftlab.compare.methods import (METHODS, TASKS, MethodSpec, Task, budget_of,
                                     check_budgets, defaults, text_task, vision_task)
from peftlab.compare.report import Report, _ratios
from peftlab.compare.seeds import aggregate, check_run, failed_row
from peftlab.compare.timing import interleaved_step_times
from peftlab.core.state import get_method

# --- running one method ----------------------------------------------------------------------------

def run_method(spec: MethodSpec, task: Task, *, seed: int = 0, device=None,
               epochs: float | None = None, quick: bool = False, progress: bool = False,
               precision: str = "fp32", light: bool = False) -> dict:
    """Train and measure one method on a fresh copy of the task's base model; one report row.
    light: skip the inference timings and the adapter size (a sweep's trials need neither)."""
    from peftlab import train as tr
    from peftlab.runtime import get_device
    row = {"method": spec.name, "status": "ok", "description": spec.description, "note": ""}
    try:
        importlib.import_module(spec.module)
    except ImportError as e:
        return {**row, "status": "missing", "note": f"{spec.module} does not import: {e}"}
    budget = spec.budget
    if quick:
        budget = replace(budget, train_size=min(budget.train_size or 64, 64), epochs=1)
    if epochs is not None:
        budget = replace(budget, epochs=epochs)
    data = task.subset(budget.train_size, seed)
    steps = math.ceil(math.ceil(len(data) / budget.batch_size) * budget.epochs)
    dev = get_device(device)
    model = task.make_model().to(dev)
    ctx = {**task.ctx, "tokenizer": task.tokenizer, "seed": seed, "total_steps": steps,
           "batch_size": budget.batch_size,
           "score_loader": lambda: task.loader(data, budget.batch_size, True, seed + 1)}
    meter = measure.PeakAboveBaseline(dev)        # baseline: the base model is loaded
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    spec.build(model, ctx)                     # selection scores gradients here: setup time
    setup = time.perf_counter() - t0
    meter.sample()
    assert get_method(model) is not None, f"{spec.name}: build() applied no method"
    validation = by_length(task, task.validation)[0]          # only scored: order is free
    result = tr.fit(model, data, validation, tokenizer=task.tokenizer, epochs=budget.epochs,
                    lr=budget.lr, batch_size=budget.batch_size, max_length=task.max_length,
                    device=dev, seed=seed, progress=progress, precision=precision)
    meter.sample()
    test_loader = task.loader(task.test, 64, False, seed)
    preds, labels, test_loss = predict_by_length(model, task, task.test, seed)
    batch = tr.to_device(next(iter(test_loader)), next(model.parameters()).device)
    inputs, _ = tr.split_batch(batch)
    infer = ({"unmerged": None, "merged": None} if light else
             measure.inference_times(model, inputs, repeats=1 if quick else 2))
    mem = result.memory
    return {**row,
            "trainable": result.trainable, "total": result.total,
            "trainable_pct": 100.0 * result.trainable / result.total,
            "step_time_s": result.step_time, "setup_s": setup, "train_time_s": result.train_time,
            "steps": len(result.history), "lr": budget.lr, "epochs": budget.epochs,
            "train_size": len(data), "batch_size": budget.batch_size,
            "training_state_bytes": (mem["weights"] + mem["gradients"] + mem["optimizer"]
                                     + mem["activations"]),
            "weights_bytes": mem["weights"], "gradients_bytes": mem["gradients"],
            "optimizer_bytes": mem["optimizer"], "activations_bytes": mem["activations"],
            "measured_peak_bytes": meter.peak, "measured_kind": meter.kind,
            "final_train_loss": result.history[-1]["loss"],
            "val_accuracy": result.final.get("accuracy"), "val_loss": result.final.get("loss"),
            "test_accuracy": sum(p == y for p, y in zip(preds, labels)) / len(labels),
            "test_loss": test_loss,
            "categories": by_category(preds, labels, task.test_categories),
            "adapter_bytes": None if light else measure.adapter_size(model),
            "infer_s": infer["unmerged"], "infer_merged_s": infer["merged"],
            "device": result.device, "precision": result.precision}


def make_task(task: str, seed: int, quick: bool, model_fn=None) -> Task:
    """The named task ('text' or 'vision') for one seed."""
    return (text_task if task == "text" else vision_task)(seed, quick, model_fn)


def _peftlab_env() -> dict[str, str]:
    """This process's $PEFTLAB_* variables (the dataset, bf16 override, data folder...)."""
    return {k: v for k, v in os.environ.items() if k.startswith("PEFTLAB_")}


def worker_begin(seed: int, threads: int, env: dict[str, str] | None) -> None:
    """What every fresh worker process does first (compare's and the sweep's): take the
    caller's $PEFTLAB_* variables (the fork server keeps the environment it was started with,
    which may be an earlier run's), its thread count, and seed everything."""
    from peftlab.runtime import seed_everything
    for k in [k for k in os.environ if k.startswith("PEFTLAB_")]:
        del os.environ[k]
    os.environ.update(env or {})
    torch.set_num_threads(threads)
    seed_everything(seed)


def _run_budget(task: str, epochs, quick: bool) -> dict:
    """The data budget this run gave every row: the task's, with --epochs / --quick applied
    (as run_method applies them), so the report never states a budget the run did not use."""
    b = dict(budget_of(task))
    if quick:
        b.update(train_size=min(b["train_size"] or 64, 64), epochs=1)
    if epochs is not None:
        b["epochs"] = epochs
    return b


def _run_isolated(task: str, method: str, seed: int, device, epochs, quick, progress,
                  model_fn, threads: int, env: dict[str, str] | None = None,
                  precision: str = "fp32", lr: float | None = None) -> dict:
    """What a fresh worker process does: build the task, run one method, return its row.
    env: the caller's $PEFTLAB_* variables now (worker_begin). lr: the learning rate when it
    is not the row's own (chosen by a sweep)."""
    worker_begin(seed, threads, env)
    the_task = make_task(task, seed, quick, model_fn)
    spec = METHODS[task][method]
    if lr is not None:
        spec = replace(spec, budget=replace(spec.budget, lr=lr))
    return run_method(spec, the_task, seed=seed, device=device, epochs=epochs,
                      quick=quick, progress=progress, precision=precision)


def preload() -> list[str]:
    """What the fork server imports once, so each fresh process starts without importing it
    again: this module, training, the models, every registered method's package."""
    from peftlab.core import registry
    return [__name__, "peftlab.train", "peftlab.models",
            *(s.module for s in registry.specs().values()),
            "transformers.models.bert.modeling_bert"]


def process_pool(extra_preload: tuple[str, ...] = ()):
    """A pool whose every task runs in a fresh process (forkserver: forked from a server that
    only imported peftlab, preload() and `extra_preload`; spawn where there is no fork). As
    with any multiprocessing, a script that calls run() must do so under
    `if __name__ == "__main__":`."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([*preload(), *extra_preload])
    else:
        ctx = mp.get_context("spawn")
    return ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1)


# --- the whole comparison ---------------------------------------------------------------------

def selected(methods: list[str] | None, task: str) -> list[str]:
    """The rows a run trains: None -> the task's default rows (methods.defaults), ["all"] ->
    every row the task has, else `methods` as given."""
    if methods is None:
        return defaults(task)
    return list(METHODS[task]) if list(methods) == ["all"] else list(methods)


def run(methods: list[str] | None = None, *, task: str = "text", seed: int = 0, seeds: int = 1,
        device=None, epochs: float | None = None, quick: bool = False, progress: bool = False,
        log: Callable[[str], None] | None = None, model_fn=None,
        isolate: bool = True, precision: str = "fp32", interleave: bool = True,
        lrs_from=None) -> Report:
    """Run `methods` (default: the task's default rows, methods.defaults; ["all"]: every row)
    with `seeds` seeds (seed, seed + 1, ...) each
    and return the Report (one row per method: means, and standard deviations over seeds).

    epochs overrides every method's budget; quick shrinks everything to a smoke run
    (64 training examples, one epoch, small evaluation sets). model_fn replaces the embedded
    base model (text: -> (model, tokenizer); vision: -> model; a module-level function when
    isolate=True). isolate: each (method, seed) in a fresh process, so the measured memory
    peak is its own; False runs in this process (faster to start; the peak is then a lower
    bound, as memory freed by earlier runs is reused). precision: "fp32" (default), "bf16",
    "fp16" (CUDA) or "auto", as in pl.train.fit; the report records what ran and what the CPU
    offers. interleave: after training, time every method's step round robin in this process
    (compare/timing.py), so background load hits all methods alike; the step-time columns
    then come from there (the times measured during training stay in train_step_time_s).
    lrs_from: where the rows' learning rates come from: None: the task's committed sweep
    (notebooks/results/sweep_<task>/chosen.json) where there is one, else each method's
    spec.py; "spec": the spec.py rates; a path: that sweep's chosen.json (`peftlab sweep`).
    The report's settings say which (lr_source).
    """
    if task == "chat":                 # generation and retention: its own runner (compare/chat.py)
        from peftlab.compare import chat
        return chat.run(methods, seed=seed, seeds=seeds, device=device, epochs=epochs,
                        quick=quick, progress=progress, log=log, model_fn=model_fn,
                        precision=precision, interleave=interleave)
    specs = METHODS.get(task)
    if specs is None:
        raise ValueError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
    methods = selected(methods, task)
    unknown = [m for m in methods if m not in specs]
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(unknown)} for task {task!r}; known: "
                         f"{', '.join(specs)}.")
    check_run(epochs, seeds)
    check_budgets(task, specs)
    from peftlab.compare.sweep_report import chosen_lrs
    lrs, lr_source = chosen_lrs(lrs_from, task, methods)
    specs = {m: replace(s, budget=replace(s.budget, lr=lrs[m])) if m in lrs else s
             for m, s in specs.items()}
    from peftlab.runtime import get_device, seed_everything
    from peftlab.train.precision import cpu_bf16_support, resolve_precision
    dev = get_device(device)
    prec = resolve_precision(precision, dev)      # an unknown name fails before any training
    seed_list = [seed + i for i in range(seeds)]
    t0 = time.perf_counter()
    tasks: dict[int, Task] = {}
    pool = process_pool() if isolate else None
    rows = []
    try:
        for name in methods:
            runs = []
            for s in seed_list:
                if log:
                    log(f"[{time.perf_counter() - t0:6.1f}s] {name} (seed {s}) ...")
                try:
                    if pool is not None:
                        runs.append(pool.submit(_run_isolated, task, name, s, str(dev), epochs,
                                                quick, progress, model_fn,
                                                measure.threads(), _peftlab_env(),
                                                precision, lrs.get(name)).result())
                    else:
                        if s not in tasks:
                            seed_everything(s)
                            tasks[s] = make_task(task, s, quick, model_fn)
                        runs.append(run_method(specs[name], tasks[s], seed=s, device=dev,
                                               epochs=epochs, quick=quick, progress=progress,
                                               precision=precision))
                except Exception as e:  # noqa: BLE001  (report it, run the others)
                    runs.append(failed_row(name, specs[name], e))
                    if pool is not None and type(e).__name__ == "BrokenProcessPool":
                        pool.shutdown()          # the worker died (e.g. killed for memory)
                        pool = process_pool()
                if log and runs[-1]["status"] == "ok":
                    log(f"          test accuracy {runs[-1]['test_accuracy']:.3f}, "
                        f"{runs[-1]['steps']} steps, {runs[-1]['train_time_s']:.1f}s")
                if runs[-1]["status"] != "ok":
                    break
            rows.append(aggregate(runs, seed_list))
    finally:
        if pool is not None:
            pool.shutdown()
    timing = {}
    if interleave:
        ok = {r["method"]: r for r in rows if r["status"] == "ok"}
        if ok:
            if log:
                log(f"[{time.perf_counter() - t0:6.1f}s] step times, all methods in turn ...")
            seed_everything(seed)
            the_task = tasks.get(seed) or make_task(task, seed, quick, model_fn)
            quick_kw = {"rounds": 2, "steps_per_turn": 1, "warmup": 1} if quick else {}
            timing = interleaved_step_times(
                {m: specs[m] for m in ok}, the_task, seed=seed, device=dev, precision=prec,
                total_steps=lambda m: max(2, round(ok[m]["steps"])),
                batch_size=specs[next(iter(ok))].budget.batch_size, **quick_kw)
            for m, t in timing.items():
                r = ok[m]
                r["train_step_time_s"] = r["step_time_s"]
                if "error" in t:
                    r["note"] = (r["note"] + "; " if r["note"] else "") + \
                        f"interleaved timing failed ({t['error']}): step time from training"
                    continue
                r["step_time_s"], r["step_time_spread"] = t["median"], t["spread"]
    if not isolate:
        for r in rows:
            if r.get("measured_kind"):
                r["measured_kind"] += (" (in one process: memory freed by earlier runs may be "
                                       "reused, a lower bound)")
    _ratios(rows)
    settings = {"seed": seed, "seeds": seed_list, "device": str(dev), "quick": quick,
                "epochs": epochs, "isolate": isolate, "threads": measure.threads(),
                "precision": prec.name, "precision_requested": precision,
                "cpu_bf16": cpu_bf16_support(),
                "timing": ("interleaved round robin after training (compare/timing.py)"
                           if timing else "median of training steps, method after method"),
                "torch": torch.__version__, "python": sys.version.split()[0],
                "wall_s": time.perf_counter() - t0,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "budget": _run_budget(task, epochs, quick), "lr_source": lr_source,
                "lrs": {m: specs[m].budget.lr for m in methods},
                "labelled": {m: specs[m].label for m in methods if specs[m].label},
                "budgets": {m: asdict(specs[m].budget) for m in methods}}
    return Report(task, rows, settings)

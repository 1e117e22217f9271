"""Running the comparison: each method on a fresh copy of the base model, measured alike."""

from __future__ import annotations

import importlib
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace

import torch

from peftlab import measure
from peftlab.compare.methods import METHODS, TASKS, MethodSpec, Task, text_task, vision_task
from peftlab.compare.report import Report, _ratios
from peftlab.core.state import get_method

# --- running one method ----------------------------------------------------------------------------

def run_method(spec: MethodSpec, task: Task, *, seed: int = 0, device=None,
               epochs: float | None = None, quick: bool = False, progress: bool = False) -> dict:
    """Train and measure one method on a fresh copy of the task's base model; one report row."""
    from peftlab import train as tr
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
    model = task.make_model()
    ctx = {**task.ctx, "tokenizer": task.tokenizer, "seed": seed, "total_steps": steps,
           "score_loader": lambda: task.loader(data, budget.batch_size, True, seed + 1)}
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    spec.build(model, ctx)                     # selection scores gradients here: setup time
    setup = time.perf_counter() - t0
    assert get_method(model) is not None, f"{spec.name}: build() applied no method"
    result = tr.fit(model, data, task.validation, tokenizer=task.tokenizer, epochs=budget.epochs,
                    lr=budget.lr, batch_size=budget.batch_size, max_length=task.max_length,
                    device=device, seed=seed, progress=progress)
    test_loader = task.loader(task.test, 64, False, seed)
    test = tr.evaluate(model, test_loader)
    batch = tr.to_device(next(iter(test_loader)), next(model.parameters()).device)
    inputs, _ = tr.split_batch(batch)
    infer = measure.inference_times(model, inputs, repeats=1 if quick else 3)
    mem = result.memory
    return {**row,
            "trainable": result.trainable, "total": result.total,
            "trainable_pct": 100.0 * result.trainable / result.total,
            "step_time_s": result.step_time, "setup_s": setup, "train_time_s": result.train_time,
            "steps": len(result.history), "lr": budget.lr, "epochs": budget.epochs,
            "train_size": len(data), "batch_size": budget.batch_size,
            "peak_memory_bytes": mem["peak"], "peak_kind": mem["peak_kind"],
            "weights_bytes": mem["weights"], "gradients_bytes": mem["gradients"],
            "optimizer_bytes": mem["optimizer"], "activations_bytes": mem["activations"],
            "rss_peak_bytes": mem["rss_peak"],
            "final_train_loss": result.history[-1]["loss"],
            "val_accuracy": result.final.get("accuracy"), "test_accuracy": test["accuracy"],
            "test_loss": test["loss"], "adapter_bytes": measure.adapter_size(model),
            "infer_s": infer["unmerged"], "infer_merged_s": infer["merged"],
            "device": result.device}


def run(methods: list[str] | None = None, *, task: str = "text", seed: int = 0, device=None,
        epochs: float | None = None, quick: bool = False, progress: bool = False,
        log: Callable[[str], None] | None = None, model_fn=None) -> Report:
    """Run `methods` (default: all for the task) and return the Report.

    epochs overrides every method's budget; quick shrinks everything to a smoke run
    (64 training examples, one epoch, small evaluation sets). model_fn replaces the embedded
    base model (text: -> (model, tokenizer); vision: -> model).
    """
    specs = METHODS.get(task)
    if specs is None:
        raise ValueError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
    methods = list(specs) if methods is None else list(methods)
    unknown = [m for m in methods if m not in specs]
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(unknown)} for task {task!r}; known: "
                         f"{', '.join(specs)}.")
    if epochs is not None and not epochs > 0:
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    from peftlab.runtime import get_device, seed_everything
    dev = get_device(device)
    seed_everything(seed)
    t0 = time.perf_counter()
    the_task = (text_task if task == "text" else vision_task)(seed, quick, model_fn)
    rows = []
    for name in methods:
        if log:
            log(f"[{time.perf_counter() - t0:6.1f}s] {name} ...")
        try:
            rows.append(run_method(specs[name], the_task, seed=seed, device=dev, epochs=epochs,
                                   quick=quick, progress=progress))
        except Exception as e:  # noqa: BLE001  (report it, run the others)
            rows.append({"method": name, "status": "failed", "description":
                         specs[name].description, "note": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()})
        if log and rows[-1]["status"] == "ok":
            log(f"          test accuracy {rows[-1]['test_accuracy']:.3f}, "
                f"{rows[-1]['steps']} steps, {rows[-1]['train_time_s']:.1f}s")
    _ratios(rows)
    settings = {"seed": seed, "device": str(dev), "quick": quick, "epochs": epochs,
                "threads": measure.threads(), "torch": torch.__version__,
                "wall_s": time.perf_counter() - t0,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "budgets": {m: asdict(specs[m].budget) for m in methods}}
    return Report(task, rows, settings)

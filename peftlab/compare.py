"""The side-by-side runner behind `peftlab compare`: every method, one task, one table.

    report = pl.compare.run(["full", "head", "lora"], task="text", seed=0)
    print(report.table())
    report.write("out/")           # report.csv, report.json, compare.png

Each method starts from the same pretrained weights (a fresh copy), trains with pl.train.fit
on a budget chosen so it reaches a sensible accuracy in well under a minute on a laptop CPU
(METHOD_BUDGETS: training examples, epochs, learning rate), and is then measured the same
way: trainable parameters, median training step time, peak memory (peftlab.measure explains
what is counted on CPU and on CUDA), test accuracy, adapter size on disk, and inference time
before and after merging where the method can merge.

Honesty rules: a method whose module does not import is reported as "missing" (not faked);
a method that fails is reported as "failed" with the error, and the others still run; ratios
are taken against full fine-tuning measured in the same run (times on a shared machine are
noisy, ratios less so). The text task's test split uses held-out words, so test accuracy
measures what was learned, not what was memorised.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from peftlab import measure
from peftlab.inject import get_method

TASKS = ("text", "vision")


@dataclass
class Budget:
    train_size: int | None    # training examples used (a seeded subset); None: all of them
    epochs: float             # passes over those examples
    lr: float                 # peak learning rate (AdamW, linear decay, 6% warm-up)
    batch_size: int = 32      # examples per optimizer step


@dataclass
class MethodSpec:
    name: str                 # the --methods name and the table's first column
    module: str               # the peftlab module that must import for the method to run
    description: str          # what is trained, in a few words
    budget: Budget            # the default training budget
    build: Callable           # build(model, ctx) applies the method to a fresh model


# --- text task: the embedded MiniLM on sentiment_contrast ----------------------------------------

def _full(mode):
    def build(model, ctx):
        from peftlab import full
        full.apply(model, full.FullConfig(mode=mode))
    return build


def _lora(model, ctx):
    from peftlab import lora
    r = ctx.get("lora_r", 8)
    lora.apply(model, lora.LoraConfig(r=r, alpha=2 * r, targets=ctx["lora_targets"]))


def _prefix(model, ctx):
    from peftlab import prefix
    prefix.apply(model, prefix.PrefixConfig(num_virtual_tokens=10))


def _prompt(model, ctx):
    from peftlab import prefix
    prefix.apply(model, prefix.PromptConfig(num_virtual_tokens=10), tokenizer=ctx["tokenizer"])


def _selection(model, ctx):
    from peftlab import selection, train
    cfg = selection.SelectionConfig(fraction=ctx["selection_fraction"], per_example=False,
                                    max_batches=8, seed=ctx["seed"])
    batches = [b for b, _ in zip(ctx["score_loader"](), range(cfg.max_batches))]
    selection.apply(model, cfg, batches=batches, loss_fn=train.loss_fn)


def _adalora(model, ctx):
    from peftlab import adalora
    steps = ctx["total_steps"]
    tinit, tfinal = max(0, steps // 10), max(1, steps // 5)
    if tinit + tfinal >= steps:             # very short (--quick) runs: no warm-up phase
        tinit, tfinal = 0, 1
    adalora.apply(model, adalora.AdaLoraConfig(
        init_r=12, target_r=4, targets=ctx["lora_targets"], total_steps=max(2, steps),
        tinit=tinit, tfinal=tfinal, alpha=32.0))


TEXT_METHODS = {s.name: s for s in [
    MethodSpec("full", "peftlab.full", "every weight", Budget(1280, 1, 1e-4), _full("all")),
    MethodSpec("head", "peftlab.full", "classifier head only", Budget(2400, 2, 1e-2),
               _full("head")),
    MethodSpec("lora", "peftlab.lora", "r=8 on query,value + head", Budget(2400, 1, 3e-3),
               _lora),
    MethodSpec("prefix", "peftlab.prefix", "10 key/value prefixes per layer + head",
               Budget(2400, 1, 3e-2), _prefix),
    MethodSpec("prompt", "peftlab.prompt", "10 soft prompt tokens + head",
               Budget(2400, 1, 3e-2), _prompt),
    MethodSpec("selection", "peftlab.selection", "0.5% of weights by Fisher score + head",
               Budget(1280, 1, 1e-3), _selection),
    MethodSpec("adalora", "peftlab.adalora", "SVD adapters, rank 12 -> 4 avg + head",
               Budget(2400, 1, 3e-2), _adalora),
]}

# --- vision task: the embedded digits ResNet, transfer from 0-4 to 5-9 ---------------------------

VISION_METHODS = {s.name: s for s in [
    MethodSpec("full", "peftlab.full", "every weight", Budget(None, 30, 3e-3, 16),
               _full("all")),
    MethodSpec("head", "peftlab.full", "fc head only", Budget(None, 30, 3e-2, 16), _full("head")),
    MethodSpec("lora", "peftlab.lora", "r=4 on every conv + head", Budget(None, 30, 1e-2, 16),
               _lora),
    MethodSpec("selection", "peftlab.selection", "2% of weights by Fisher score + head",
               Budget(None, 30, 1e-2, 16), _selection),
]}

METHODS = {"text": TEXT_METHODS, "vision": VISION_METHODS}


def available(task: str = "text") -> list[str]:
    """Method names `compare` knows for a task, in table order."""
    if task not in METHODS:
        raise ValueError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
    return list(METHODS[task])


# --- the task: data, base model, loaders --------------------------------------------------------

@dataclass
class Task:
    name: str
    make_model: Callable[[], nn.Module]    # a fresh copy of the pretrained base model
    train: object                          # the full training data (TextSplit or Dataset)
    validation: object
    test: object
    tokenizer: object = None
    max_length: int = 32
    ctx: dict = field(default_factory=dict)

    def subset(self, n, seed):
        if n is None or n >= len(self.train):
            return self.train
        if hasattr(self.train, "subset"):
            return self.train.subset(n, seed)
        g = torch.Generator().manual_seed(seed)
        return torch.utils.data.Subset(self.train, torch.randperm(len(self.train), generator=g)[:n].tolist())

    def loader(self, data, batch_size, shuffle, seed):
        from peftlab.train import _as_loader
        return _as_loader(data, self.tokenizer, batch_size, shuffle, seed, self.max_length,
                          "data")


def text_task(seed: int = 0, quick: bool = False, model_fn=None) -> Task:
    """The embedded MiniLM classifier on sentiment_contrast (test: held-out vocabulary).
    model_fn() -> (model, tokenizer) replaces the embedded model (tests use a tiny one)."""
    from peftlab import data, models
    ds = data.load_dataset()
    base, tok = (model_fn or (lambda: models.text_classifier(ds.num_labels, seed=seed)))()
    base.eval()
    val, test = ds.validation, ds.test
    if quick:
        val, test = val.subset(64, seed), test.subset(128, seed)
    return Task("text", lambda: copy.deepcopy(base), ds.train, val, test, tok,
                max_length=24 if quick else 32,
                ctx={"lora_targets": ["query", "value"], "selection_fraction": 0.005})


def vision_task(seed: int = 0, quick: bool = False, model_fn=None) -> Task:
    """The digits ResNet pretrained on 0-4, transferred to 5-9 with 10 images per class."""
    from peftlab import vision
    train, test = vision.digits_transfer(shots_per_class=10, seed=seed)
    base = (model_fn or (lambda: vision.vision_classifier(num_classes=5, seed=seed)))()
    if quick:
        test = torch.utils.data.Subset(test, list(range(0, len(test), 8)))
    return Task("vision", lambda: copy.deepcopy(base).eval(), train, None, test,
                ctx={"lora_targets": ["re:.*conv\\d"], "lora_r": 4, "selection_fraction": 0.02})


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


def _ratios(rows: list[dict]) -> None:
    ref = next((r for r in rows if r["method"] == "full" and r["status"] == "ok"), None)
    for r in rows:
        for key, out in (("step_time_s", "step_time_ratio"), ("peak_memory_bytes", "memory_ratio")):
            r[out] = (r[key] / ref[key] if ref and r["status"] == "ok" and ref[key] else None)


# --- the report --------------------------------------------------------------------------------

COLUMNS = ["method", "status", "trainable", "total", "trainable_pct", "step_time_s",
           "step_time_ratio", "peak_memory_bytes", "memory_ratio", "test_accuracy",
           "val_accuracy", "adapter_bytes", "infer_s", "infer_merged_s", "setup_s",
           "train_time_s", "steps", "train_size", "epochs", "batch_size", "lr",
           "final_train_loss", "test_loss", "weights_bytes", "gradients_bytes",
           "optimizer_bytes", "activations_bytes", "rss_peak_bytes", "peak_kind", "device",
           "description", "note"]


@dataclass
class Report:
    task: str
    rows: list[dict]
    settings: dict

    def row(self, method: str) -> dict:
        return next(r for r in self.rows if r["method"] == method)

    def table(self) -> str:
        """The printed table: one line per method; ratios are against full fine-tuning."""
        def f(v, fmt):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt(v)
        head = (f"{'method':<10} {'trainable':>12} {'%':>8} {'step ms':>8} {'x full':>7} "
                f"{'peak mem':>9} {'x full':>7} {'test acc':>8} {'adapter':>9}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            if r["status"] != "ok":
                lines.append(f"{r['method']:<10} {r['status'].upper()}: {r['note'][:70]}")
                continue
            lines.append(
                f"{r['method']:<10} {r['trainable']:>12,} {r['trainable_pct']:>7.3f}% "
                f"{f(r['step_time_s'], lambda v: f'{1000 * v:.0f}'):>8} "
                f"{f(r['step_time_ratio'], lambda v: f'{v:.2f}'):>7} "
                f"{measure.human_bytes(r['peak_memory_bytes']):>9} "
                f"{f(r['memory_ratio'], lambda v: f'{v:.2f}'):>7} "
                f"{r['test_accuracy']:>8.3f} {measure.human_bytes(r['adapter_bytes']):>9}")
        kind = next((r["peak_kind"] for r in self.rows if r["status"] == "ok"), "")
        lines.append(f"peak mem: {kind}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def figure(self, title: str | None = None):
        """Accuracy vs trainable parameters, step time and memory bars (plots/compare.py)."""
        from peftlab.plots.compare import compare_figure
        return compare_figure(self.rows, title=title or f"peftlab compare: {self.task} task")

    def write(self, out: str | Path, plot: bool = True) -> dict[str, Path]:
        """Write report.csv, report.json and (plot=True) compare.png into the folder `out`."""
        import csv
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "report.csv", "json": out / "report.json"}
        with open(paths["csv"], "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in self.rows:
                w.writerow({k: r.get(k) for k in COLUMNS})
        with open(paths["json"], "w", encoding="utf-8") as fh:
            json.dump({"task": self.task, "settings": self.settings, "rows": self.rows}, fh,
                      indent=2, default=str)
            fh.write("\n")
        if plot:
            import matplotlib.pyplot as plt
            fig = self.figure()
            paths["png"] = out / "compare.png"
            fig.savefig(paths["png"], dpi=110, bbox_inches="tight")
            plt.close(fig)
        return paths

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read a report.json (or the folder holding it) written by `write`."""
        path = Path(path)
        path = path / "report.json" if path.is_dir() else path
        d = json.loads(path.read_text(encoding="utf-8"))
        return cls(d["task"], d["rows"], d["settings"])


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

"""What `peftlab compare` runs: the methods with their training budgets, and the tasks."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

TASKS = ("text", "vision", "chat")


@dataclass
class TrainBudget:
    """How much training a method gets in `peftlab compare`.

    train_size: training examples used (a seeded subset); None: all of them. epochs: passes
    over those examples. lr: peak learning rate (AdamW, linear decay, 6% warm-up).
    batch_size: examples per optimizer step.
    """

    train_size: int | None
    epochs: float
    lr: float
    batch_size: int = 32


@dataclass
class MethodSpec:
    """One row as `peftlab compare` runs it (built from a method's CompareEntry, its
    peftlab/<method>/spec.py, and the task's data budget).

    name: the --methods name and the table's first column. module: the peftlab module that
    must import for the method to run. description: what is trained, in a few words. budget:
    the default TrainBudget (data, epochs, lr). build: build(model, ctx) applies the method
    to a fresh model. label: "" for a row on the task's data budget; else what differs, said
    where the row is shown ("prefix, 2 epochs"): check_budgets refuses a silent difference.
    default: whether the task's default run includes the row.
    """

    name: str
    module: str
    description: str
    budget: TrainBudget
    build: Callable
    label: str = ""
    default: bool = True


# --- the data budget of each task ---------------------------------------------------------------
# The budget belongs to the task: every row gets DATA[task] (examples, epochs, batch size) and
# its method's own learning rate. Text: all 2,400 training sentences, one epoch (75 steps) for
# every method, full fine-tuning included (it used 1,280 before issue 31; at 2,400 its training
# is about 45 s of a 2-core run, see README). A method that needs more steps gets a second row,
# named and labelled (LABELLED below), never a silently larger budget.

DATA = {"text": TrainBudget(2400, 1, 0.0, 32), "vision": TrainBudget(None, 30, 0.0, 16),
        "chat": TrainBudget(480, 1, 0.0, 8)}       # chat_extract: all 480, one epoch, 60 steps

# (task, new row name): (the method row it copies, its label, what differs, in the default run)
LABELLED = {("text", "prefix_2ep"): ("prefix", "prefix, 2 epochs", {"epochs": 2}, False)}

BUDGET_KEYS = ("train_size", "epochs", "batch_size")


def rows(task: str) -> dict[str, MethodSpec]:
    """{name: MethodSpec} of every registered method's compare rows for `task`, in table
    order, each with the task's data budget and the method's learning rate; the labelled
    rows (LABELLED) right after the row they copy."""
    from peftlab.core import registry

    out = {}
    for name, (spec, entry) in registry.compare_entries(task).items():
        budget = dataclasses.replace(DATA[task], lr=entry.lr)
        out[name] = MethodSpec(name, spec.module, entry.description, budget, entry.build,
                               default=entry.default)
        for (t, extra), (base, label, change, default) in LABELLED.items():
            if t == task and base == name:
                out[extra] = MethodSpec(extra, spec.module, f"{entry.description} ({label})",
                                        dataclasses.replace(budget, **change), entry.build,
                                        label=label, default=default)
    check_budgets(task, out)
    return out


def check_budgets(task: str, specs: dict[str, MethodSpec] | None = None) -> None:
    """Refuse a row whose data budget (examples, epochs, batch size) differs from the task's
    without a label saying so: one budget for every method, or a named exception."""
    specs = METHODS[task] if specs is None else specs
    want = {k: getattr(DATA[task], k) for k in BUDGET_KEYS}
    for name, s in specs.items():
        got = {k: getattr(s.budget, k) for k in BUDGET_KEYS}
        if got != want and not s.label:
            diff = ", ".join(f"{k} {got[k]} (task: {want[k]})" for k in BUDGET_KEYS
                             if got[k] != want[k])
            raise ValueError(f"compare row {name!r} on task {task!r} has its own data budget "
                             f"({diff}) without a label: give every method the task's budget "
                             f"(compare/methods.py DATA), or make it a labelled row (LABELLED)")


def budget_of(task: str) -> dict:
    """The task's one data budget, as the report states it: {train_size, epochs, batch_size}."""
    return {k: getattr(DATA[task], k) for k in BUDGET_KEYS}


TEXT_METHODS = rows("text")
VISION_METHODS = rows("vision")
CHAT_METHODS = rows("chat")
METHODS = {"text": TEXT_METHODS, "vision": VISION_METHODS, "chat": CHAT_METHODS}


def defaults(task: str = "text") -> list[str]:
    """The rows of the task's default run (`peftlab compare` without --methods), in order:
    every row whose CompareEntry has default=True (chat: compare/chat.py DEFAULT_METHODS),
    and the labelled rows marked so in LABELLED."""
    if task not in METHODS:
        raise ValueError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
    return [n for n, s in METHODS[task].items() if s.default]


def available(task: str = "text") -> list[str]:
    """Method names `compare` knows for a task, in table order."""
    if task not in METHODS:
        raise ValueError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
    if task == "chat":                       # the untrained base model is a row of its own
        return ["base", *METHODS[task]]
    return list(METHODS[task])


# --- the task: data, base model, loaders --------------------------------------------------------

@dataclass
class Task:
    """A comparison task: the base model, the data and how to batch it.

    name: "text" or "vision". make_model: returns a fresh copy of the pretrained base model.
    train / validation / test: the data (TextSplits or torch Datasets; validation may be
    None). tokenizer: for text. max_length: tokens kept per text. ctx: what the methods'
    build functions read (targets, fractions, ...). test_categories: one category per test
    example (errors by kind), or None.
    """

    name: str
    make_model: Callable[[], nn.Module]
    train: object
    validation: object
    test: object
    tokenizer: object = None
    max_length: int = 32
    ctx: dict = field(default_factory=dict)
    test_categories: list[str] | None = None

    def subset(self, n, seed):
        """A seeded subset of n training examples (all of them for None or n >= the size)."""
        if n is None or n >= len(self.train):
            return self.train
        if hasattr(self.train, "subset"):
            return self.train.subset(n, seed)
        g = torch.Generator().manual_seed(seed)
        return torch.utils.data.Subset(self.train, torch.randperm(len(self.train), generator=g)[:n].tolist())

    def loader(self, data, batch_size, shuffle, seed):
        """Batches of `data` as pl.train.fit reads them (tokenized for text)."""
        from peftlab.train import as_loader as _as_loader
        return _as_loader(data, self.tokenizer, batch_size, shuffle, seed, self.max_length,
                          "data")


# what the rows' build functions read from a task (ctx), besides the tokenizer and the run's
# seed and steps; `peftlab sweep` varies some of them (compare/sweep_grid.py)
CTX = {"text": {"lora_targets": ["all-linear"], "lora_qv_targets": ["query", "value"],
                "lora_r": 8, "selection_fraction": 0.005},
       "vision": {"lora_targets": ["re:.*conv\\d"], "lora_r": 4, "selection_fraction": 0.02}}


def categories_of(dataset_name: str, split: str, texts: list[str]) -> list[str] | None:
    """The `category` column of a shipped dataset's split file, one per text (None when the
    file has no such column): what kind of sentence each example is, for errors by kind."""
    import csv

    from peftlab import data
    path = data.data_dir() / dataset_name / f"{split}.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "category" not in rows[0]:
        return None
    by_text = {r["text"]: r["category"] for r in rows}
    return [by_text[t] for t in texts] if all(t in by_text for t in texts) else None


def text_task(seed: int = 0, quick: bool = False, model_fn=None) -> Task:
    """The embedded MiniLM on sentiment_contrast (test: held-out words and templates), with a
    mean-pooling head for every method: all-MiniLM-L6-v2 was trained with mean pooling, so
    head-only training is then a real linear probe (see peftlab/models/text.py).
    model_fn() -> (model, tokenizer) replaces the embedded model (tests use a tiny one)."""
    from peftlab import data, models
    ds = data.load_dataset_from_env()     # `peftlab compare --data`; else sentiment_contrast
    base, tok = (model_fn or (lambda: models.text_classifier(ds.num_labels, seed=seed,
                                                             pooling="mean")))()
    base.eval()
    val, test = ds.validation, ds.test
    if quick:
        val, test = val.subset(64, seed), test.subset(128, seed)
    return Task("text", lambda: copy.deepcopy(base), ds.train, val, test, tok,
                max_length=data.env_max_length() or (24 if quick else 32),
                ctx=dict(CTX["text"]),
                test_categories=categories_of(ds.name, "test", test.texts))


def vision_task(seed: int = 0, quick: bool = False, model_fn=None) -> Task:
    """The digits ResNet pretrained on 0-4, transferred to 5-9 with 10 images per class;
    validation: vision.VAL_PER_CLASS images per class from the held-out pool, test: the rest
    of that pool (every 8th with quick): vision.held_out_split, as vision.digits_splits."""
    from torch.utils.data import Subset

    from peftlab.models import vision
    train, pool = vision.digits_transfer(shots_per_class=10, seed=seed)
    base = (model_fn or (lambda: vision.vision_classifier(num_classes=5, seed=seed)))()
    val_idx, test_idx = vision.held_out_split(pool, vision.VAL_PER_CLASS, seed)
    if quick:
        test_idx = test_idx[::8]
    return Task("vision", lambda: copy.deepcopy(base).eval(), train, Subset(pool, val_idx),
                Subset(pool, test_idx),
                ctx=dict(CTX["vision"]))

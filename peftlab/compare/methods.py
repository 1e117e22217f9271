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
    to a fresh model.
    """

    name: str
    module: str
    description: str
    budget: TrainBudget
    build: Callable


# --- the data budget of each task ---------------------------------------------------------------
# The budget belongs to the task: every row gets DATA[task] (examples, epochs, batch size) and
# its method's own learning rate. The exceptions below are the budgets the committed reports
# were run with (full fine-tuning on fewer examples, prefix for two epochs); matching them is
# the fair-sweeps issue's work, and each one is named here rather than hidden in a method.

DATA = {"text": TrainBudget(2400, 1, 0.0, 32), "vision": TrainBudget(None, 30, 0.0, 16),
        "chat": TrainBudget(480, 1, 0.0, 8)}       # chat_extract: all 480, one epoch, 60 steps
EXCEPTIONS = {("text", "full"): {"train_size": 1280}, ("text", "prefix"): {"epochs": 2}}


def rows(task: str) -> dict[str, MethodSpec]:
    """{name: MethodSpec} of every registered method's compare rows for `task`, in table
    order, each with the task's data budget and the method's learning rate."""
    from peftlab.core import registry

    out = {}
    for name, (spec, entry) in registry.compare_entries(task).items():
        budget = dataclasses.replace(DATA[task], lr=entry.lr,
                                     **EXCEPTIONS.get((task, name), {}))
        out[name] = MethodSpec(name, spec.module, entry.description, budget, entry.build)
    return out


TEXT_METHODS = rows("text")
VISION_METHODS = rows("vision")
CHAT_METHODS = rows("chat")
METHODS = {"text": TEXT_METHODS, "vision": VISION_METHODS, "chat": CHAT_METHODS}


def defaults(task: str = "text") -> list[str]:
    """The rows of the task's default run (`peftlab compare` without --methods), in order:
    every row whose CompareEntry has default=True (chat: compare/chat.py DEFAULT_METHODS)."""
    from peftlab.core import registry

    if task not in METHODS:
        raise ValueError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
    return [n for n, (_, e) in registry.compare_entries(task).items() if e.default]


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
        if n is None or n >= len(self.train):
            return self.train
        if hasattr(self.train, "subset"):
            return self.train.subset(n, seed)
        g = torch.Generator().manual_seed(seed)
        return torch.utils.data.Subset(self.train, torch.randperm(len(self.train), generator=g)[:n].tolist())

    def loader(self, data, batch_size, shuffle, seed):
        from peftlab.train import as_loader as _as_loader
        return _as_loader(data, self.tokenizer, batch_size, shuffle, seed, self.max_length,
                          "data")


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
                ctx={"lora_targets": ["all-linear"], "lora_qv_targets": ["query", "value"],
                     "selection_fraction": 0.005},
                test_categories=categories_of(ds.name, "test", test.texts))


def vision_task(seed: int = 0, quick: bool = False, model_fn=None) -> Task:
    """The digits ResNet pretrained on 0-4, transferred to 5-9 with 10 images per class."""
    from peftlab.models import vision
    train, test = vision.digits_transfer(shots_per_class=10, seed=seed)
    base = (model_fn or (lambda: vision.vision_classifier(num_classes=5, seed=seed)))()
    if quick:
        test = torch.utils.data.Subset(test, list(range(0, len(test), 8)))
    return Task("vision", lambda: copy.deepcopy(base).eval(), train, None, test,
                ctx={"lora_targets": ["re:.*conv\\d"], "lora_r": 4, "selection_fraction": 0.02})

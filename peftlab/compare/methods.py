"""What `peftlab compare` runs: the methods with their training budgets, and the tasks."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

TASKS = ("text", "vision")


@dataclass
class TrainBudget:
    """How much training a method gets in `peftlab compare`.

    train_size: training examples used (a seeded subset); None: all of them. epochs: passes
    over those examples. lr: peak learning rate (AdamW, linear decay, 6% warm-up).
    batch_size: examples per optimizer step.
    """

    train_size: int | None    # training examples used (a seeded subset); None: all of them
    epochs: float             # passes over those examples
    lr: float                 # peak learning rate (AdamW, linear decay, 6% warm-up)
    batch_size: int = 32      # examples per optimizer step


@dataclass
class MethodSpec:
    """One method as `peftlab compare` runs it.

    name: the --methods name and the table's first column. module: the peftlab module that
    must import for the method to run. description: what is trained, in a few words. budget:
    the default TrainBudget (data, epochs, lr). build: build(model, ctx) applies the method
    to a fresh model.
    """

    name: str                 # the --methods name and the table's first column
    module: str               # the peftlab module that must import for the method to run
    description: str          # what is trained, in a few words
    budget: TrainBudget       # the default training budget (data, epochs, lr)
    build: Callable           # build(model, ctx) applies the method to a fresh model


# --- text task: the embedded MiniLM on sentiment_contrast ----------------------------------------

def _full(mode):
    def build(model, ctx):
        from peftlab import full
        full.apply(model, full.FullConfig(mode=mode))
    return build


def _lora(targets_key):
    def build(model, ctx):
        from peftlab import lora
        r = ctx.get("lora_r", 8)
        lora.apply(model, lora.LoraConfig(r=r, alpha=2 * r, targets=ctx[targets_key]))
    return build


def _prefix(model, ctx):
    from peftlab import prefix
    prefix.apply(model, prefix.PrefixConfig(num_virtual_tokens=10))


PROMPT_INIT_TEXT = "positive or negative"   # Lester et al.: class-label words start best


def _prompt(model, ctx):
    from peftlab import prefix
    prefix.apply(model, prefix.PromptConfig(num_virtual_tokens=10, init="text",
                                            init_text=PROMPT_INIT_TEXT),
                 tokenizer=ctx["tokenizer"])


SCORE_EXAMPLES = 1024      # FISH (Sung et al., 2021) scores Fisher on 1,024 examples


def _selection(model, ctx):
    from peftlab import selection, train
    batch_size = ctx["batch_size"]
    cfg = selection.SelectionConfig(fraction=ctx["selection_fraction"], per_example=True,
                                    max_batches=max(1, SCORE_EXAMPLES // batch_size),
                                    seed=ctx["seed"])
    batches = [b for b, _ in zip(ctx["score_loader"](), range(cfg.max_batches))]
    selection.apply(model, cfg, batches=batches, loss_fn=train.loss_fn)


def _adalora(model, ctx):
    from peftlab import adalora
    steps = ctx["total_steps"]
    tinit, tfinal = max(0, steps // 10), max(1, steps // 5)
    if tinit + tfinal >= steps:             # very short (--quick) runs: no warm-up phase
        tinit, tfinal = 0, 1
    r = ctx.get("lora_r", 8)
    adalora.apply(model, adalora.AdaLoraConfig(
        init_r=r + r // 2, target_r=r, targets=ctx["lora_targets"], total_steps=max(2, steps),
        tinit=tinit, tfinal=tfinal, alpha=32.0))


TEXT_METHODS = {s.name: s for s in [
    MethodSpec("full", "peftlab.full", "every weight", TrainBudget(1280, 1, 1e-4), _full("all")),
    MethodSpec("head", "peftlab.full", "linear probe: Linear on the frozen mean-pooled encoder",
               TrainBudget(2400, 1, 2e-2), _full("head")),
    MethodSpec("lora", "peftlab.lora", "r=8 on all 36 linear layers + head",
               TrainBudget(2400, 1, 3e-3), _lora("lora_targets")),
    MethodSpec("lora_qv", "peftlab.lora", "r=8 on query,value only (12 layers) + head",
               TrainBudget(2400, 1, 3e-3), _lora("lora_qv_targets")),
    MethodSpec("prefix", "peftlab.prefix", "10 key/value prefixes per layer + head",
               TrainBudget(2400, 2, 3e-2), _prefix),
    MethodSpec("prompt", "peftlab.prompt", "10 soft prompt tokens (init: label words) + head",
               TrainBudget(2400, 1, 3e-2), _prompt),
    MethodSpec("selection", "peftlab.selection",
               "0.5% of weights by per-example Fisher on 1,024 examples + head",
               TrainBudget(2400, 1, 2e-3), _selection),
    MethodSpec("adalora", "peftlab.adalora",
               "SVD adapters on all linear layers, rank 12 -> 8 avg (LoRA's budget) + head",
               TrainBudget(2400, 1, 1e-2), _adalora),
]}

# --- vision task: the embedded digits ResNet, transfer from 0-4 to 5-9 ---------------------------

VISION_METHODS = {s.name: s for s in [
    MethodSpec("full", "peftlab.full", "every weight", TrainBudget(None, 30, 3e-3, 16),
               _full("all")),
    MethodSpec("head", "peftlab.full", "fc head only", TrainBudget(None, 30, 3e-2, 16), _full("head")),
    MethodSpec("lora", "peftlab.lora", "r=4 on every conv + head", TrainBudget(None, 30, 1e-2, 16),
               _lora("lora_targets")),
    MethodSpec("selection", "peftlab.selection", "2% of weights by Fisher score + head",
               TrainBudget(None, 30, 1e-2, 16), _selection),
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
    """A comparison task: the base model, the data and how to batch it.

    name: "text" or "vision". make_model: returns a fresh copy of the pretrained base model.
    train / validation / test: the data (TextSplits or torch Datasets; validation may be
    None). tokenizer: for text. max_length: tokens kept per text. ctx: what the methods'
    build functions read (targets, fractions, ...). test_categories: one category per test
    example (errors by kind), or None.
    """

    name: str
    make_model: Callable[[], nn.Module]    # a fresh copy of the pretrained base model
    train: object                          # the full training data (TextSplit or Dataset)
    validation: object
    test: object
    tokenizer: object = None
    max_length: int = 32
    ctx: dict = field(default_factory=dict)
    test_categories: list[str] | None = None   # one per test example (errors by kind), or None

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

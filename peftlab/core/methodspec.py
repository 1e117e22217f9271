"""What a method package declares about itself, once, in its own `spec.py`.

    # peftlab/lora/spec.py
    SPEC = MethodSpec(name="lora", module="peftlab.lora", config="LoraConfig", ...)

The registry (core/registry.py) finds every `peftlab/<package>/spec.py` by a scan of the files
(the method's code is not imported until it is used) and out-of-tree methods through the
entry-point group `peftlab.methods`. Everything that lists methods derives from these specs:
`pl.<name>`, export, the Hugging Face PEFT dispatch, `peftlab compare`, `peftlab train` and the
tests' method lists. A new method is its package plus, out of tree, one entry-point line.

This file imports nothing but the standard library, so reading the specs stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Option:
    """One `peftlab train` command-line option a method reads.

    flag: the option, e.g. "--r"; its value lands in the run settings under the flag's name
    ("--virtual-tokens" -> s["virtual_tokens"]). kind: the value's type by name, one of
    peftlab/commands/options.py's types ("positive_int", "positive_float", "unit_float",
    "name_list"). default: the value when the option is left out. help: the --help line.
    Two methods may declare the same flag (LoRA and AdaLoRA share --r); the first declaration
    in registry order is the one the parser uses.
    """

    flag: str
    kind: str
    default: object = None
    help: str = ""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class TrainEntry:
    """One choice of `peftlab train --method` (a package may offer several: full offers
    full, head and bitfit).

    name: the --method value. lr: the default peak learning rate on the shipped text task.
    describe: describe(settings) -> one line naming the method and its main options.
    build: build(model, tokenizer, settings, train_split, total_steps) applies the method
    in place; a bad option raises ValueError before the model changes.
    """

    name: str
    lr: float
    describe: Callable[[dict], str]
    build: Callable


@dataclass(frozen=True)
class CompareEntry:
    """One row `peftlab compare` can run (a package may offer several: LoRA on every linear
    layer and on query/value only).

    name: the --methods name and the table's first column. task: "text" or "vision".
    description: what is trained, in a few words. lr: the method's peak learning rate on
    that task. build: build(model, ctx) applies the method to a fresh copy of the task's base
    model (ctx: the task's settings). The data budget (examples, epochs, batch size) belongs
    to the task, not here (compare/methods.py). default: whether the task's default run
    (`peftlab compare` without --methods) includes the row; False: only on request (its name
    in --methods, or --methods all), so the default run keeps its time budget.
    """

    name: str
    task: str
    description: str
    lr: float
    build: Callable
    default: bool = True


@dataclass(frozen=True)
class MethodSpec:
    """A method, declared once by its package.

    name: the method's name: `pl.<name>`, get_method(model), saved adapters' "method" field.
    module: the package that implements it (imported on first use). config: the name of its
    config class in that package. paper: the reference, one line. hf_peft_type: Hugging Face
    PEFT's peft_type for the same method (None: PEFT has no counterpart, save_adapter's
    format="hf-peft" refuses). mergeable: whether unload(model, merge=True) folds the update
    into the base weights (False: the method adds inputs, not a weight update).
    cannot_merge: why not, in one sentence, when mergeable is False (export_merged and
    unload(merge=True) say it). options: the `peftlab train` options it reads. train: its
    `peftlab train --method` choices. compare: its `peftlab compare` rows. order: where it
    sits in listings (tables, --help): the baselines first (0), then by family; ties by name.
    """

    name: str
    module: str
    config: str
    order: int = 100
    paper: str = ""
    hf_peft_type: str | None = None
    mergeable: bool = True
    cannot_merge: str = ""
    options: tuple[Option, ...] = ()
    train: tuple[TrainEntry, ...] = ()
    compare: tuple[CompareEntry, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"MethodSpec.name must be a Python identifier (it becomes "
                             f"pl.{self.name}), got {self.name!r}.")
        if not self.mergeable and not self.cannot_merge:
            raise ValueError(f"MethodSpec {self.name!r}: mergeable=False needs cannot_merge, "
                             f"the one sentence that says why.")

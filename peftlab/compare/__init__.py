"""The side-by-side runner behind `peftlab compare`: every method, one task, one table.

    report = pl.compare.run(["full", "head", "lora"], task="text", seeds=3)
    print(report.table())          # + test accuracy by kind of sentence
    report.write("out/")           # report.csv, report.json, compare.png, categories.png

Each method starts from the same pretrained weights (a fresh copy; on the text task the
embedded MiniLM with a mean-pooling head, the way it was trained, so head-only training is a
real linear probe), trains with pl.train.fit on a budget chosen so it reaches a sensible
accuracy in well under a minute on a laptop CPU (the TrainBudget of each MethodSpec: training
examples, epochs, learning rate), and is then measured the same way: trainable parameters,
median training step time, one-off setup time (selection's Fisher scoring), the exact
training-state count and a measured memory peak (each method in a fresh process; see
compare/report.py), test accuracy overall and per category of sentence, adapter size on disk,
and inference time before and after merging where the method can merge. With seeds=N every
method runs N times (seeds seed .. seed+N-1): means and sample standard deviations.

Honesty rules: a method whose module does not import is reported as "missing" (not faked);
a method that fails is reported as "failed" with the error, and the others still run; ratios
are taken against full fine-tuning measured in the same run (times on a shared machine are
noisy, ratios less so). Validation and test both hold out words and templates, each split its
own (issue 31): settings are chosen on validation, test accuracy measures what was learned, not
what was memorised, and no choice reads it.

Every row trains on the task's one data budget (methods.DATA, stated once in the report's
settings as `budget`); a row that needs more steps is a second, labelled row (prefix_2ep,
"prefix, 2 epochs"), never a silently larger budget. `pl.compare.sweep.run` (`peftlab sweep`)
chooses learning rates and each method's knobs on validation; `run(..., lrs_from=...)` reads
its chosen.json, and the report records which sweep chose them.
"""

from peftlab.compare import report, runner, sweep, sweep_report
from peftlab.compare.methods import (
    METHODS,
    TASKS,
    TEXT_METHODS,
    VISION_METHODS,
    MethodSpec,
    Task,
    TrainBudget,
    available,
    text_task,
    vision_task,
)
from peftlab.compare.report import COLUMNS, Report
from peftlab.compare.runner import run, run_method

__all__ = [
    "COLUMNS",
    "METHODS",
    "TASKS",
    "TEXT_METHODS",
    "VISION_METHODS",
    "MethodSpec",
    "Report",
    "Task",
    "TrainBudget",
    "available",
    "report",
    "run",
    "run_method",
    "runner",
    "sweep",
    "sweep_report",
    "text_task",
    "vision_task",
]

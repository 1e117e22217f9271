"""The side-by-side runner behind `peftlab compare`: every method, one task, one table.

    report = pl.compare.run(["full", "head", "lora"], task="text", seed=0)
    print(report.table())
    report.write("out/")           # report.csv, report.json, compare.png

Each method starts from the same pretrained weights (a fresh copy), trains with pl.train.fit
on a budget chosen so it reaches a sensible accuracy in well under a minute on a laptop CPU
(the TrainBudget of each MethodSpec: training examples, epochs, learning rate), and is then measured the same
way: trainable parameters, median training step time, peak memory (peftlab.measure explains
what is counted on CPU and on CUDA), test accuracy, adapter size on disk, and inference time
before and after merging where the method can merge.

Honesty rules: a method whose module does not import is reported as "missing" (not faked);
a method that fails is reported as "failed" with the error, and the others still run; ratios
are taken against full fine-tuning measured in the same run (times on a shared machine are
noisy, ratios less so). The text task's test split uses held-out words, so test accuracy
measures what was learned, not what was memorised.
"""

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

__all__ = ["COLUMNS", "METHODS", "MethodSpec", "Report", "TASKS", "TEXT_METHODS", "Task",
           "TrainBudget", "VISION_METHODS", "available", "run", "run_method", "text_task",
           "vision_task"]

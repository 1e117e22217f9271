"""Training logs on disk, and stopping a run early: two fit() callbacks.

    log = pl.train.HistoryLog("run/history.jsonl")
    pl.train.fit(model, train, eval, callbacks=[log, pl.train.StopAfter(100)])
    rows = pl.train.read_history("run/history.jsonl")

history.jsonl holds one JSON object per line, appended as training goes:

    {"type": "step", "step": 12, "epoch": 0, "loss": 0.61, "lr": 0.0009}
    {"type": "epoch", "epoch": 1, "step": 40, "train_loss": 0.55, "eval_loss": 0.41,
     "eval_accuracy": 0.87, "eval_n": 50}

so a crashed or interrupted run keeps its curve up to the last step, and any tool that reads
JSON Lines (pandas.read_json(path, lines=True)) can plot it.
"""

from __future__ import annotations

import json
from pathlib import Path


class HistoryLog:
    """A fit() callback appending one JSON line per step and one per epoch to `path`
    (the loss and learning rate of each step; the mean training loss and the evaluation loss
    and accuracy of each epoch). The file is created if missing and appended to otherwise:
    a resumed run continues the same log (see truncate_history)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._losses: list[float] = []
        self._seen = None        # the last evaluation written (fit keeps the newest in state)

    def _write(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def on_step_end(self, state) -> None:
        """Append the step's row."""
        self._losses.append(state.loss)
        self._write({"type": "step", "step": state.step, "epoch": state.epoch,
                     "loss": state.loss, "lr": state.lr})

    def on_epoch_end(self, state) -> None:
        """Append the epoch's row: mean training loss, and the evaluation if one ran."""
        row = {"type": "epoch", "epoch": state.epoch, "step": state.step}
        if self._losses:
            row["train_loss"] = sum(self._losses) / len(self._losses)
        m = state.eval_metrics
        if m and m is not self._seen:
            row.update(eval_loss=m["loss"], eval_accuracy=m["accuracy"], eval_n=m["n"])
            self._seen = m
        self._losses = []
        self._write(row)


class StopAfter:
    """A fit() callback that stops training after `steps` optimizer steps in all (counting
    the steps of a resumed run's earlier part). The schedule is not shortened: the run is
    interrupted, as by Ctrl-C, and fit() saves a checkpoint when it has a checkpoint_dir, so
    `resume_from` continues it to the same end."""

    def __init__(self, steps: int):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"StopAfter needs a positive number of steps, got {steps!r}")
        self.steps = steps

    def on_step_end(self, state) -> None:
        """Ask fit() to stop once `steps` steps are done."""
        if state.step >= self.steps:
            state.stop = True


def read_history(path: str | Path) -> list[dict]:
    """The rows of a history.jsonl file (a last line cut short by a crash is skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_history(path: str | Path, step: int) -> None:
    """Keep only what happened before the checkpoint at `step`: step rows up to it, epoch
    rows before it (a checkpoint is taken before its epoch's evaluation). A resumed run
    writes the rest again. The file is rewritten atomically."""
    from peftlab.io.files import atomic_write

    path = Path(path)
    if not path.is_file():
        return
    keep = [r for r in read_history(path)
            if r.get("step", 0) < step or (r.get("type") == "step" and r.get("step") == step)]

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
    atomic_write(path, write)

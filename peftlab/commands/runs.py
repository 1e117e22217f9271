"""Run folders: what `peftlab train` writes and `evaluate` / `predict` / `train --resume` read.

    runs/x/
      run.json          how the run was made (data, columns, label names, base model, method,
                        options, max_length) and how it ended (status, accuracies)
      adapter/          the trained adapter (pl.save_adapter: safetensors + JSON, with the
                        label names)
      history.jsonl     loss per step, training loss and validation accuracy per epoch
      checkpoints/      the newest checkpoint (pl.train checkpoint: safetensors + JSON)

While it trains, the run lives in runs/x.partial/; only a finished run is renamed to runs/x,
so runs/x is never half-written. An interrupted run stays in runs/x.partial/ with its last
checkpoint, and `peftlab train --resume runs/x` continues it. A run that fails before its
first checkpoint is removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from peftlab.io.files import read_json, write_json

RUN_FILE = "run.json"
ADAPTER_DIR = "adapter"
HISTORY_FILE = "history.jsonl"
CHECKPOINT_DIR = "checkpoints"
FORMAT = "peftlab-run"


class RunError(ValueError):
    """A run folder that is missing, unfinished or unreadable; the message says what to do."""


def partial(out: Path) -> Path:
    """Where the run `out` lives while it trains: out.partial beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def final(path: Path) -> Path:
    """The finished run's folder for a path given as either runs/x or runs/x.partial."""
    path = Path(path)
    return path.with_name(path.name[:-len(".partial")]) if path.name.endswith(".partial") \
        else path


def read_run(folder: Path) -> dict:
    """run.json of a run folder (finished or partial), checked."""
    file = Path(folder) / RUN_FILE
    if not file.is_file():
        raise RunError(f"{folder} is not a peftlab run folder (no {RUN_FILE}); "
                       f"`peftlab train --out FOLDER` makes one.")
    info = read_json(file)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise RunError(f"{file} was not written by `peftlab train`.")
    return info


def write_run(folder: Path, info: dict) -> None:
    """Write run.json atomically."""
    write_json(Path(folder) / RUN_FILE, info)


def finished_run(path: Path) -> tuple[Path, dict]:
    """(folder, run.json) of a finished run, or RunError saying why not (unfinished: how to
    resume it)."""
    path = Path(path)
    if path.name.endswith(".partial") or (not path.exists() and partial(path).exists()):
        folder = path if path.name.endswith(".partial") else partial(path)
        info = read_run(folder)
        raise RunError(f"the run {final(folder)} has not finished ({status_line(info)}); "
                       f"continue it with `peftlab train --resume {final(folder)}`")
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder; `peftlab train --out {path}` makes one")
    info = read_run(path)
    if info.get("status") != "done":
        raise RunError(f"{path} holds an unfinished run ({status_line(info)})")
    if not (path / ADAPTER_DIR).is_dir():
        raise RunError(f"{path} has no {ADAPTER_DIR}/ folder; it is not a finished run")
    return path, info


def status_line(info: dict) -> str:
    """E.g. 'interrupted at step 37 of 120'."""
    step = info.get("step", 0)
    total = info.get("total_steps", "?")
    return f"{info.get('status', 'unknown')} at step {step} of {total}"


def finish(staging: Path, out: Path) -> None:
    """Move the finished run from staging to out; a previous run in out (--overwrite) is
    replaced only now, when the new one is complete."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_digest(path: Path) -> str:
    """sha256 of a data file, or of the files of a data folder (name + content), to notice
    data that changed before a resume."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_run_model(folder: Path, info: dict, device=None):
    """(model, tokenizer) of a finished run: the base model, with the run's adapter loaded
    (and its label names), on `device`, in eval mode."""
    import peftlab as pl

    if info.get("task") == "chat":
        model, tokenizer = pl.models.chat_model(info.get("base_model"))
    else:
        model, tokenizer = pl.models.text_classifier(num_labels=info["data"]["num_labels"],
                                                     name=info.get("base_model"), seed=0)
    pl.load_adapter(model, Path(folder) / ADAPTER_DIR)
    model.to(pl.runtime.get_device(device)).eval()
    return model, tokenizer

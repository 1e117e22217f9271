"""A sweep's folder on disk: what it is (sweep.json), what it has done (trials.jsonl).

    OUT/sweep.json     the sweep's identity: task, grid, seeds, finalists, data budget, data;
                       a rerun with the same identity resumes, a different one is refused
    OUT/trials.jsonl   one JSON line per finished trial, appended as each one finishes (one
                       write of the whole line, flushed to disk): a killed sweep loses at most
                       the trial that was running; a torn last line is dropped on resume

The summary files (summary.csv, summary.json, chosen.json, the figures) are rewritten from the
trials, atomically, after every trial (compare/sweep_report.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from peftlab.io.files import atomic_write

SWEEP_FILE, TRIALS_FILE = "sweep.json", "trials.jsonl"


class SweepStateError(ValueError):
    """A folder the sweep cannot resume: another grid, or not a sweep's folder."""


def _flat(d, prefix="") -> dict:
    """{"grid": {"lora": {"r": [1, 2]}}} -> {"grid.lora.r": [1, 2]}: keys a message can name."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(old: dict, new: dict) -> list[str]:
    """The dotted keys where two identities differ, each with both values."""
    a, b = _flat(json.loads(json.dumps(old))), _flat(json.loads(json.dumps(new)))
    return [f"{k} (was {a.get(k, '-')}, now {b.get(k, '-')})"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def write_json(path: Path, doc) -> None:
    """Write `doc` as indented JSON to `path`, atomically."""
    text = json.dumps(doc, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, "utf-8"))


def open_folder(out: str | Path, identity: dict, *, overwrite: bool = False) -> Path:
    """Make or reopen the sweep folder `out` for a sweep with `identity`.

    New or empty folder: written fresh. A folder of the same sweep: resumed (its finished
    trials are kept). A folder of another sweep: SweepStateError naming the keys that differ,
    unless overwrite=True, which starts over (the old trials are deleted). A non-empty
    folder that is no sweep's: refused unless overwrite."""
    out = Path(out)
    meta = out / SWEEP_FILE
    if out.exists() and not out.is_dir():
        raise SweepStateError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        if not meta.is_file():
            raise SweepStateError(f"--out {out} exists, is not empty and holds no {SWEEP_FILE}: "
                                  f"choose a new --out, or pass --overwrite to write into it")
        old = json.loads(meta.read_text(encoding="utf-8"))["identity"]
        diff = differences(old, identity)
        if diff:
            raise SweepStateError(
                f"{out} holds a different sweep; it cannot resume with: {'; '.join(diff[:6])}"
                f"{f' and {len(diff) - 6} more' if len(diff) > 6 else ''}. "
                f"Rerun with the same settings to resume, choose a new --out, or pass "
                f"--overwrite to start over (its finished trials are deleted)")
        return out
    if out.is_dir() and overwrite:
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json(meta, {"identity": identity, "files": {
        TRIALS_FILE: "one JSON line per finished trial (settings, validation, test, times)",
        "summary.csv": "every trial, one row each, with its full settings",
        "summary.json": "the stages, finalists, choice and warnings",
        "chosen.json": "the settings chosen on validation, per method and per compare row"}})
    return out


def read_trials(out: str | Path) -> list[dict]:
    """The finished trials in `out`, in the order they finished. A torn last line (the
    process was killed while writing it) is cut off the file, so appends stay whole lines."""
    path = Path(out) / TRIALS_FILE
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):               # cut the torn tail, atomically
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data[:end]))
    return [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line.strip()]


def append_trial(out: str | Path, record: dict) -> None:
    """Append one finished trial as one line: a single write in append mode, then fsync."""
    line = (json.dumps(record, default=str, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(Path(out) / TRIALS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)

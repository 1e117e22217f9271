"""What every `peftlab` subcommand shares: the parser that answers bad options with one plain
line and exit code 2, the option types, and the checks on output folders made before any
work starts."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one plain line on stderr and exit code 2:
    `peftlab train: error: argument --epochs: must be > 0, got -1 (see peftlab train --help)`."""

    def error(self, message: str):
        """Print the one-line error and exit with code 2 (argparse's code for bad usage)."""
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def unit_float(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def seed(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return v


def max_length(text: str) -> int | str:
    """An argparse type: "auto" or a positive integer."""
    return "auto" if text == "auto" else positive_int(text)


def device(text: str) -> str:
    """An argparse type: a device this machine has (cpu, cuda, cuda:N, mps), in CLI words."""
    import torch

    from peftlab.runtime import available_devices

    try:
        dev = torch.device(text)
    except RuntimeError:
        dev = None
    have = ", ".join(available_devices())
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or "
                                         f"mps (this machine has: {have})")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"CUDA is not available on this machine (it has: "
                                         f"{have}); leave --device out or use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"this machine has {torch.cuda.device_count()} CUDA "
                                         f"device(s); {text} does not exist")
    if dev.type == "mps" and "mps" not in available_devices():
        raise argparse.ArgumentTypeError(f"Apple MPS is not available on this machine (it "
                                         f"has: {have})")
    return text


def name_list(text: str) -> list[str]:
    """An argparse type: a comma-separated list, blanks dropped and repeats removed
    (`lora,lora` is `lora`)."""
    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not names:
        raise argparse.ArgumentTypeError("give a comma-separated list, e.g. full,lora")
    return names


def check_writable_folder(out: Path, option: str = "--out") -> None:
    """Raise ValueError (in CLI words) unless `out` can become a folder we write into: not a
    file, under a folder (not a file), that this process may write to (tried for real)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"argument {option}: {out} exists and is a file, not a folder")
    parent = out if out.exists() else out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"argument {option}: {parent} is a file, so {out} cannot be created "
                         f"under it")
    try:
        probe = tempfile.mkdtemp(prefix=".peftlab-probe-", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        raise ValueError(f"argument {option}: cannot write to {parent} "
                         f"({e.strerror or e}); choose a folder you can write to") from None


def say(*parts) -> None:
    """Progress and notes go to stderr, so stdout carries only results."""
    print(*parts, file=sys.stderr, flush=True)

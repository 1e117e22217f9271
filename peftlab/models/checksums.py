"""Checksums of shipped model files, shared by the text and vision defaults."""

from __future__ import annotations

import hashlib
from pathlib import Path


class ModelNotFoundError(RuntimeError):
    """The requested base model is neither installed, nor a local folder, nor reachable."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks of `chunk` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: str | Path, expected: str,
                 fix: str = "reinstall or regenerate it") -> None:
    """Raise a clear error if the file's sha256 differs from `expected`."""
    got = sha256_file(path)
    if got != expected:
        raise ModelNotFoundError(
            f"Checksum mismatch for {path}: expected sha256 {expected}, got {got}. The file is "
            f"corrupted or is not the pinned file; {fix}.")

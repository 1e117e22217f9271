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


def check_sha256_recorded(path: str | Path, expected: str, record: str | Path,
                          fix: str = "reinstall or regenerate it") -> None:
    """check_sha256, remembered: once a file matches, its size and mtime are written to the
    JSON file `record`, and a later call on the unchanged file (same path, size, mtime) does not
    read it again. A changed file is hashed afresh; a mismatch raises and records nothing."""
    import json
    import os

    path, record = Path(path).resolve(), Path(record)
    st = path.stat()
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": expected}
    try:
        if json.loads(record.read_text()) == stamp:
            return
    except (OSError, ValueError):
        pass                                          # no record yet, or an unreadable one
    check_sha256(path, expected, fix)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stamp, indent=1))
    os.replace(tmp, record)                           # atomic: a reader sees old or new, whole

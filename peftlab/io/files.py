"""Adapter files on disk: atomic writes, safetensors and JSON reading, and the shape check
that runs before any tensor is copied into a model. Never pickle."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from peftlab.core.errors import AdapterError

CONFIG_FILE = "peftlab_adapter.json"
HF_CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


# --- atomic writes -------------------------------------------------------------------------

def _file_mode() -> int:
    """The mode a plain open() would give a new file: 0o666 less the process umask
    (0o644 under the usual umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write) -> None:
    """Call write(tmp) on a temp file beside `path`, then rename it over `path`.

    A crash half-way leaves the old file (or none), never a half-written one. The file gets
    the usual permissions (0o644 under umask 022), not the temp file's private 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: Path, obj) -> None:
    """Write obj as indented, key-sorted JSON to `path`, atomically."""
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    atomic_write(Path(path), w)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    """Write tensors (moved to CPU, made contiguous) to a safetensors file, atomically.
    metadata: optional {str: str} stored in the file's header."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(clean, tmp, metadata=metadata))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file into {name: tensor} on CPU; a clear AdapterError if the file
    is missing, truncated or not safetensors (pickled .bin/.pt files are never loaded)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: no such file; an adapter folder holds {WEIGHTS_FILE}.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterError(f"{path} is not a readable safetensors file (truncated, or another "
                           f"format such as a pickled .bin/.pt, which peftlab never loads): "
                           f"{e}") from e


def read_json(path: Path) -> dict:
    """Read a JSON file; an AdapterError naming the file and line if it is not valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path} is not valid JSON (line {e.lineno}): {e.msg}.") from e


def check_state(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                source: str = "the adapter file") -> None:
    """Raise AdapterError listing every missing, unexpected or mis-shaped tensor."""
    problems = []
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing:
        problems.append(f"missing from {source}: {', '.join(missing[:5])}"
                        + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
    if extra:
        problems.append(f"in {source} but not in the model: {', '.join(extra[:5])}"
                        + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""))
    for k in expected:
        if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape):
            problems.append(f"{k}: shape {tuple(tensors[k].shape)} in {source}, "
                            f"{tuple(expected[k].shape)} in the model")
    if problems:
        raise AdapterError("The adapter does not fit this model (was it trained on another "
                           "base model or config?): " + "; ".join(problems[:8]) + ".")

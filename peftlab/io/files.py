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

def atomic_write(path: Path, write) -> None:
    """Call write(tmp) on a temp file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: Path, obj) -> None:
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    atomic_write(Path(path), w)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(clean, tmp, metadata=metadata))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
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

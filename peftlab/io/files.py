"""Adapter files on disk: atomic writes, safetensors and JSON reading, and the shape check
that runs before any tensor is copied into a model. Never pickle."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

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


class DiskFullError(OSError):
    """A write ran out of space (ENOSPC, or a quota: EDQUOT). The files that were there
    before are intact: nothing was renamed over them."""


def _write_bytes(path, data: bytes) -> None:
    """The one low-level write: the bytes, flushed to the disk (fsync), so that the rename
    that follows never exposes a file the kernel has not stored yet."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _disk_full(e: BaseException, folder: Path, size: int) -> DiskFullError | None:
    if not (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)):
        return None
    try:
        free = f"{shutil.disk_usage(folder).free:,} bytes are free"
    except OSError:
        free = "its free space is unknown"
    return DiskFullError(e.errno, f"No space left to write {size:,} bytes in {folder} ({free}); "
                                  f"the files there before are unchanged. Free some space or "
                                  f"save somewhere else.")


def atomic_write_all(items: list) -> None:
    """Write every (path, write) in `items`: write(tmp) on a temp file beside each path, and
    only when all are written, rename each over its path.

    A crash or a full disk half-way leaves the old files (or none), never a half-written one,
    and never new files beside old ones (the space is all taken before the first rename). The
    files get the usual permissions (0o644 under umask 022), not the temp files' 0o600. A full
    disk raises DiskFullError naming the folder.
    """
    tmps: list[tuple[str, Path]] = []
    try:
        for path, write in items:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmps.append((tmp, path))
            write(tmp)
            os.chmod(tmp, _file_mode())
        for tmp, path in tmps:
            os.replace(tmp, path)
    except OSError as e:
        full = _disk_full(e, Path(tmps[-1][1]).parent if tmps else Path("."),
                          sum(os.path.getsize(t) for t, _ in tmps if os.path.exists(t)))
        if full is not None:
            raise full from e
        raise
    finally:
        for tmp, _ in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)


def atomic_write(path: Path, write) -> None:
    """Call write(tmp) on a temp file beside `path`, then rename it over `path`
    (atomic_write_all with one file)."""
    atomic_write_all([(path, write)])


def json_writer(obj):
    """A write(tmp) for atomic_write: obj as indented, key-sorted JSON."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
    return lambda tmp: _write_bytes(tmp, data)


def tensor_writer(tensors: dict[str, torch.Tensor], metadata=None):
    """A write(tmp) for atomic_write: tensors (moved to CPU, made contiguous) as safetensors,
    with optional {str: str} metadata in the header."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return lambda tmp: _write_bytes(tmp, safetensors_bytes(clean, metadata=metadata))


def write_json(path: Path, obj) -> None:
    """Write obj as indented, key-sorted JSON to `path`, atomically."""
    atomic_write(Path(path), json_writer(obj))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    """Write tensors (moved to CPU, made contiguous) to a safetensors file, atomically.
    metadata: optional {str: str} stored in the file's header."""
    atomic_write(Path(path), tensor_writer(tensors, metadata))


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
    except UnicodeDecodeError as e:
        raise AdapterError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                           f"{e.start}): the file is damaged, or not a peftlab JSON file.") from e


def check_numbers(tensors: dict[str, torch.Tensor], source: str = "the adapter file") -> None:
    """Raise AdapterError for a tensor with NaN / inf: whatever model it is meant for, loading
    it would make the outputs wrong. (An empty tensor can be right: AdaLoRA saves a matrix
    whose rank fell to 0 as (d, 0) / (0,) tensors; the shape checks against the model judge
    those.)"""
    problems = []
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            problems.append(f"{k}: {int((~torch.isfinite(t)).sum())} of its {t.numel()} numbers "
                            f"are NaN or inf")
    if problems:
        raise AdapterError(f"{source} cannot be loaded: " + "; ".join(problems[:5])
                           + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
                           + ". The run that saved it diverged or the file is damaged; save "
                             "it again from a healthy model or checkpoint.")


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
        if k not in tensors:
            continue
        got, want = tensors[k], expected[k]
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"{k}: shape {tuple(got.shape)} in {source}, "
                            f"{tuple(want.shape)} in the model")
        elif got.is_floating_point() != want.is_floating_point() or \
                (got.dtype == torch.bool) != (want.dtype == torch.bool):
            problems.append(f"{k}: dtype {str(got.dtype)[6:]} in {source}, "
                            f"{str(want.dtype)[6:]} in the model (a float cannot stand for an "
                            f"integer or a flag, nor the other way round)")
    if problems:
        raise AdapterError("The adapter does not fit this model (was it trained on another "
                           "base model or config?): " + "; ".join(problems[:8]) + ".")
